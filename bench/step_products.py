"""How much of a CPU training step is its matrix products, and how fast each library does them:
``python bench/step_products.py OUT [WORKLOAD ...]`` (workloads as ``bpgpu bench`` takes them;
by default the mid-size and GEMM-bound ones of ``--suite cpu-compare``).

Per workload, interleaved blocks, medians: the whole step of numba-cpu, PyTorch eager and JAX
``jit`` (``bpgpu bench``'s systems, RMSprop), and the step's matrix products alone in NumPy
(OpenBLAS, what numba-cpu calls), PyTorch and JAX: forward A W per layer, the weight gradient
A^T D per layer, the delta D W^T for every layer but the first. Where NumPy's products alone
take about as long as a peer's whole step, the gap is the library's matrix multiply, not the
code around it. Writes OUT/products.md and OUT/products.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import numpy as np

from bpgpu.benchmark.report import machine
from bpgpu.benchmark.systems import (
    Prepared,
    jax_status,
    make_data,
    prepare_bpgpu,
    prepare_jax,
    prepare_torch,
    torch_status,
)
from bpgpu.benchmark.workloads import CPU_COMPARE, Workload, parse_workload
from bpgpu.files import write_text
from bpgpu.optimizers import make_optimizer

DEFAULT = [w for w in CPU_COMPARE if w.batch > 1]


def eager_products(
    w: Workload, rng: np.random.Generator, asarray: Callable, empty_like: Callable, matmul: Callable
) -> Callable[[], None]:
    """The step's products in an eager library (NumPy or PyTorch), into buffers made once."""
    m, sizes = w.batch, list(w.layers)
    A = [asarray(rng.random((m, k), dtype=np.float32)) for k in sizes[:-1]]
    W = [asarray(rng.random((k, n), dtype=np.float32)) for k, n in pairwise(sizes)]
    D = [asarray(rng.random((m, n), dtype=np.float32)) for n in sizes[1:]]
    Z, G, back = ([empty_like(x) for x in xs] for xs in (D, W, A))

    def run() -> None:
        for i in range(len(W)):
            matmul(A[i], W[i], out=Z[i])
            matmul(A[i].T, D[i], out=G[i])
            if i:
                matmul(D[i], W[i].T, out=back[i])

    return run


def jax_products(w: Workload, rng: np.random.Generator) -> Callable[[], None]:
    import jax
    import jax.numpy as jnp

    m, sizes = w.batch, list(w.layers)
    A = [jnp.asarray(rng.random((m, k), dtype=np.float32)) for k in sizes[:-1]]
    W = [jnp.asarray(rng.random((k, n), dtype=np.float32)) for k, n in pairwise(sizes)]
    D = [jnp.asarray(rng.random((m, n), dtype=np.float32)) for n in sizes[1:]]

    @jax.jit
    def products(A: list, W: list, D: list) -> tuple:
        return (
            [a @ x for a, x in zip(A, W, strict=True)],
            [a.T @ d for a, d in zip(A, D, strict=True)],
            [d @ x.T for d, x in zip(D[1:], W[1:], strict=True)],
        )

    return lambda: jax.block_until_ready(products(A, W, D))


def systems(w: Workload) -> dict[str, Callable[[], None]]:
    """What is timed for one workload, each a callable running one step (or its products)."""
    opt = make_optimizer("rmsprop")
    data = make_data(w, 8, 0)
    rng = np.random.default_rng(0)
    found: dict[str, Callable[[], None]] = {}

    def stepper(prepared: Prepared) -> Callable[[], None]:
        counter = itertools.count()

        def run() -> None:
            prepared.step(next(counter))
            prepared.sync()

        return run

    found["numba-cpu step"] = stepper(prepare_bpgpu("numba-cpu", w, opt, data, 0))
    found["numpy products"] = eager_products(w, rng, np.asarray, np.empty_like, np.matmul)
    if torch_status() is None:
        import torch

        found["torch-eager step"] = stepper(prepare_torch(w, opt, data, 0, "cpu", False))
        found["torch products"] = eager_products(
            w, rng, torch.from_numpy, torch.empty_like, torch.matmul
        )
    if jax_status() is None:
        found["jax-jit step"] = stepper(prepare_jax(w, opt, data, 0))
        found["jax products"] = jax_products(w, rng)
    return found


def measure(w: Workload, repeats: int, block: int, settle_s: float) -> dict[str, float]:
    """Median ms of each system, blocks of ``block`` calls, the systems interleaved."""
    found = systems(w)
    for run in found.values():  # compile and warm up
        for _ in range(3):
            run()
    times: dict[str, list[float]] = {name: [] for name in found}
    for _ in range(repeats):
        for name, run in found.items():
            time.sleep(settle_s)  # let the thread pools park, as bpgpu bench does
            start = time.perf_counter()
            for _ in range(block):
                run()
            times[name].append((time.perf_counter() - start) / block * 1e3)
    return {name: float(np.median(t)) for name, t in times.items()}


def report(results: dict[str, dict[str, float]], host: dict) -> str:
    names = list(dict.fromkeys(n for r in results.values() for n in r))
    lines = [
        "# A CPU step and its matrix products",
        "",
        f"Host: {host['cpu']}, {host['cores']} cores; load average at start "
        f"{host['load_average']}; commit {host['git_commit']}; float32, RMSprop; median ms "
        "over interleaved blocks (python bench/step_products.py).",
        "",
        "| workload | " + " | ".join(names) + " | NumPy products / numba-cpu step |",
        "|---" * (len(names) + 2) + "|",
    ]
    for workload, r in results.items():
        share = r["numpy products"] / r["numba-cpu step"]
        cells = " | ".join(f"{r[n]:.3g}" if n in r else "-" for n in names)
        lines.append(f"| {workload} | {cells} | {share:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("workloads", nargs="*", type=parse_workload)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--settle-s", type=float, default=0.2)
    args = parser.parse_args()
    host = machine()
    results = {}
    for w in args.workloads or DEFAULT:
        results[w.name] = measure(w, args.repeats, args.block, args.settle_s)
        print(w.name, {k: round(v, 3) for k, v in results[w.name].items()}, flush=True)
    host["load_average_end"] = machine()["load_average"]
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "products.md", report(results, host))
    write_text(args.out / "products.json", json.dumps({"host": host, "results": results}, indent=1))


if __name__ == "__main__":
    main()
