"""Printing a benchmark: machine facts, report.json with every figure, report.md, PNG plots,
and the progress line of each row as it is timed.

report.md and the plots are drawn from report.json's content (the dict ``assemble`` returns),
so they can be drawn again from a saved report.json.
"""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bpgpu.backends import cuda_source
from bpgpu.benchmark.results import Row, RunResult
from bpgpu.files import write_bytes, write_text

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=10, check=True, cwd=ROOT
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_facts() -> dict[str, str] | None:
    """Name and driver of the first GPU from nvidia-smi; None without one."""
    out = _run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    )
    if not out:
        return None
    name, driver, memory = (s.strip() for s in out.splitlines()[0].split(","))
    return {"name": name, "driver": driver, "memory": memory}


def versions() -> dict[str, str]:
    import bpgpu

    found = {"python": sys.version.split()[0], "numpy": np.__version__, "bpgpu": bpgpu.__version__}
    for mod in ("torch", "cupy", "numba", "numba_cuda", "matplotlib"):
        try:
            found[mod] = __import__(mod).__version__
        except Exception:
            found[mod] = "not installed"
    if found["torch"] != "not installed":
        import torch

        found["torch_cuda"] = str(torch.version.cuda)  # None: a CPU build
    return found


def kernel_hashes() -> dict[str, str]:
    """sha256 of each kernel source, and under "all" the hash the cupy backend reports (the
    sources with the tunables)."""
    return {"all": cuda_source.sources_hash(), **cuda_source.kernel_file_hashes()}


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages; None where the platform has none."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine() -> dict[str, Any]:
    """What the numbers were taken on: platform, CPU, GPU, load, versions, commit, kernels."""
    commit = _run(["git", "rev-parse", "HEAD"])
    dirty = _run(["git", "status", "--porcelain", "--", "bpgpu", "kernels"])
    return {
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "load_average": load_average(),
        "gpu": gpu_facts(),
        "versions": versions(),
        "git_commit": commit,
        "git_dirty": bool(dirty),
        "kernels_sha256": kernel_hashes(),
    }


# ---- report.json ----------------------------------------------------------------------------


def assemble(
    machine: dict[str, Any], settings: dict[str, Any], result: RunResult
) -> dict[str, Any]:
    """report.json's content: ``machine`` (read before the run), ``settings``, the run's
    ceilings, systems and rows, its duration, and the load average now, at its end."""
    return {
        "machine": machine,
        "settings": settings,
        "ceilings": result.ceilings,
        "systems": result.systems,
        "rows": [row.as_dict() for row in result.rows],
        "elapsed_s": result.elapsed_s,
        "load_average_end": load_average(),
    }


def write(out: Path, report: dict[str, Any], with_plots: bool = True) -> None:
    """report.json, report.md and (``with_plots``) the three plots into ``out``, created if
    needed; each file written atomically, so an interrupted run leaves the previous report's
    files whole."""
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "report.json", json.dumps(report, indent=1, default=float) + "\n")
    write_text(out / "report.md", markdown(report))
    if with_plots:
        plots(report, out)


def progress_line(row: Row) -> str:
    """One line for a row as soon as it is timed: each system's median step (and fit)."""

    def cell(r: dict[str, Any], key: str, unit: str) -> str:
        return f"{r[key]:.3g} {unit}" if key in r else r["status"]

    line = f"{row.workload.name} {row.optimizer}: " + ", ".join(
        f"{n} {cell(r, 'median_ms', 'ms')}" for n, r in row.results.items()
    )
    if row.fit is not None:
        line += "; fit: " + ", ".join(f"{n} {cell(r, 'median_s', 's')}" for n, r in row.fit.items())
    return line


# ---- Markdown -------------------------------------------------------------------------------


