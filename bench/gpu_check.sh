#!/usr/bin/env bash
# The whole GPU check in one call, for a machine with an sm_90 GPU (H100, H200): build the
# extension for sm_90 only, run the CUDA tests (one process per sweep path, so a hang costs
# one path's time limit), run the CUDA kernel benchmark against cuDNN and the generation
# benchmark. Needs no network.
# Meant to finish in well under 8 minutes (DEADLINE). It builds in place (`pip install -e .`),
# replacing the checkout's own build of the extension: run it in a clone of its own.
#
# Needs: torch with CUDA, the CUDA toolkit (nvcc; CUDA_HOME if it is not found), ninja,
# numpy, pytest and expecttest (for opcheck) in the interpreter PYTHON names.
#   PYTHON      that interpreter (default python3)
#   WHEELS=DIR  a directory of wheels (e.g. from `pip download --no-deps -d DIR expecttest`),
#               installed first when expecttest is missing: for a machine without network
#   OUT         where the log goes, and the benchmarks' results in OUT/results/NAME.json, ready
#               to be copied into bench/results/ (default bench/out/gpu-check)
#   QUICK=1     a smaller benchmark grid
#   PREBUILT=1  keep an in-place build already there (charrnn_ext/_C*.so, built for sm_90 against
#               this torch) if it imports with CUDA; otherwise build as usual
#   STEPS       which steps after the build to run (default: all of
#               tests sanitizer bench profile sample train)
#   TRAIN_SECONDS  seconds of `charrnn train --device cuda` per cell, rnn against rnn-torch
#               (default 60; 0 skips it); needs tinyshakespeare.txt in CHARRNN_DATA_DIR
#   DEADLINE    seconds for the whole script (default 420); each step gets at most what is left
#   MAX_JOBS    parallel compile jobs (default: every core)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out/gpu-check}
mkdir -p "$OUT/results"
exec > >(tee "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0
DEADLINE=${DEADLINE:-420}
step() { echo; echo "== $* ($(date +%T), ${SECONDS}s in)"; }
want() { [[ " ${STEPS:-tests sanitizer bench profile sample train} " == *" $1 "* ]]; }
left() { local n=$((DEADLINE - SECONDS)); (( n < $1 )) && echo $((n > 10 ? n : 10)) || echo "$1"; }
# Runs a command for at most $1 seconds, fewer if the deadline is nearer; SIGKILL 10 s after the
# SIGTERM, should a process not die while it waits on the GPU. Exit 124 or 137 when stopped.
limited() { local seconds; seconds=$(left "$1"); shift; timeout -k 10 "$seconds" "$@"; }

if [ -n "${WHEELS:-}" ] && ! $PY -c "import expecttest" 2>/dev/null; then
  # Into a folder of its own on PYTHONPATH: the interpreter's site-packages may be read-only.
  site=$(mktemp -d)
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$WHEELS"/*.whl \
    && export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi

step "device"
$PY -c "import numpy, pytest, ninja, expecttest" \
  || echo "WARNING: numpy, pytest, ninja or expecttest missing: install them, or give their wheels with WHEELS=DIR"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv || true
$PY -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuDNN',
        torch.backends.cudnn.version(), torch.cuda.get_device_name(), torch.cuda.get_device_properties(0))"

step "build for sm_90 only"
export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-$(nproc)} CHARRNN_CUDA=1
if [ -n "${PREBUILT:-}" ] && $PY -c "import charrnn_ext, sys; sys.exit(not charrnn_ext.build_info()['cuda'])"; then
  echo "using the in-place build already there"
else
  rm -f charrnn_ext/_C*.so
  # In place: nothing to download and no install metadata needed; pip first, as users build.
  limited 200 $PY -m pip install -q --no-deps --no-build-isolation -e . \
    || limited 120 $PY setup.py -q build_ext --inplace || { echo "BUILD FAILED"; exit 1; }
fi
$PY -c "import charrnn_ext; print(charrnn_ext.build_info())" || { echo "IMPORT FAILED"; exit 1; }
$PY - <<'EOF'
import charrnn_ext
for H in (128, 256, 512, 1024):
    for B in (1, 32, 128):
        plans = {}
        for path in ("auto", "block", "cluster", "grid"):
            try:
                p = charrnn_ext._C.cuda_sweep_plan(B, H, 4, path)
                plans[path] = "{path} {units}u x {slices} slices, {rows} rows x {tiles} tiles, {threads} thr, {smem_bytes} B".format(**p)
            except RuntimeError as e:
                plans[path] = "-"
        print(f"H={H} B={B}: " + " | ".join(f"{k}: {v}" for k, v in plans.items()))
