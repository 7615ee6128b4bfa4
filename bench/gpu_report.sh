#!/usr/bin/env bash
# The first contact with a GPU: one call that fits in 8 minutes on a fresh machine which
# reaches no package registry and may have only python3. From the repository root:
#
#   OUT=/tmp/gpu bash bench/gpu_report.sh
#
# Stages, in the order of what they are worth; each runs under its own `timeout` (never past
# the run's deadline, BUDGET_S = 470 s), a failed or cut-off stage does not stop the next, and
# $OUT/SUMMARY.md is rewritten after every stage, so a run cut off still reports:
#   preflight     python3, pip, setuptools, pytest, numpy, cupy (and its GPU), numba-cuda's
#                 compiler (NVVM), nvidia-smi, nvcc, cmake >= 3.27, compute-sanitizer, torch:
#                 what is missing is said, and the stages that need it are skipped with why
#   install       pip install --no-deps --no-build-isolation -e .
#   build         the CMake fatbins for this GPU's architecture only, ptxas spill report
#   tests         pytest -m gpu (cupy and numba), BPGPU_CUDA_DEBUG=1, the fatbins when built
#   tests-nvrtc   pytest -m gpu -k cupy with NVRTC only (BPGPU_CUDA_LOAD=nvrtc), when the
#                 first run had the fatbins
#   tests-nodebug pytest -m gpu -k cupy without BPGPU_CUDA_DEBUG (asynchronous launches)
#   microbench    60 s: us per kernel of a 784-512-10 b256 step, TFLOP/s at 4096^3, that step
#                 with and without the CUDA graph and PyTorch eager beside it
#   sanitize-*    compute-sanitizer memcheck (cupy, numba), racecheck, synccheck, initcheck
#                 (cupy) on a short fit with CuPy's memory pools off
#   bench         bpgpu bench, trimmed: cupy, numba and torch eager, no CPU rows
#
# $OUT then has the layout of bench/results/gpu/ (the benchmark's report.json, report.md and
# plots; SUMMARY.md, status.tsv, preflight.json, machine.json, microbench.*, logs/), so it can
# be committed there as it is; CI then says whether it was measured on the current kernel
# sources (cuda_source.gpu_report_status). The fatbins go to $BUILD (default build/).
#
# BPGPU_FAKE_GPU=1 runs the whole script on a machine without a GPU, to test the script itself
# (tests/test_first_contact.py): tests/fake_gpu/ puts stand-ins for nvidia-smi and
# compute-sanitizer on PATH (the latter runs the CPU emulation's check of the same name) and,
# for the Python stages that need CuPy, tests/fake_cupy.py over the CPU emulation; the tests
# stages find no GPU and skip; the shapes shrink. SUMMARY.md then says FAKE at its top.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2
OUT=${OUT:-$ROOT/gpu-report}
mkdir -p "$OUT/logs" && OUT=$(cd "$OUT" && pwd)
BUILD=${BUILD:-$ROOT/build}
PY=${PYTHON:-python3}
FAKE=${BPGPU_FAKE_GPU:-0}
DEADLINE=$((SECONDS + ${BUDGET_S:-470}))
FIRST=$ROOT/bench/first_contact
STATUS=$OUT/status.tsv
export PATH="$PATH:/usr/local/cuda/bin" # nvcc and compute-sanitizer where the toolkit puts them
export BPGPU_FAKE_GPU=$FAKE
: >"$STATUS"

if ! command -v "$PY" >/dev/null 2>&1; then
  printf '# bpgpu first contact\n\nNo %s: nothing can run (set PYTHON).\n' "$PY" | tee "$OUT/SUMMARY.md"
  exit 1
fi

GPU_PYTHONPATH=${PYTHONPATH:-} # what the Python stages that need CuPy see
SMALL=""
if [[ $FAKE == 1 ]]; then
  export PATH="$ROOT/tests/fake_gpu/bin:$PATH"
  GPU_PYTHONPATH="$ROOT/tests/fake_gpu${PYTHONPATH:+:$PYTHONPATH}"
  SMALL=1
fi

summary() {
  "$PY" "$FIRST/summary.py" "$OUT" >"$OUT/SUMMARY.md.new" 2>>"$OUT/logs/summary.log" &&
    mv "$OUT/SUMMARY.md.new" "$OUT/SUMMARY.md"
}

# record NAME STATUS SECONDS NOTE: a line of status.tsv, then the summary again
record() {
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" >>"$STATUS"
  summary
}

skip() { echo "== $1: skipped ($2)" && record "$1" skipped 0 "$2"; }

# stage NAME CAP CMD...: CMD under timeout, at most CAP seconds and never past the deadline,
# its output in logs/NAME.log
stage() {
  local name=$1 cap=$2
  shift 2
  local left=$((DEADLINE - SECONDS))
  if ((left < 10)); then
    skip "$name" "out of time"
    return
  fi
  local limit=$((cap < left ? cap : left)) start=$SECONDS
  echo "== $name (at most ${limit}s)"
  { echo "\$ $*" && timeout --kill-after=10 "$limit" "$@"; } >"$OUT/logs/$name.log" 2>&1
  local rc=$? note=""
  ((rc == 124 || rc == 137)) && note="timed out after ${limit}s"
  echo "   exit $rc after $((SECONDS - start))s $note"
  record "$name" "$rc" $((SECONDS - start)) "$note"
}

