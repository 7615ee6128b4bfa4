"""The first-contact script (bench/gpu_report.sh) run end to end here, in its no-GPU mode
(BPGPU_FAKE_GPU=1: stand-ins for nvidia-smi, compute-sanitizer and CuPy, tests/fake_gpu/), so
that on a GPU machine the script itself is not what fails: every stage runs or says why not,
its outputs have the layout of bench/results/gpu/, a run cut off still leaves a summary, and a
machine with nothing but python3 is told what is missing. Nothing here runs on a GPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bpgpu.backends.cuda_source import gpu_report_status

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_report.sh"
STAGES = [
    "preflight",
    "install",
    "build",
    "tests",
    "tests-nvrtc",
    "tests-nodebug",
    "microbench",
    "sanitize-memcheck",
    "sanitize-racecheck",
    "sanitize-synccheck",
    "sanitize-initcheck",
    "bench",
]


def run_script(tmp: Path, python: str = sys.executable, **env: str) -> tuple[Path, str]:
    """The script in fake-GPU mode with its output in tmp/out and its fatbins in tmp/build;
    (the output folder, what it printed)."""
    if shutil.which("timeout") is None:
        pytest.skip("no coreutils timeout")
    out = tmp / "out"
    environment = {
        **os.environ,
        "BPGPU_FAKE_GPU": "1",
        "OUT": str(out),
        "BUILD": str(tmp / "build"),
        "PYTHON": python,
        **env,
    }
    done = subprocess.run(
        ["bash", str(SCRIPT)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=tmp,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return out, done.stdout


def statuses(out: Path) -> dict[str, tuple[str, str]]:
    """stage -> (exit status, note) from status.tsv."""
    found = {}
    for line in (out / "status.tsv").read_text().splitlines():
        name, rc, _seconds, note = line.split("\t")
        found[name] = (rc, note)
    return found


def test_every_stage_runs_without_a_gpu(tmp_path):
    out, printed = run_script(tmp_path)
    status = statuses(out)
    assert [s for s in status if s in STAGES] == STAGES
    for stage in STAGES:
        rc, note = status[stage]
        if stage == "build" and rc == "skipped":  # no nvcc or cmake here: said so
            assert "no cmake >= 3.27 or no nvcc" in note
            continue
        assert rc == "0", f"{stage}: {rc} {note}\n{(out / 'logs' / f'{stage}.log').read_text()}"
    summary = (out / "SUMMARY.md").read_text()
    assert summary.startswith("# bpgpu's first contact with a GPU\n\n**FAKE: no GPU.**")
    assert summary in printed  # the last thing the script prints
    assert "| sanitize-racecheck | 0 |" in summary and "0 errors" in summary
    # the layout of bench/results/gpu/: the benchmark's report at the top, checkable by CI
    report = json.loads((out / "report.json").read_text())
    assert report["rows"] and "cupy" in report["rows"][0]["results"]
    assert "matches the current kernel sources" in gpu_report_status(out / "report.json")
    micro = json.loads((out / "microbench.json").read_text())
    assert micro["cut"] == [] and {k["kernel"] for k in micro["kernels"]} >= {
        "dense_forward_relu_f32",
        "dense_output_delta_softmax_cross_entropy_f32",
        "weight_update_rmsprop_f32",
    }
    assert set(micro["steps"]) == {"cupy (CUDA graph)", "cupy (no graph)", "torch eager"}
    for tool in ("memcheck", "racecheck", "synccheck", "initcheck"):
        log = (out / "logs" / f"sanitize-{tool}.log").read_text()
        assert f"the CPU emulation's {tool}" in log and "ERROR SUMMARY: 0 errors" in log
    assert (out / "logs" / "pytest-tests.xml").is_file()
    if status["build"][0] == "0":  # the fatbins were built, so the NVRTC-only run ran too
        assert (tmp_path / "build" / "fatbin" / "manifest.json").is_file()
        assert "BPGPU_CUDA_LOAD=nvrtc" in (out / "logs" / "tests-nvrtc.log").read_text()


def test_a_run_cut_off_still_reports(tmp_path):
    """A stage that overruns the run's deadline is stopped by its timeout, the stages after it
    are skipped for want of time, and SUMMARY.md says so."""
    slow = tmp_path / "python"  # a Python whose pip hangs
    slow.write_text(
        "#!/usr/bin/env bash\n"
        f'[[ "$*" == *"pip install"* ]] && sleep 120\nexec "{sys.executable}" "$@"\n'
    )
    slow.chmod(0o755)
    out, _ = run_script(tmp_path, python=str(slow), BUDGET_S="25")
    status = statuses(out)
    assert status["preflight"][0] == "0"
    assert status["install"][0] == "124" and status["install"][1].startswith("timed out after")
    later = [s for s in STAGES[2:] if s != "tests-nvrtc"]  # that one needs fatbins first
    assert all(status[s] == ("skipped", "out of time") for s in later)
    summary = (out / "SUMMARY.md").read_text()
    assert "| install | 124 |" in summary and "| bench | skipped | 0 | out of time |" in summary


def test_a_machine_with_only_python3_is_told_what_is_missing(tmp_path):
    """A bare Python (no pip, pytest, numpy, CuPy or numba): every stage that needs one of
    them is skipped with the reason, and bpgpu is used from the checkout."""
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    out, _ = run_script(tmp_path, python=str(bare / "bin" / "python"))
    status = statuses(out)
    preflight = json.loads((out / "preflight.json").read_text())
    for tool in ("pip", "pytest", "numpy", "cupy", "numba-cuda compiler"):
        assert not preflight[tool]["ok"], tool
    assert status["install"][0] == "skipped"
    assert status["install-fallback"][1].startswith("bpgpu is not installed")
    assert status["tests"] == ("skipped", "no pytest for " + str(bare / "bin" / "python"))
    assert status["microbench"] == ("skipped", "no cupy with a GPU")
    assert status["bench"] == ("skipped", "no GPU backend")
    assert "| pytest | NO |" in (out / "SUMMARY.md").read_text()
