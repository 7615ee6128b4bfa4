"""The trials of the 'lose nothing' review, one line each: saving while killed, Ctrl-C in fit
and in `bpgpu train`, damaged and hostile model files, a model too large, divergence.

    python bench/robustness_trials.py /tmp/trials            # the bpgpu installed here
    PYTHONPATH=/path/to/old/checkout python bench/robustness_trials.py /tmp/trials-old

It uses only the public API (attributes older versions lack print as 'no attribute'), so the
same script runs on an older checkout for a before-and-after comparison. Notes and results:
bench/results/cpu/issue15/NOTES.md.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import tracemalloc
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

import bpgpu

BIG = [4096, 4096, 4096, 10]  # 128 MiB of float32


def say(label: str, text: object) -> None:
    print(f"{label}: {text}", flush=True)


def attempt(label: str, call: Callable[[], object], traced: bool = False) -> None:
    """Run ``call``; say what it returned or raised (and its time and traced peak)."""
    tracemalloc.start() if traced else None
    start = time.perf_counter()
    try:
        say(label, f"returned {call()}")
    except Exception as exc:
        say(label, f"{type(exc).__name__}: {str(exc)[:300]}")
    if traced:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        say("    time, traced peak", f"{time.perf_counter() - start:.2f} s, {peak / 2**20:.1f} MiB")


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def model_files(out: Path) -> None:
    net = bpgpu.MLP([5, 7, 4, 3], backend="numpy", seed=0)
    net.save(out / "m.npz")
    with np.load(out / "m.npz") as d:
        fields = {k: d[k] for k in d.files}

    def load(name: str) -> Callable[[], object]:
        return lambda: bpgpu.load(out / name, backend="numpy")

    rng = np.random.default_rng(0)
    (out / "random.npz").write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    attempt("random bytes", load("random.npz"))
    np.save(out / "a.npy", np.arange(3))
    attempt(".npy file", load("a.npy"))
    raw = (out / "m.npz").read_bytes()
    (out / "cut.npz").write_bytes(raw[: len(raw) // 2])
    attempt("truncated", load("cut.npz"))
    tampered = {
        "pickled.npz": ("W1", np.array([object()], dtype=object)),
        "layers0d.npz": ("layers", np.array(5)),
        "version.npz": ("format_version", np.array("x")),
        "fraction.npz": ("layers", np.array([5, 7, 4.5, 3])),
    }
    for name, (key, value) in tampered.items():
        np.savez(out / name, **{**fields, key: value})
        attempt(f"{key} = {value!r}", load(name))
    small = bpgpu.MLP([5, 7, 3], backend="numpy", seed=0)
    small.save(out / "s.npz")
    with np.load(out / "s.npz") as d:
        claims = {k: d[k] for k in d.files}
    claims["layers"] = np.array([10000, 10000, 3])
    np.savez_compressed(out / "claims.npz", **claims)
    size = (out / "claims.npz").stat().st_size
    attempt(f"{size} B file claiming layers [10000, 10000, 3]", load("claims.npz"), traced=True)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (800 << 17,)}
    )
    with zipfile.ZipFile(out / "bomb.npz", "w", compression=zipfile.ZIP_DEFLATED) as z:
        for key, a in fields.items():
            z.writestr(f"{key}.npy", npy(a))
        with z.open("extra.npy", "w", force_zip64=True) as f:
            f.write(header.getvalue())
            for _ in range(800):
                f.write(bytes(1 << 20))
    size = (out / "bomb.npz").stat().st_size >> 10
    attempt(f"{size} KB file + 800 MB deflated extra member", load("bomb.npz"), traced=True)


def divergence() -> None:
    attempt("MLP([10**6, 10**6])", lambda: bpgpu.MLP([10**6, 10**6], backend="numpy"))
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(100, 4)), rng.integers(0, 3, 100)
    for label, scale, activation, lr in (("inputs x 1e30", 1e30, "relu", 1e-3),
                                          ("lr=100", 1.0, "identity", 100.0)):  # fmt: skip
        net = bpgpu.MLP([4, 8, 3], activation=activation, backend="numpy", seed=0)
        try:
            net.fit(X * scale, y, epochs=20, optimizer=bpgpu.SGD(lr=lr))
            say(label, "did not diverge")
            continue
        except bpgpu.TrainingDivergedError as exc:
            say(f"divergence, {label}", exc)
            say("    .history", getattr(exc, "history", "no attribute"))
        largest = max(float(np.abs(a).max()) for pair in net.get_weights() for a in pair)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                finite = bool(np.isfinite(net.predict_proba(X * scale)).all())
            except ValueError as exc:
                finite = f"ValueError: {exc}"
        say("    kept weights up to, predict finite, warnings", (f"{largest:.3g}", finite,
                                                                 len(caught)))  # fmt: skip


def warm_start_and_sigint() -> None:
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(200, 4)), rng.integers(0, 3, 200)
    kw = {"batch_size": 20, "shuffle": False}

    def net() -> bpgpu.MLP:
        return bpgpu.MLP([4, 8, 3], activation="tanh", backend="numpy", seed=0)

    opt = bpgpu.Adam(lr=0.01)
    once, twice = net(), net()
    once.fit(X, y, epochs=2, optimizer=opt, **kw)
    twice.fit(X, y, epochs=1, optimizer=opt, **kw)
    twice.fit(X, y, epochs=1, optimizer=opt, **kw)
    same = all(
        np.array_equal(p, q)
        for a, b in zip(once.get_weights(), twice.get_weights(), strict=True)
        for p, q in zip(a, b, strict=True)
    )
    say("two 1-epoch fits with the same Adam == one 2-epoch fit", same)
    interrupted = net()
    xp = interrupted.backend
    real, count = xp._weight_update, [0]

    def update(*args):  # SIGINT after W2's update of step 11, before W1's
        count[0] += 1
        if count[0] == 22:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
        return real(*args)

    xp._weight_update = update  # type: ignore[method-assign]
    try:
        interrupted.fit(X, y, epochs=3, optimizer=bpgpu.Adam(lr=0.01), **kw)
    except KeyboardInterrupt as exc:
        say("SIGINT inside step 11", f"{type(exc).__name__}: {exc}")
        say("    model.history", getattr(interrupted, "history", "no attribute"))
    finally:
        del xp._weight_update
    after_epoch = net()
    after_epoch.fit(X, y, epochs=1, optimizer=bpgpu.Adam(lr=0.01), **kw)
    unchanged = [
        bool(np.array_equal(p, q))
        for a, b in zip(interrupted.get_weights(), after_epoch.get_weights(), strict=True)
        for p, q in zip(a, b, strict=True)
    ]
    say("    (W1, b1, W2, b2) as after epoch 1 (True, True, False, False: half a step)", unchanged)


def killed_save(out: Path) -> None:
    path = out / "big.npz"
    old = bpgpu.MLP(BIG, backend="numpy", seed=1)
    old.save(path)
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, bpgpu; net = bpgpu.MLP(" + str(BIG) + ", "
         "backend='numpy', seed=2); print('saving', flush=True); net.save(sys.argv[1])",
         str(path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdout is not None
    child.stdout.readline()
    time.sleep(0.1)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    say("128 MiB model, SIGKILL 0.1 s into overwriting it: MiB left", path.stat().st_size >> 20)
    try:
        back = bpgpu.load(path, backend="numpy")
        same = np.array_equal(back.get_weights()[0][0], old.get_weights()[0][0])
        say("    loads", "the old model, whole" if same else "the new model, whole")
    except ValueError as exc:
        say("    loads", f"{type(exc).__name__}: {exc}")


def cli_ctrl_c(out: Path) -> None:
    files = [out / "m.npz", out / "loss.png"]
    for f in files:
        f.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bpgpu", "train", "--dataset", "digits", "--layers", "64-32-10",
         "--epochs", "100000", "--backend", "numpy", "--quiet", "--save", str(files[0]),
         "--plot", str(files[1])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(4.0)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    lines = stderr.strip().splitlines()
    say("bpgpu train, Ctrl-C: exit status", proc.returncode)
    say("    stderr", f"{len(lines)} lines, traceback: {'Traceback' in stderr}; last: {lines[-1]}")
    say("    stdout", stdout.strip().replace("\n", " | "))
    say("    --save, --plot written", [f.exists() for f in files])


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    say("bpgpu", f"{bpgpu.__file__}")
    model_files(out)
    divergence()
    warm_start_and_sigint()
    killed_save(out)
    cli_ctrl_c(out)


if __name__ == "__main__":
    main()
