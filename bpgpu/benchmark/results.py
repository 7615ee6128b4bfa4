"""What a benchmark run yields: a ``Row`` per (workload, optimizer) and the ``RunResult``.

A system's figures are the plain dicts report.json stores (``median_ms``, ``iqr_ms``, the
derived rates ..., or ``{"status": why}`` for a system that did not run). A row also holds
its ``Workload``, which the rates are derived from; report.json names the workload (name and
spec) but does not hold the object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bpgpu.benchmark.workloads import Workload

#: one system's figures, by name: timings and derived rates, or {"status": why it did not run}
Figures = dict[str, Any]


@dataclass
class Row:
    """One workload trained with one optimizer: each system's step figures and, when whole
    fits were timed for this workload, each system's fit figures."""

    workload: Workload
    optimizer: str
    slots: int  # optimizer state arrays per parameter: the bytes a step moves depend on it
    results: dict[str, Figures]
    fit: dict[str, Figures] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The row as report.json holds it: "workload" (the name), "spec", "optimizer",
        "slots", "results", and "fit" only when fits were timed."""
        row: dict[str, Any] = {
            "workload": self.workload.name,
            "spec": self.workload.spec,
            "optimizer": self.optimizer,
            "slots": self.slots,
            "results": self.results,
        }
        if self.fit is not None:
            row["fit"] = self.fit
        return row


@dataclass
class RunResult:
    """A whole run: the systems in report order (those that ran, then those that could not),
    the rows, the machine's ceilings by device ("cpu", "gpu") and the seconds it took."""

    systems: list[str]
    rows: list[Row]
    ceilings: dict[str, dict[str, Any]]
    elapsed_s: float
