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
import json
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
from bpgpu.benchmark.timing import interleaved, warm_up
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


def products_system(run: Callable[[], None]) -> Prepared:
    """Products alone as a system ``interleaved`` can time (each call waits for its results)."""
    return Prepared(step=lambda i: run(), sync=lambda: None, state=list, device="cpu")


def systems(w: Workload) -> dict[str, Prepared]:
    """What is timed for one workload: whole steps, and the products alone."""
    opt = make_optimizer("rmsprop")
    data = make_data(w, 8, 0)
    rng = np.random.default_rng(0)
    found = {
        "numba-cpu step": prepare_bpgpu("numba-cpu", w, opt, data, 0),
        "numpy products": products_system(
            eager_products(w, rng, np.asarray, np.empty_like, np.matmul)
        ),
    }
    if torch_status() is None:
        import torch

        found["torch-eager step"] = prepare_torch(w, opt, data, 0, "cpu", False)
        found["torch products"] = products_system(
            eager_products(w, rng, torch.from_numpy, torch.empty_like, torch.matmul)
        )
    if jax_status() is None:
        found["jax-jit step"] = prepare_jax(w, opt, data, 0)
        found["jax products"] = products_system(jax_products(w, rng))
    return found


def report(results: dict[str, dict[str, dict]], host: dict) -> str:
    """The markdown table: median ms [IQR] of each system, and NumPy's products' share."""
    names = list(dict.fromkeys(n for r in results.values() for n in r))
    lines = [
        "# A CPU step and its matrix products",
        "",
        f"Host: {host['cpu']}, {host['cores']} cores; load average at start "
        f"{host['load_average']}, at the end {host['load_average_end']}; commit "
        f"{host['git_commit']}; float32, RMSprop; median ms [IQR] over interleaved blocks, the "
        "order rotating each round (python bench/step_products.py).",
        "",
        "| workload | " + " | ".join(names) + " | NumPy products / numba-cpu step |",
        "|---" * (len(names) + 2) + "|",
    ]
    for workload, r in results.items():
        share = r["numpy products"]["median_ms"] / r["numba-cpu step"]["median_ms"]
        cells = " | ".join(
            f"{r[n]['median_ms']:.3g} [{r[n]['iqr_ms']:.2g}]" if n in r else "-" for n in names
        )
        lines.append(f"| {workload} | {cells} | {share:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("workloads", nargs="*", type=parse_workload)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--block-s", type=float, default=0.1, help="seconds a timed block lasts")
    parser.add_argument("--budget-s", type=float, default=30.0, help="per workload")
    parser.add_argument("--settle-s", type=float, default=0.2)
    args = parser.parse_args()
    host = machine()
    results = {}
    for w in args.workloads or DEFAULT:
        found = systems(w)
        for prepared in found.values():
            warm_up(prepared, 3)
        results[w.name] = interleaved(
            found, args.repeats, args.block_s, args.budget_s, args.settle_s
        )
        print(w.name, {k: round(v["median_ms"], 3) for k, v in results[w.name].items()})
    host["load_average_end"] = machine()["load_average"]
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "products.md", report(results, host))
    write_text(args.out / "products.json", json.dumps({"host": host, "results": results}, indent=1))


if __name__ == "__main__":
    main()
