"""What ``fit`` shows while it trains, by ``verbose`` as Keras has it: 0 nothing, 1 a progress
bar over every step of every epoch (it moves within a long epoch) with the last epoch's figures,
2 one line per epoch. Written to stderr."""

from __future__ import annotations

import sys
from typing import Any, TextIO


def check_verbose(verbose: object) -> int:
    """0, 1 or 2 (False and True read as 0 and 1); else TypeError / ValueError naming it."""
    if isinstance(verbose, bool):
        return int(verbose)
    if not isinstance(verbose, int):
        raise TypeError(f"verbose must be 0, 1 or 2 (or a bool); got {verbose!r}")
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1 or 2; got {verbose}")
    return verbose


def _format(figures: dict[str, float]) -> str:
    return " - ".join(f"{name} {value:.4f}" for name, value in figures.items())


class Progress:
    """The display of one fit: ``step()`` after every training step, ``epoch_end`` after
    every epoch, ``close()`` at the end; ``done``: the steps a resumed run has behind it."""

    def __init__(
        self,
        verbose: int,
        epochs: int,
        steps_per_epoch: int,
        out: TextIO | None = None,
        done: int = 0,
    ):
        self.verbose, self.epochs = verbose, epochs
        self.out = out if out is not None else sys.stderr
        self._bar: Any = None
        if verbose == 1:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                print(
                    "bpgpu: install tqdm (pip install -e '.[progress]') for a progress bar; "
                    "showing a line per epoch",
                    file=self.out,
                )
                self.verbose = 2
            else:
                self._bar = tqdm(
                    total=epochs * steps_per_epoch,
                    initial=done,
                    unit="step",
                    desc="fit",
                    file=self.out,
                )

    def step(self, count: int = 1) -> None:
        """``count`` more training steps done."""
        if self._bar is not None:
            self._bar.update(count)

    def epoch_end(self, epoch: int, figures: dict[str, float]) -> None:
        if self._bar is not None:
            self._bar.set_description(f"epoch {epoch}/{self.epochs}")
            self._bar.set_postfix({k: f"{v:.4f}" for k, v in figures.items()})
        elif self.verbose == 2:
            print(f"epoch {epoch}/{self.epochs} - {_format(figures)}", file=self.out, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
