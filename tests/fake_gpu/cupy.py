"""``import cupy`` in a process whose path starts with this folder gives tests/fake_cupy.py, its
kernels run by the CPU emulation of the CUDA C: the first-contact script (bench/gpu_report.sh)
sets it for its Python GPU stages when BPGPU_FAKE_GPU=1, so it can be run end to end here.
Nothing it measures says anything about a GPU."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fake_cupy

fake_cupy.install_emulation()
sys.modules[__name__] = fake_cupy
