"""The first-contact script's first stage (bench/gpu_report.sh): what this machine has, before
anything is installed. Standard library only: the machine may have nothing but python3.

    python3 bench/first_contact/preflight.py OUT

Writes OUT/preflight.json (each tool: found or not, and what was seen), OUT/preflight.env (the
shell variables the script's later stages test: HAVE_CUPY=1, CUDA_ARCH=90, CMAKE=/path, ...) and
OUT/machine.json (GPU, versions, commit, the sha256 of each kernel source). Exits 0: what is
missing is reported, and the stages that need it are skipped with the reason.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CUDA_BIN = Path("/usr/local/cuda/bin")


def run(cmd: list[str], timeout: float = 60) -> tuple[int, str]:
    """(exit status, stdout + stderr) of ``cmd``; 127 when it cannot be started."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return done.returncode, (done.stdout + done.stderr).strip()


def python(code: str, timeout: float = 120) -> tuple[bool, str]:
    """Whether ``code`` runs in this Python without error, and its last line of output."""
    rc, out = run([sys.executable, "-c", code], timeout)
    lines = out.splitlines()
    return rc == 0, (lines[-1][-300:] if lines else "")


def tools(name: str) -> list[str]:
    """The executables called ``name`` on PATH, in the CUDA toolkit's bin/ and beside this
    Python, in that order."""
    found = [shutil.which(name), CUDA_BIN / name, Path(sys.executable).parent / name]
    return list(dict.fromkeys(str(c) for c in found if c and Path(c).is_file()))


def tool(name: str) -> str | None:
    return next(iter(tools(name)), None)


def cmake_version(cmake: str) -> tuple[int, ...]:
    found = re.search(r"(\d+)\.(\d+)", run([cmake, "--version"])[1])
    return (int(found[1]), int(found[2])) if found else ()


def version_of(cmd: list[str], pattern: str) -> str:
    rc, out = run(cmd)
    found = re.search(pattern, out)
    return found[0] if found else out.splitlines()[-1] if out else f"exit {rc}"


EDITABLE_BUILD = """
import setuptools
try:
    from setuptools.command.bdist_wheel import bdist_wheel
    print("setuptools", setuptools.__version__, "builds wheels")
except ImportError:
    import wheel
    print("setuptools", setuptools.__version__, "with wheel", wheel.__version__)
"""

NUMBA_COMPILES = """
from numba import cuda, float32
def touch(a):
    i = cuda.grid(1)
    if i < a.size:
        a[i] = 0.0
cuda.compile_ptx(touch, (float32[:],), cc=(8, 0))
print("NVVM compiles; GPU seen:", cuda.is_available())
"""

CUPY_DEVICE = """
import cupy
n = cupy.cuda.runtime.getDeviceCount()
props = cupy.cuda.runtime.getDeviceProperties(0)
name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
cc = cupy.cuda.Device(0).compute_capability
print(f"{cupy.__version__}, {n} device(s), {name}, sm_{cc}, CUDA runtime",
      cupy.cuda.runtime.runtimeGetVersion())
"""


def main(out: Path) -> int:
    found: dict[str, dict] = {}

    def note(name: str, ok: bool, detail: str) -> None:
        found[name] = {"ok": ok, "detail": detail}

    note("python3", True, sys.version.split()[0] + f" ({sys.executable})")
    for module in ("pip", "setuptools", "pytest", "numpy", "torch"):
        ok, detail = python(f"import {module}; print({module}.__version__)")
        note(module, ok, detail)
    # an editable install without build isolation builds with what is installed: setuptools,
    # and before 70.1 also wheel (bdist_wheel)
    ok, detail = python(EDITABLE_BUILD)
    note("editable build (setuptools >= 70.1, or wheel)", ok, detail)
    if found["torch"]["ok"]:
        ok, detail = python("import torch; print('CUDA' if torch.cuda.is_available() else 'CPU')")
        found["torch"]["detail"] += f", {detail}"
    note("cupy", *python(CUPY_DEVICE))
    note("numba-cuda compiler", *python(NUMBA_COMPILES))
    smi = tool("nvidia-smi")
    cap = run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"])[1] if smi else ""
    arch = cap.splitlines()[0].replace(".", "").strip() if re.match(r"\d+\.\d", cap) else ""
    gpu = run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    note("nvidia-smi", bool(smi and arch), gpu[1].splitlines()[0] if smi else "not found")
    nvcc, sanitizer = tool("nvcc"), tool("compute-sanitizer")
    nvcc_version = version_of([nvcc, "--version"], r"release [\d.]+") if nvcc else "not found"
    note("nvcc", bool(nvcc), nvcc_version)
    cmakes = {c: cmake_version(c) for c in tools("cmake")}
    cmake = next((c for c, v in cmakes.items() if v >= (3, 27)), None)
    seen = ", ".join(f"{c} {'.'.join(map(str, v))}" for c, v in cmakes.items()) or "not found"
    note("cmake >= 3.27", bool(cmake), seen)
    note("compute-sanitizer", bool(sanitizer), sanitizer or "not found")
    git = tool("git")

    env = {
        "HAVE_PIP": found["pip"]["ok"],
        "HAVE_BUILD": found["editable build (setuptools >= 70.1, or wheel)"]["ok"],
        "HAVE_PYTEST": found["pytest"]["ok"],
        "HAVE_CUPY": found["cupy"]["ok"],
        "HAVE_NUMBA": found["numba-cuda compiler"]["ok"],
        "HAVE_TORCH": found["torch"]["ok"],
        "NVCC": nvcc if nvcc else "",
        "CMAKE": cmake or "",
        "SANITIZER": sanitizer or "",
        "CUDA_ARCH": arch or "90",
    }
    lines = [f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in env.items()]
    (out / "preflight.env").write_text("\n".join(lines) + "\n")
    (out / "preflight.json").write_text(json.dumps(found, indent=1) + "\n")
    kernels = sorted([*(ROOT / "kernels").glob("*.cu"), *(ROOT / "kernels").glob("*.cuh")])
    machine = {
        "gpu": found["nvidia-smi"]["detail"],
        "arch": f"sm_{arch}" if arch else "unknown",
        "nvidia_smi": run([smi, "-q"])[1][:20000] if smi else "not found",
        "commit": run([git, "-C", str(ROOT), "rev-parse", "HEAD"])[1] if git else "no git",
        "dirty": bool(git and run([git, "-C", str(ROOT), "status", "--porcelain"])[1]),
        "kernels_sha256": {
            f"kernels/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest() for p in kernels
        },
    }
    (out / "machine.json").write_text(json.dumps(machine, indent=1) + "\n")
    for name, what in found.items():
        print(f"{'ok     ' if what['ok'] else 'MISSING'}  {name}: {what['detail']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
