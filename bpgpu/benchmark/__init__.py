"""``bpgpu bench``: the training step (and a whole ``fit``) of every bpgpu backend timed
against PyTorch in one process, with the machine's own ceilings for scale.

Where each part lives:

- ``command``: the command line: arguments to ``Settings``, thread limits, the report
  folder (and the refusal to put a CPU-only report in a GPU folder), ``main``.
- ``run``: running: the systems chosen, prepared and warmed up, steps and whole fits timed
  interleaved, the denormal watch, the ceilings probe, the derived rates and speed-ups.
- ``results``: what a run yields, ``Row`` and ``RunResult``, and a row's report.json form.
- ``report``: printing: machine facts, report.json, report.md, the plots, progress lines.
- ``systems``: the systems compared (each bpgpu backend, PyTorch eager, torch.compile).
- ``timing``: clocks and syncs, interleaved repeats, medians; the ceiling probes; a system
  that fails keeps its row.
- ``workloads``: network shapes and batches, the suites, the work one step does.
"""

from __future__ import annotations

from bpgpu.benchmark.command import main

__all__ = ["main"]
