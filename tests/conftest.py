"""Shared fixtures: seeded random generators and the ``gpu`` marker's skip."""

from __future__ import annotations

import numpy as np
import pytest

from bpgpu.backends import available_backends, get_backend, unavailable_reasons

GPU_BACKENDS = ("cupy", "numba")


def _gpu_skip_reason() -> str | None:
    """None when a GPU backend can run here, else why none can."""
    running = [
        n for n in GPU_BACKENDS if n in available_backends() and not get_backend(n).simulated
    ]
    if running:
        return None
    reasons = unavailable_reasons()
    why = "; ".join(
        reasons.get(name, f"backend {name!r} is not available") for name in GPU_BACKENDS
    )
    return f"needs a CUDA GPU: {why}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    reason = _gpu_skip_reason()
    if reason is None:
        return
    for item in gpu_items:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A generator seeded from the test's name: fresh inputs per test, reproducible runs."""
    seed = sum(request.node.nodeid.encode()) * 7919 % (2**32)
    return np.random.default_rng(seed)
