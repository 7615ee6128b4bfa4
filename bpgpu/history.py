"""What ``MLP.fit`` returns: per-epoch figures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


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

    def plot(self, names: Sequence[str] | None = None, ax: Any = None) -> Any:
        """The figures by epoch on a matplotlib Axes (a new figure's unless ``ax`` is given):
        every loss on the left axis, accuracies on a right one; returns the Axes. Needs
        matplotlib (the ``bench`` extra)."""
        try:
            import matplotlib.pyplot as plt
        except ImportError as exc:
            raise ImportError(
                f"History.plot needs matplotlib: pip install -e '.[bench]' ({exc})"
            ) from None
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        names = list(self.history) if names is None else list(names)
        unknown = [n for n in names if n not in self.history]
        if unknown:
            raise ValueError(f"names must be among {list(self.history)}; got {unknown}")
        right = None
        for name in names:
            axis = ax
            if "accuracy" in name:
                right = right if right is not None else ax.twinx()
                axis = right
                axis.set_ylabel("accuracy")
            style = "--" if axis is right else "-"
            axis.plot(self.epochs, self.history[name], label=name, ls=style)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        handles = ax.get_legend_handles_labels()
        if right is not None:
            more = right.get_legend_handles_labels()
            handles = (handles[0] + more[0], handles[1] + more[1])
        ax.legend(*handles)
        return ax
