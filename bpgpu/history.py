"""What ``MLP.fit`` returns: per-epoch figures."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class History:
    """``history`` maps a figure's name to its value per epoch: always "loss"; "accuracy" for
    classifiers; "val_loss" and "val_accuracy" with validation data.
    """

    history: dict[str, list[float]] = field(default_factory=dict)
    #: the epochs run, counted from 1
    epochs: list[int] = field(default_factory=list)
    #: the epoch early stopping stopped at (None when training ran to the end)
    stopped_epoch: int | None = None
    #: the epoch whose weights the model kept under early stopping
    best_epoch: int | None = None
    backend: str = ""
    wall_time: float = 0.0

    def record(self, epoch: int, figures: dict[str, float]) -> None:
        self.epochs.append(epoch)
        for name, value in figures.items():
            self.history.setdefault(name, []).append(value)

    def __getitem__(self, name: str) -> list[float]:
        return self.history[name]
