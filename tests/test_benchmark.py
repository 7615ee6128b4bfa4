"""The benchmark: ``bpgpu bench --quick`` end to end, the report.json layout of a row, the
timing helpers against fakes that log what they are asked (so the order of syncs and clock
reads is checked, not timings), the output folders, and the work model."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from bpgpu import MLP
from bpgpu.benchmark import main, timing
from bpgpu.benchmark.command import default_out
from bpgpu.benchmark.report import markdown, progress_line
from bpgpu.benchmark.results import Row
from bpgpu.benchmark.run import PEERS
from bpgpu.benchmark.systems import Prepared, PreparedFit, TorchTrainer, make_data
from bpgpu.benchmark.workloads import DEFAULT, parse_workload
from bpgpu.cli import main as cli_main
from bpgpu.optimizers import SGD, Adam, RMSprop

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")


def test_quick_report(tmp_path):
    """What CI runs: every default workload, every system, fits of the first two, the
    machine's ceilings, and JSON, Markdown and three PNG plots."""
    out = tmp_path / "report"
    assert cli_main(["bench", "--quick", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    m = report["machine"]
    for key in ("cpu", "cores", "gpu", "versions", "git_commit", "kernels_sha256", "platform"):
        assert key in m
    assert m["versions"]["numpy"] and m["kernels_sha256"]["all"]
    assert list(report) == [
        "machine",
        "settings",
        "ceilings",
        "systems",
        "rows",
        "elapsed_s",
        "load_average_end",
    ]
    assert list(report["settings"]) == [
        "quick",
        "quick_max_batch",
        "repeats",
        "warmup",
        "budget_s",
        "threads",
        "seed",
        "dtype",
        "optimizers",
        "drift_steps",
        "settle_s",
        "fit_workloads",
        "fit_samples",
        "fit_epochs",
        "fit_repeats",
        "timing",
    ]
    assert report["settings"]["quick"] is True
    cpu = report["ceilings"]["cpu"]
    assert (
        cpu["matmul_gflops"] > 0
        and cpu["copy_gbs"] > 0
        and cpu["matmul_by"]
        in {
            "numpy",
            "torch",
        }
    )
    assert [r["spec"] for r in report["rows"]] == [w.shrunk(256).spec for w in DEFAULT]
    assert "numpy" in report["systems"] and "torch-eager" in report["systems"]
    for i, row in enumerate(report["rows"]):
        assert list(row) == ["workload", "spec", "optimizer", "slots", "results"] + (
            ["fit"] if i < 2 else []
        )
        res = row["results"]["numpy"]
        assert res["median_ms"] > 0 and res["iqr_ms"] >= 0 and res["repeats"] >= 3
        assert res["device"] == "cpu"
        for key in ("gflops", "gbs", "fraction_of_matmul", "fraction_of_copy"):
            assert res[key] > 0
        assert ("fit" in row) == (i < 2)
        if HAS_TORCH:
            assert row["results"]["torch-eager"]["speedup_vs_torch"] == 1.0
            # the fastest peer's time over numpy's
            peers = [
                r["median_ms"] for n, r in row["results"].items() if n in PEERS and "median_ms" in r
            ]
            assert res["speedup_vs_peer"] == pytest.approx(min(peers) / res["median_ms"])
        else:
            assert row["results"]["torch-eager"] == {"status": "not installed"}
    fit = report["rows"][0]["fit"]["numpy"]
    batch = DEFAULT[0].shrunk(256).batch
    assert fit["samples"] == 1024 and fit["epochs"] == 1 and fit["steps"] == 1024 // batch
    assert fit["median_s"] > 0 and fit["ms_per_step"] > 0 and fit["fit_over_step"] > 0
    md = (out / "report.md").read_text()
    assert "| 784-512-10 b256 relu/softmax | rmsprop |" in md
    assert "TFLOP/s" in md and "Whole `fit`" in md
    assert markdown(report) == md  # drawn again from the saved report.json
    for png in ("step_time.png", "speedup.png", "ceiling.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_row_serializes_without_its_workload():
    w = parse_workload("7-33-3:129")
    step = {"numpy": {"median_ms": 1.5}, "torch-eager": {"status": "not installed"}}
    row = Row(workload=w, optimizer="rmsprop", slots=1, results=step)
    assert row.as_dict() == {
        "workload": "7-33-3 b129 relu/softmax",
        "spec": "7-33-3:129:relu:softmax",
        "optimizer": "rmsprop",
        "slots": 1,
        "results": step,
    }
    row.fit = {"numpy": {"median_s": 0.5}}
    saved = json.loads(json.dumps(row.as_dict()))
    assert list(saved) == ["workload", "spec", "optimizer", "slots", "results", "fit"]
    assert saved["fit"] == {"numpy": {"median_s": 0.5}}
    assert progress_line(row) == (
        "7-33-3 b129 relu/softmax rmsprop: numpy 1.5 ms, torch-eager not installed; "
        "fit: numpy 0.5 s"
    )


def test_default_folder_by_device():
    assert default_out(gpu=False, quick=False).parts[-2:] == ("results", "cpu")
    assert default_out(gpu=True, quick=False).parts[-2:] == ("results", "gpu")
    assert default_out(gpu=True, quick=True).parts[-3:] == ("results", "gpu", "quick")


@pytest.mark.parametrize("folder", ["gpu", "gpu-h100", "gpu/quick"])
def test_cpu_run_never_writes_into_a_gpu_report(tmp_path, folder):
    with pytest.raises(SystemExit, match="GPU report"):
        main(["--workload", "3-2:4", "--systems", "numpy", "--out", str(tmp_path / folder)])
    assert not (tmp_path / folder / "report.json").exists()


# ---- timing helpers against fakes ---------------------------------------------------------


@pytest.fixture
def log(monkeypatch):
    """Events in order; every read of the benchmark's clock is logged as "clock"."""
    events: list = []
    clock = iter(range(10**6))

    def perf_counter() -> float:
        events.append("clock")
        return float(next(clock))

    monkeypatch.setattr(timing.time, "perf_counter", perf_counter)
    monkeypatch.setattr(timing.time, "sleep", lambda s: None)
    return events


def fake_system(name: str, events: list) -> Prepared:
    return Prepared(
        step=lambda i: events.append((name, i)),
        sync=lambda: events.append(("sync", name)),
        state=list,
        device="gpu",
    )


def test_time_block_syncs_before_each_clock_read(log):
    timing.time_block(fake_system("a", log), 5, 3)
    assert log == [("sync", "a"), "clock", ("a", 5), ("a", 6), ("a", 7), ("sync", "a"), "clock"]


def test_time_fit_resets_outside_the_clock(log):
    p = PreparedFit(
        fresh=lambda: log.append("reset") or (lambda: log.append("fit")),
        sync=lambda: log.append("sync"),
        device="gpu",
    )
    timing.time_fit(p)
    assert log == ["reset", "sync", "clock", "fit", "sync", "clock"]


def test_interleaved_rotates_inputs_and_order(log):
    systems = {n: fake_system(n, log) for n in "abc"}
    timed = timing.interleaved(systems, repeats=4, block_s=3.0, budget_s=1e9)
    for n in "abc":
        steps = [e[1] for e in log if isinstance(e, tuple) and e[0] == n]
        assert steps == list(range(timed[n]["steps_run"]))  # every step a new rotation
        assert timed[n]["repeats"] == 4
    assert list(timing.rounds(["a", "b", "c"], 3)) == list("abcbcacab")


def test_interleaved_fits_time_every_system(log):
    systems = {n: PreparedFit(lambda: lambda: None, lambda: None, "cpu") for n in ("a", "b")}
    timed = timing.interleaved_fits(systems, repeats=3)
    assert {n: r["repeats"] for n, r in timed.items()} == {"a": 3, "b": 3}
    assert timed["a"]["median_s"] == 1.0  # one tick of the fake clock per fit


def test_a_failing_system_gets_a_row_and_the_others_still_run():
    def no_compiler():
        raise RuntimeError("no C++ compiler for torch.compile")

    results, ready = timing.guarded(
        {"numpy": lambda: "ready", "torch-compile": no_compiler},
        lambda ready: {n: {"median_ms": 1.0} for n in ready},
    )
    assert list(ready) == ["numpy"] and results["numpy"] == {"median_ms": 1.0}
    assert results["torch-compile"]["status"].startswith("failed: RuntimeError: no C++")

    def run(ready):
        raise RuntimeError("device lost")

    results, _ = timing.guarded({"numpy": lambda: "ready"}, run)
    assert results["numpy"]["status"] == "failed: RuntimeError: device lost"


# ---- ceilings ------------------------------------------------------------------------------


def test_probe_keeps_the_best_library_and_says_why_one_failed():
    def broken():
        raise ImportError("No module named 'cupy'")

    libraries = {"numpy": lambda: timing.array_ops(np), "cupy": broken}
    if HAS_TORCH:
        libraries["torch"] = lambda: timing.torch_ops("cpu")  # the CUDA probe's code, on CPU
    best = timing.probe_best(libraries, 64, 1 << 16, repeats=1)
    assert best["matmul_gflops"] > 0 and best["copy_gbs"] > 0
    assert best["matmul_by"] in libraries and best["matmul_n"] == 64
    assert best["errors"] == {"cupy": "failed: ImportError: No module named 'cupy'"}
    nothing = timing.probe_best({"cupy": broken}, 64, 1 << 16, repeats=1)
    assert np.isnan(nothing["matmul_gflops"]) and "matmul_by" not in nothing


# ---- the systems compute the same thing --------------------------------------------------


@needs_torch
@pytest.mark.parametrize(
    "opt",
    [
        SGD(lr=0.1, momentum=0.9, weight_decay=1e-2),
        RMSprop(lr=0.01, weight_decay=1e-3),
        Adam(lr=0.01),
    ],
    ids=lambda o: o.kind,
)
def test_torch_fit_matches_bpgpu_fit(opt):
    """Same initial weights, data, shuffles and optimizer (torch.optim from the optimizer's own
    declaration, weight decay on the weights only): the same weights after a fit."""
    w = parse_workload("7-33-3:16:relu")
    data = make_data(w, 5, seed=3)
    model = MLP(list(w.layers), activation="relu", backend="numpy", seed=0)
    model.fit(data.X, data.labels, epochs=2, batch_size=w.batch, optimizer=opt, seed=0)
    trainer = TorchTrainer(w, opt, seed=0, device="cpu", compiled=False)
    trainer.fit(data, epochs=2, seed=0)
    linears = [m for m in trainer.net if hasattr(m, "weight")]
    assert type(trainer.optimizer).__name__ == opt.torch_optimizer()[0]
    for (W, b), lin in zip(model.get_weights(), linears, strict=True):
        np.testing.assert_allclose(lin.weight.detach().numpy().T, W, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(lin.bias.detach().numpy(), b, rtol=1e-4, atol=1e-5)


# ---- work model ----------------------------------------------------------------------------


def test_flops_of_a_step():
    w = parse_workload("7-33-3:129")
    assert w.flops() == 2 * 129 * (2 * (7 * 33 + 33 * 3) + 33 * 3)


@pytest.mark.parametrize("text", ["784-10", "784:256:relu:softmax:x", "784-a:3", "784-10:0", "5:3"])
def test_bad_workloads_are_refused(text):
    with pytest.raises(ValueError):
        parse_workload(text)


def test_single_output_defaults_to_sigmoid():
    w = parse_workload("64-64-1:65536")
    assert (w.layers, w.batch, w.activation, w.output) == ((64, 64, 1), 65536, "relu", "sigmoid")