def _table(
    rows: list[dict], systems: list[str], entries: str, key: str, cell: Callable[[dict], str]
) -> list[str]:
    """A Markdown table, a line per row and a column per system: ``cell(result)`` where the
    row's ``entries`` (results or fit) has ``key`` for that system, else its status."""
    header = ["workload", "optimizer", *systems]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["workload"], r["optimizer"]]
        for name in systems:
            res = r.get(entries, {}).get(name, {})
            cells.append(cell(res) if key in res else res.get("status", "-"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _speedup(res: dict) -> str:
    """The speed-up vs PyTorch eager, and for bpgpu's systems vs the fastest peer."""
    x, peer = res.get("speedup_vs_torch"), res.get("speedup_vs_peer")
    text = "" if x is None else f" {x:.2f}x"
    return text + ("" if peer is None else f" / {peer:.2f}x peer")


def markdown(report: dict) -> str:
    """The report as Markdown: conditions, then step times, achieved rates and whole fits."""
    systems = report["systems"]
    rows = report["rows"]
    m = report["machine"]
    s = report["settings"]
    quick = (
        f" (QUICK: fewer repeats, batches capped at {s['quick_max_batch']})" if s["quick"] else ""
    )
    gpu = f"{m['gpu']['name']} (driver {m['gpu']['driver']})" if m["gpu"] else "none"
    dirty = " (dirty)" if m["git_dirty"] else ""
    vers = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    ceil = "; ".join(
        f"{d}: {c['matmul_gflops'] / 1e3:.3g} TFLOP/s matmul ({c.get('matmul_by', '-')}), "
        f"{c['copy_gbs']:.3g} GB/s copy ({c.get('copy_by', '-')})"
        for d, c in report["ceilings"].items()
    )
    lines = [
        f"# bpgpu benchmark{quick}",
        "",
        (
            f"Machine: {m['cpu']}, {m['cores']} cores; GPU: {gpu}; "
            f"load average at start {m['load_average']}, at the end "
            f"{report['load_average_end']}; commit {m['git_commit']}{dirty}."
        ),
        f"Versions: {vers}.",
        f"Ceilings (the best measured here): {ceil}.",
        f"Settings: {json.dumps(s)}.",
        "",
        (
            "Step time (forward, backward, update), median ms [IQR] over interleaved repeats; "
            "x = speed-up against PyTorch eager (>1: faster than PyTorch); % = fraction of the "
            "floor max(FLOPs / matmul rate, bytes / copy bandwidth) reached."
        ),
        "",
    ]
    lines += _table(
        rows,
        systems,
        "results",
        "median_ms",
        lambda r: (
            f"{r['median_ms']:.3g} [{r['iqr_ms']:.2g}]{_speedup(r)} "
            f"{100 * r['fraction_of_floor']:.0f}%"
        ),
    )
    lines += [
        "",
        (
            "Achieved rates of the step: TFLOP/s (fraction of the matmul ceiling) and GB/s of "
            "the fewest bytes a step moves (fraction of the copy ceiling)."
        ),
        "",
    ]
    lines += _table(
        rows,
        systems,
        "results",
        "gflops",
        lambda r: (
            f"{r['gflops'] / 1e3:.3g} TFLOP/s ({100 * r['fraction_of_matmul']:.0f}%), "
            f"{r['gbs']:.3g} GB/s ({100 * r['fraction_of_copy']:.0f}%)"
        ),
    )
    fits = [r for r in rows if "fit" in r]
    if fits:
        lines += [
            "",
            (
                f"Whole `fit` ({s['fit_samples']} samples in whole batches, "
                f"{s['fit_epochs']} epochs, shuffled each epoch, the loss read back each "
                f"epoch, data from the host): median s [IQR] over {s['fit_repeats']} fits, "
                "ms per step, x = speed-up against PyTorch eager, fit/step = the fit's time "
                "per step over the bare step's median (the training loop's own cost)."
            ),
            "",
        ]
        lines += _table(
            fits,
            systems,
            "fit",
            "median_s",
            lambda r: (
                f"{r['median_s']:.3g} s [{r['iqr_s']:.2g}] {r['ms_per_step']:.3g} "
                f"ms/step{_speedup(r)}"
                + (f" fit/step {r['fit_over_step']:.2f}" if "fit_over_step" in r else "")
            ),
        )
    drift = [r for r in rows if any("drift" in v for v in r["results"].values())]
    if drift:
        lines += [
            "",
            (
                "Step time after many steps (denormal watch): median ms before -> after N more "
                "steps, subnormal fraction of optimizer state."
            ),
            "",
        ]
        lines += [
            "| workload | optimizer | system | steps | before ms | after ms | ratio | subnormal |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in drift:
            for name, v in r["results"].items():
                d = v.get("drift")
                if d:
                    lines.append(
                        f"| {r['workload']} | {r['optimizer']} | {name} | {d['steps']} | "
                        f"{v['median_ms']:.3g} | {d['median_ms']:.3g} | "
                        f"{d['median_ms'] / v['median_ms']:.2f} | {d['subnormal_fraction']:.2e} |"
                    )
    return "\n".join(lines) + "\n"


# ---- plots ----------------------------------------------------------------------------------


def plots(report: dict, out: Path) -> list[str]:
    """step_time.png, speedup.png and ceiling.png; returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    systems = [
        s for s in report["systems"] if any("median_ms" in r["results"].get(s, {}) for r in rows)
    ]
    labels = [r["workload"].replace(" ", "\n") + "\n" + r["optimizer"] for r in rows]
    x = np.arange(len(rows))
    width = 0.8 / max(len(systems), 1)
    title = "bpgpu benchmark" + (" (quick)" if report["settings"]["quick"] else "")
    written = []

    def bars(
        key: str, fname: str, ylabel: str, log: bool, names: list[str], scale: float = 1.0
    ) -> None:
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4.5))
        for j, s in enumerate(names):
            vals = [r["results"].get(s, {}).get(key) for r in rows]
            ax.bar(
                x + j * width, [np.nan if v is None else v * scale for v in vals], width, label=s
            )
        if key == "speedup_vs_torch":
            ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(x + width * (len(names) - 1) / 2, labels, fontsize=7)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.set_title(
            f"{title}: {report['machine']['cpu'][:40]}"
            + (f" / {report['machine']['gpu']['name']}" if report["machine"]["gpu"] else ""),
            fontsize=9,
        )
        ax.legend(fontsize=7)
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=110)
        plt.close(fig)
        write_bytes(out / fname, png.getvalue())
        written.append(fname)

    bars("median_ms", "step_time.png", "step time, ms (median)", True, systems)
    bars(
        "speedup_vs_torch",
        "speedup.png",
        "speed-up vs PyTorch eager",
        False,
        [s for s in systems if not s.startswith("torch")],
    )
    bars("fraction_of_floor", "ceiling.png", "fraction of the floor, %", False, systems, 100.0)
    return written