EOF

hung=() skip_paths=()
if want tests; then
step "CUDA tests, each sweep path in its own process"
# A sweep that never finishes (a barrier nobody reaches) takes its process with it. One pytest
# per path, with a time limit, so a hang costs that path's limit, not the run; it is named,
# and the benchmark leaves it out (auto too, at the sizes where auto picks it).
paths="block cluster grid steps auto"
for path in $paths; do
  limited 60 $PY -m pytest -q --maxfail=10 -p no:cacheprovider tests/test_cuda_ops.py -k "$path" \
    --junitxml="$OUT/junit-cuda-ops-$path.xml"
  rc=$?
  (( rc == 124 || rc == 137 )) && { echo "HUNG: path $path, killed"; hung+=("$path"); }
  (( rc != 0 )) && status=1
done
limited 60 $PY -m pytest -q -p no:cacheprovider tests/test_cuda_ops.py \
  -k "not (${paths// / or })" --junitxml="$OUT/junit-cuda-ops-other.xml" || status=1
(( ${#hung[@]} )) && skip_paths=(--skip-paths "$(IFS=,; echo "${hung[*]}")") && echo "the benchmark leaves out: ${hung[*]}"
# torch.compile on CUDA compiles Triton kernels for minutes; its tests run on the CPU in CI.
limited 90 $PY -m pytest -q -p no:cacheprovider tests/test_ops.py tests/test_nn.py tests/test_dropout.py \
  -k "cuda and not compile" \
  --junitxml="$OUT/junit-ops-cuda.xml" || status=1
# Generation: the CUDA graph of the decode steps and the decode op against the Python loop's text.
limited 60 $PY -m pytest -q -p no:cacheprovider tests/test_sample.py -k "cuda" \
  --junitxml="$OUT/junit-sample-cuda.xml" || status=1
fi

if want sanitizer; then
step "compute-sanitizer on one small case per path"
# Only this package's kernels are instrumented (cuBLAS's are left alone), which keeps each run
# to seconds. A path that hangs under the tool shows as the last one not marked finished.
if command -v compute-sanitizer >/dev/null; then
  filter=()
  compute-sanitizer --help 2>/dev/null | grep -q -- "--kernel-name" && filter=(--kernel-name kns=charrnn)
  for tool in memcheck racecheck; do
    limited 90 compute-sanitizer --tool $tool "${filter[@]}" --error-exitcode 3 \
      $PY bench/sanitize_sweeps.py block cluster steps grid
    rc=$?
    echo "compute-sanitizer --tool $tool: exit $rc"
    (( rc != 0 )) && status=1
  done
else
  echo "compute-sanitizer not found: skipped"; status=1
fi
fi

if want bench; then
step "kernel benchmark against cuDNN"
limited 180 $PY bench/bench_kernels.py --device cuda ${QUICK:+--quick} "${skip_paths[@]}" \
  --out "$OUT/results" || status=1
fi

if want profile; then
step "where the GPU time of one call goes (torch.profiler)"
limited 60 $PY bench/profile_cuda_op.py --out "$OUT/profile-cuda-$(date +%F).json" || status=1
fi

if want sample; then
step "generation benchmark"
limited 60 $PY bench/bench_sample.py --device cuda --samples 1,64 --rounds 2 --seconds 0.5 \
  --out "$OUT/results" || status=1
fi

TRAIN_SECONDS=${TRAIN_SECONDS:-60}
if want train && (( TRAIN_SECONDS > 0 )); then
  step "charrnn train --device cuda, the default model, rnn against rnn-torch (cuDNN), ${TRAIN_SECONDS} s each"
  limited $((2 * TRAIN_SECONDS + 90)) $PY bench/bench_train.py --device cuda --cells rnn,rnn-torch \
    --time-limit "$TRAIN_SECONDS" --no-progress --out "$OUT/results" || status=1
fi

step "done, status $status"
exec >&- 2>&-  # let tee write the end of the log before the script returns
wait
exit $status
