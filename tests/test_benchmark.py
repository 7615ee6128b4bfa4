"""The benchmark report: a tiny numpy-only run through main() and the work model."""

from __future__ import annotations

import json

import pytest

from bpgpu.benchmark import main
from bpgpu.benchmark.workloads import parse_workload


def test_tiny_run_writes_json_markdown_and_plots(tmp_path):
    out = tmp_path / "report"
    rc = main(
        [
            "--workload",
            "7-33-3:129:relu",
            "--systems",
            "numpy",
            "--repeats",
            "2",
            "--warmup",
            "1",
            "--budget",
            "0.2",
            "--quick",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    m = report["machine"]
    for key in ("cpu", "cores", "gpu", "versions", "git_commit", "kernels_sha256", "platform"):
        assert key in m
    assert m["versions"]["numpy"]
    assert report["settings"]["quick"] is True
    assert (
        report["ceilings"]["cpu"]["matmul_gflops"] > 0 and report["ceilings"]["cpu"]["copy_gbs"] > 0
    )
    (row,) = report["rows"]
    assert row["spec"] == "7-33-3:129:relu:softmax" and row["optimizer"] == "rmsprop"
    res = row["results"]["numpy"]
    assert res["median_ms"] > 0 and res["iqr_ms"] >= 0 and res["repeats"] >= 2
    assert res["gflops"] > 0 and res["gbs"] > 0 and 0 < res["fraction_of_floor"]
    assert res["flops"] == 2 * 129 * (2 * (7 * 33 + 33 * 3) + 33 * 3)
    md = (out / "report.md").read_text()
    assert "| 7-33-3 b129 relu/softmax | rmsprop |" in md
    for png in ("step_time.png", "speedup.png", "ceiling.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cpu_run_never_writes_into_a_gpu_report(tmp_path):
    with pytest.raises(SystemExit, match="GPU report"):
        main(
            [
                "--workload",
                "3-2:4",
                "--systems",
                "numpy",
                "--out",
                str(tmp_path / "gpu-h100"),
                "--no-plots",
            ]
        )


@pytest.mark.parametrize("text", ["784-10", "784:256:relu:softmax:x", "784-a:3", "784-10:0", "5:3"])
def test_bad_workloads_are_refused(text):
    with pytest.raises(ValueError):
        parse_workload(text)


def test_single_output_defaults_to_sigmoid():
    w = parse_workload("64-64-1:65536")
    assert (w.layers, w.batch, w.activation, w.output) == ((64, 64, 1), 65536, "relu", "sigmoid")
