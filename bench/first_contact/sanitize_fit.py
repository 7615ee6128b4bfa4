"""A short fit on GPU backends, for compute-sanitizer (bench/gpu_report.sh, stage sanitize).

    compute-sanitizer --tool TOOL python3 bench/first_contact/sanitize_fit.py [--backends B,...]

CuPy's memory pools are off first, so every array is its own allocation and an access past one
is outside any (memcheck), and unwritten memory is fresh (initcheck). Two epochs of 2100 samples
in batches of 1024 run every kernel family: 10 classes (the last layer fused with its loss) and
70 (a separate output kernel), the split-batch weight update (1024 rows over a one-tile W), a
step captured in a CUDA graph and replayed, and a last partial batch of 52 rows.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="cupy", help="comma-separated: cupy, numba")
    args = parser.parse_args()
    import cupy

    cupy.cuda.set_allocator(None)
    cupy.cuda.set_pinned_memory_allocator(None)
    import bpgpu

    rng = np.random.default_rng(0)
    X = rng.standard_normal((2100, 33))
    for backend in args.backends.split(","):
        for classes in (10, 70):
            y = rng.integers(0, classes, len(X))
            net = bpgpu.MLP([33, 65, classes], activation="relu", backend=backend, seed=0)
            history = net.fit(X, y, epochs=2, batch_size=1024, optimizer=bpgpu.Adam(lr=1e-3))
            print(backend, classes, "classes: loss", history.history["loss"], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
