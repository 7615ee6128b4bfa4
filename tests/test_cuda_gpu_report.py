"""``cuda_source.gpu_report_status``: the line CI prints about the committed GPU report."""

from __future__ import annotations

import json
from pathlib import Path

from bpgpu.backends import cuda_source as cs


def _write_report(path: Path, hashes: dict[str, str]) -> Path:
    """A report.json shaped as the benchmark writes it (machine.kernels_sha256)."""
    path.write_text(json.dumps({"machine": {"kernels_sha256": hashes}, "rows": []}))
    return path


def test_report_matching_the_sources(tmp_path) -> None:
    # the benchmark also hashes files that are not kernel sources: those are ignored
    hashes = {"all": "0" * 64, "kernels/cpu/cuda_cpu.h": "1" * 64, **cs.kernel_file_hashes()}
    line = cs.gpu_report_status(_write_report(tmp_path / "report.json", hashes))
    assert "matches the current kernel sources" in line


def test_report_of_other_sources_is_stale(tmp_path) -> None:
    hashes = cs.kernel_file_hashes()
    hashes["kernels/gemm.cuh"] = "0" * 64
    hashes["kernels/retired.cu"] = "1" * 64  # a source that no longer exists
    del hashes["kernels/gather.cu"]  # a source added since
    line = cs.gpu_report_status(_write_report(tmp_path / "report.json", hashes))
    assert "STALE" in line
    assert line.endswith("kernels/gather.cu, kernels/gemm.cuh, kernels/retired.cu")


def test_no_report_or_no_hashes_is_said_not_raised(tmp_path) -> None:
    assert cs.gpu_report_status(tmp_path / "missing.json").startswith("GPU report: none at")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert "holds no per-file kernel hashes" in cs.gpu_report_status(broken)
    broken.write_text(json.dumps({"machine": {"kernels_sha256": "abc"}}))
    assert "holds no per-file kernel hashes" in cs.gpu_report_status(broken)


def test_the_benchmark_records_the_same_per_file_hashes() -> None:
    """The check reads what the benchmark writes: its report.json must keep these entries."""
    from bpgpu.benchmark.report import machine

    recorded = machine()["kernels_sha256"]
    for name, digest in cs.kernel_file_hashes().items():
        assert recorded.get(name) == digest, name
