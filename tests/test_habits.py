"""The codebase's habits, checked with every test run: ruff (its lint rule selection and its
formatter, pyproject.toml), mypy on bpgpu/ (pyproject.toml), and clang-format on kernels/ and
the tests' CUDA C (kernels/.clang-format). Each is a development dependency of the test extra; a
missing one is skipped with the reason."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON_SOURCES = ["bpgpu", "tests", "bench", "examples"]


def run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout[-6000:]}{done.stderr[-2000:]}"


def module(name: str) -> None:
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed (it comes with the test extra)")


def test_ruff_lint():
    module("ruff")
    run([sys.executable, "-m", "ruff", "check", "--no-cache", *PYTHON_SOURCES])


def test_ruff_format():
    module("ruff")
    run([sys.executable, "-m", "ruff", "format", "--check", "--no-cache", *PYTHON_SOURCES])


def test_mypy():
    module("mypy")
    run([sys.executable, "-m", "mypy"])  # files and settings: pyproject.toml


def test_clang_format():
    exe = shutil.which("clang-format") or str(Path(sys.executable).parent / "clang-format")
    if not Path(exe).is_file():
        pytest.skip("clang-format is not installed (it comes with the test extra)")
    kernels = ROOT / "kernels"
    found = [*kernels.rglob("*"), *(ROOT / "tests").glob("*.cu")]  # and the tests' kernels
    sources = sorted(str(p) for p in found if p.suffix in {".cu", ".cuh", ".h", ".cpp"})
    run([exe, "--dry-run", "--Werror", f"--style=file:{kernels / '.clang-format'}", *sources])
