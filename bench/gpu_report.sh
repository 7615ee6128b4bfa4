#!/usr/bin/env bash
# The GPU report: run from the repository root on a machine with a CUDA GPU.
#
#   OUT=/tmp/report bash bench/gpu_report.sh [build] [tests] [sanitize] [bench]   # none: all
#
# Always installs bpgpu (editable, no dependencies) and records the machine: nvidia-smi, nvcc,
# `bpgpu info`, versions, commit and the kernel-source hashes (kernels.json). Then the stages:
#   build     the CMake fatbins (when cmake and nvcc are there), with ptxas register/spill lines
#   tests     pytest -m gpu, then the rest of the suite (-m "not gpu"), junit XML and logs
#   sanitize  compute-sanitizer memcheck and racecheck on a short training run of each GPU backend
#   bench     python -m bpgpu bench --out $OUT/gpu $BENCH_ARGS
# Each step's output is $OUT/<step>.log and its exit status a line of $OUT/status.tsv; a failed
# step does not stop the others. $OUT/summary.md sums up. Stages fit separate calls where one
# command may only run ten minutes. Commit $OUT/gpu as bench/results/gpu: CI then says whether
# it was measured on the current kernel sources (cuda_source.gpu_report_status).
set -uo pipefail

OUT=${OUT:-$PWD/gpu-report}
PY=${PYTHON:-python}
export PATH="$PATH:/usr/local/cuda/bin" # nvcc and compute-sanitizer where the toolkit puts them
STAGES=${*:-build tests sanitize bench}
mkdir -p "$OUT"
: >"$OUT/status.tsv"

# step NAME CMD...: run CMD with its output in $OUT/NAME.log and its status in status.tsv
step() {
  local name=$1
  shift
  echo "== $name"
  { echo "\$ $*" && "$@"; } >"$OUT/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\n' "$name" "$rc" | tee -a "$OUT/status.tsv"
}
have() { command -v "$1" >/dev/null 2>&1; }
wants() { [[ " $STAGES " == *" $1 "* ]]; }

step install "$PY" -m pip install --no-deps --no-build-isolation -e .
step nvidia-smi nvidia-smi -q
have nvcc && step nvcc nvcc --version
step info "$PY" -m bpgpu info
"$PY" -c '
import json, subprocess
from bpgpu.backends import cuda_source as cs
def git(*args):
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True).stdout.strip()
    except OSError:  # no git: a copy of the tree
        return ""
facts = {
    "commit": git("rev-parse", "HEAD"),
    "dirty": bool(git("status", "--porcelain", "--", "bpgpu", "kernels")),
    "sources_sha256": cs.sources_hash(),  # sources + tunables, as the cupy backend reports it
    "files_sha256": cs.kernel_file_hashes(),  # what CI compares with the benchmark report
}
print(json.dumps(facts, indent=1))' >"$OUT/kernels.json"

if wants build; then
  if have cmake && have nvcc; then
    step cmake-configure cmake -S . -B build -DBPGPU_PTXAS_VERBOSE=ON
    step cmake-build cmake --build build -j
  else
    echo "no cmake or nvcc: the cupy backend compiles with NVRTC" | tee "$OUT/cmake-build.log"
  fi
  ls -l build/fatbin >"$OUT/fatbins.log" 2>&1
fi

if wants tests; then
  export BPGPU_CUDA_DEBUG=1 # synchronize after every launch: a fault names its kernel
  step pytest-gpu "$PY" -m pytest -m gpu -q --junitxml="$OUT/pytest-gpu.xml"
  step pytest-rest "$PY" -m pytest -m "not gpu" -q --junitxml="$OUT/pytest-rest.xml"
  unset BPGPU_CUDA_DEBUG
fi

if wants sanitize; then
  cat >"$OUT/sanitize_train.py" <<'EOF'
"""Two epochs on every GPU backend: the fused and the separate last layer, the split-batch
weight update (batch 1024), a captured step graph and a last partial batch (52 rows)."""
import numpy as np

import bpgpu

backends = [b for b in bpgpu.available_backends() if b != "numpy"]
if not backends:
    raise SystemExit("no GPU backend available")
rng = np.random.default_rng(0)
X = rng.standard_normal((2100, 33))
for backend in backends:
    for classes in (10, 70):
        y = rng.integers(0, classes, len(X))
        net = bpgpu.MLP([33, 65, classes], activation="relu", backend=backend, seed=0)
        history = net.fit(X, y, epochs=2, batch_size=1024, optimizer=bpgpu.Adam(lr=1e-3))
        print(backend, classes, history.history["loss"])
EOF
  if have compute-sanitizer; then
    for tool in memcheck racecheck; do
      step "sanitizer-$tool" compute-sanitizer --tool "$tool" --error-exitcode 1 \
        "$PY" "$OUT/sanitize_train.py"
    done
  else
    echo "no compute-sanitizer" | tee "$OUT/sanitizer.log"
  fi
fi

if wants bench; then
  # shellcheck disable=SC2086 # BENCH_ARGS is a list of options
  step bench "$PY" -m bpgpu bench --out "$OUT/gpu" ${BENCH_ARGS:-}
fi

"$PY" - "$OUT" >"$OUT/summary.md" <<'EOF'
import json, sys
from pathlib import Path
from xml.etree import ElementTree

from bpgpu.backends import cuda_source as cs

out = Path(sys.argv[1])
facts = json.loads((out / "kernels.json").read_text())
smi = (out / "nvidia-smi.log").read_text()
gpu = smi.partition("Product Name")[2].partition(":")[2].partition("\n")[0].strip()
print(f"# GPU report\n\nGPU: {gpu or 'none found'}; commit {facts['commit']}"
      f"{' (dirty)' if facts['dirty'] else ''}; kernel sources sha256 {facts['sources_sha256']}.\n")
print("| step | exit status |\n|---|---|")
for line in (out / "status.tsv").read_text().splitlines():
    print("| " + " | ".join(line.split("\t")) + " |")
for xml in sorted(out.glob("pytest-*.xml")):
    suite = ElementTree.parse(xml).getroot().find("testsuite")
    counts = ", ".join(f"{k} {suite.get(k)}" for k in ("tests", "failures", "errors", "skipped"))
    print(f"\n{xml.stem}: {counts}")
print("\n" + cs.gpu_report_status(out / "gpu" / "report.json"))
EOF
cat "$OUT/summary.md"