# ---- preflight: what is here ---------------------------------------------------------------
stage preflight 90 env PYTHONPATH="$GPU_PYTHONPATH" "$PY" "$FIRST/preflight.py" "$OUT"
HAVE_PIP=0 HAVE_BUILD=0 HAVE_PYTEST=0 HAVE_CUPY=0 HAVE_NUMBA=0 HAVE_TORCH=0 NVCC="" CMAKE=""
SANITIZER=""
CUDA_ARCH=90
# shellcheck disable=SC1091 # written by the preflight stage
[[ -f $OUT/preflight.env ]] && source "$OUT/preflight.env"
cat "$OUT/logs/preflight.log"

# ---- install ----------------------------------------------------------------------------------
if [[ $HAVE_PIP == 1 && $HAVE_BUILD == 1 ]]; then
  stage install 120 "$PY" -m pip install --no-deps --no-build-isolation -e .
else
  skip install "no pip, or no setuptools that builds an editable install offline"
fi
if ! (cd / && "$PY" -c "import bpgpu") >/dev/null 2>&1; then
  # not installed: every later stage imports bpgpu from this checkout
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  GPU_PYTHONPATH="$GPU_PYTHONPATH${GPU_PYTHONPATH:+:}$ROOT"
  record install-fallback 0 0 "bpgpu is not installed: the stages import it from $ROOT"
fi

# ---- the fatbins ----------------------------------------------------------------------------
FATBINS=$BUILD/fatbin
if [[ -n $CMAKE && -n $NVCC ]]; then
  stage build 150 bash -c "'$CMAKE' -S . -B '$BUILD' -DCMAKE_CUDA_COMPILER='$NVCC' \
    -DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCH -DBPGPU_PTXAS_VERBOSE=ON && '$CMAKE' --build '$BUILD' -j"
else
  skip build "no cmake >= 3.27 or no nvcc: the cupy backend compiles with NVRTC"
fi
LOAD=nvrtc
[[ -f $FATBINS/manifest.json ]] && LOAD=fatbin

# ---- the GPU tests: fatbins (or NVRTC), NVRTC only, no debug sync ----------------------------
pytest_stage() { # NAME CAP ENV... -- PYTEST ARGS...
  local name=$1 cap=$2
  shift 2
  local envs=()
  while [[ $1 != -- ]]; do envs+=("$1") && shift; done
  shift
  stage "$name" "$cap" env "${envs[@]}" BPGPU_FATBIN_DIR="$FATBINS" "$PY" -m pytest -m gpu -q \
    -p no:cacheprovider --junitxml="$OUT/logs/pytest-$name.xml" "$@"
}
if [[ $HAVE_PYTEST == 1 ]]; then
  pytest_stage tests 150 BPGPU_CUDA_DEBUG=1 BPGPU_CUDA_LOAD=$LOAD --
  if [[ $LOAD == fatbin ]]; then
    pytest_stage tests-nvrtc 90 BPGPU_CUDA_DEBUG=1 BPGPU_CUDA_LOAD=nvrtc -- -k cupy
  else
    skip tests-nvrtc "no fatbins: the tests stage ran with NVRTC"
  fi
  pytest_stage tests-nodebug 75 -u BPGPU_CUDA_DEBUG BPGPU_CUDA_LOAD=$LOAD -- -k cupy
else
  for name in tests tests-nvrtc tests-nodebug; do skip "$name" "no pytest for $PY"; done
fi

# ---- the micro-benchmark ----------------------------------------------------------------------
if [[ $HAVE_CUPY == 1 ]]; then
  stage microbench 100 env PYTHONPATH="$GPU_PYTHONPATH" BPGPU_CUDA_LOAD=$LOAD \
    BPGPU_FATBIN_DIR="$FATBINS" "$PY" "$FIRST/microbench.py" --out "$OUT" --seconds 60 ${SMALL:+--small}
else
  skip microbench "no cupy with a GPU"
fi

# ---- compute-sanitizer ------------------------------------------------------------------------
for tool in memcheck racecheck synccheck initcheck; do
  if [[ -z $SANITIZER || $HAVE_CUPY != 1 ]]; then
    skip "sanitize-$tool" "no compute-sanitizer, or no cupy with a GPU"
    continue
  fi
  backends=cupy
  [[ $tool == memcheck && $HAVE_NUMBA == 1 && $FAKE != 1 ]] && backends=cupy,numba
  stage "sanitize-$tool" 60 env PYTHONPATH="$GPU_PYTHONPATH" BPGPU_CUDA_LOAD=$LOAD \
    BPGPU_FATBIN_DIR="$FATBINS" "$SANITIZER" --tool "$tool" --error-exitcode 1 --print-limit 20 \
    "$PY" "$FIRST/sanitize_fit.py" --backends "$backends"
done

# ---- the benchmark, trimmed -------------------------------------------------------------------
if [[ $HAVE_CUPY == 1 || $HAVE_NUMBA == 1 ]]; then
  if [[ $FAKE == 1 ]]; then
    trim=(--quick --workload 64-32-10:16 --fit 0 --no-plots)
  else
    trim=(--budget 6 --repeats 9 --fit 1 --fit-repeats 2)
  fi
  stage bench 240 env PYTHONPATH="$GPU_PYTHONPATH" BPGPU_CUDA_LOAD=$LOAD BPGPU_FATBIN_DIR="$FATBINS" \
    "$PY" -m bpgpu bench --systems cupy,numba,torch-eager --out "$OUT" "${trim[@]}"
else
  skip bench "no GPU backend"
fi

echo
cat "$OUT/SUMMARY.md"
