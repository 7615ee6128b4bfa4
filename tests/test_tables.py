"""One table per concept: the CUDA C enums and X-macro tables, the numba kernels' codes and
the kernel entry points all follow the Python tables (bpgpu/functions.py, bpgpu/optimizers.py,
bpgpu/backends/cuda_launch.py), so adding an activation or an optimizer cannot leave one
backend behind unnoticed."""

from __future__ import annotations

import re

import pytest

from bpgpu.backends.cuda_launch import ENTRY_POINTS, OPTIMIZER_KERNELS
from bpgpu.backends.cuda_source import families, kernel_dir
from bpgpu.functions import ACTIVATIONS, COMBINATIONS, LOSSES, OUTPUTS
from bpgpu.optimizers import KERNEL_SCALARS, OPTIMIZERS


def enum(source: str, name: str) -> dict[str, int]:
    """The members of ``enum name { A = 0, B = 1 };`` in a CUDA C file."""
    found = re.search(rf"enum {name} \{{([^}}]*)\}}", source)
    assert found, f"no enum {name}"
    members = {}
    for item in found[1].split(","):
        key, value = (part.strip() for part in item.split("="))
        members[key] = int(value)
    return members


def xmacro(source: str, name: str) -> list[tuple[str, ...]]:
    """The rows X(a, b, ...) of ``#define name(X) X(...) X(...)``, backslash lines joined."""
    text = source.replace("\\\n", " ")
    found = re.search(rf"#define {name}\(X\)(.*)", text)
    assert found, f"no X-macro table {name}"
    return [
        tuple(p.strip() for p in row.split(",")) for row in re.findall(r"X\(([^)]*)\)", found[1])
    ]


def read(name: str) -> str:
    return (kernel_dir() / name).read_text()


def test_codes_count_from_zero_in_table_order():
    for table in (ACTIVATIONS, OUTPUTS, LOSSES):
        assert [entry.code for entry in table.values()] == list(range(len(table)))
    assert sorted(OPTIMIZER_KERNELS.values()) == list(range(len(OPTIMIZER_KERNELS)))


def test_cuda_activations_follow_the_table():
    source = read("activations.cuh")
    codes = enum(source, "Act")
    rows = xmacro(source, "BPGPU_ACTIVATIONS")
    assert [name for name, _ in rows] == list(ACTIVATIONS)
    assert {name: codes[member] for name, member in rows} == {
        a.name: a.code for a in ACTIVATIONS.values()
    }


def test_cuda_outputs_and_losses_follow_the_tables():
    source = read("output.cu")
    out_codes, loss_codes = enum(source, "Out"), enum(source, "Loss")
    outputs = xmacro(source, "BPGPU_OUTPUTS")
    assert {name: out_codes[member] for name, member in outputs} == {
        o.name: o.code for o in OUTPUTS.values()
    }
    pairs = xmacro(source, "BPGPU_OUTPUT_LOSSES")
    assert {(o, lo) for o, _, lo, _ in pairs} == set(COMBINATIONS)
    for output, out_member, loss, loss_member in pairs:
        assert out_codes[out_member] == OUTPUTS[output].code
        assert loss_codes[loss_member] == LOSSES[loss].code


def test_cuda_optimizers_follow_the_classes():
    source = read("optimizers.cuh")
    codes = enum(source, "Opt")
    rows = xmacro(source, "BPGPU_OPTIMIZERS")
    assert {name: codes[member] for name, member in rows} == OPTIMIZER_KERNELS
    assert re.search(rf"#define OPT_SCALARS {KERNEL_SCALARS}\b", source)
    for cls in OPTIMIZERS.values():
        assert OPTIMIZER_KERNELS[cls.kind] == cls.code
        for t in (1, 2, 1000):
            assert len(cls().kernel_scalars(t)) == KERNEL_SCALARS


def test_numba_rules_use_the_tables_codes():
    kernels = pytest.importorskip("bpgpu.backends.numba_rules", reason="numba is not installed")
    assert tuple(ACTIVATIONS[a].code for a in ("sigmoid", "relu", "tanh")) == (
        kernels.SIGMOID,
        kernels.RELU,
        kernels.TANH,
    )
    assert (
        OUTPUTS["softmax"].code,
        OUTPUTS["sigmoid"].code,
    ) == (kernels.SOFTMAX_OUT, kernels.SIGMOID_OUT)
    assert (
        LOSSES["cross_entropy"].code,
        LOSSES["mse"].code,
    ) == (kernels.CROSS_ENTROPY, kernels.MSE)
    assert tuple(OPTIMIZERS[k].code for k in ("sgd", "rmsprop", "adam")) == (
        kernels.SGD_CODE,
        kernels.RMSPROP_CODE,
        kernels.ADAM_CODE,
    )


def test_the_families_are_the_sources():
    """The entry-point table names exactly the kernels/*.cu files (CMake and the CPU emulation
    glob those; tests/test_cuda_compile.py and tests/test_cuda_emulated.py check what they
    build against the table)."""
    assert sorted(ENTRY_POINTS) == families()
