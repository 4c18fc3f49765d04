#!/usr/bin/env bash
# The whole GPU check in one call, for a lent H200 (torch and nvcc there, no network):
# build the extension for sm_90 only, run the CUDA tests (one process per sweep path, so a
# hang costs one path's time limit), run the CUDA kernel benchmark against cuDNN. Logs and
# JSON go to $OUT (the device tool's folder that comes back), or to bench/results/gpu-check/
# elsewhere. Meant to finish in well under 8 minutes.
#
#   device run:  bash bench/gpu_check.sh        (carry .whl if test packages are missing there)
#   QUICK=1      a smaller benchmark grid
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu-check}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0
DEADLINE=${DEADLINE:-420}  # seconds for the whole script; each step gets at most what is left
step() { echo; echo "== $* ($(date +%T), ${SECONDS}s in)"; }
left() { local n=$((DEADLINE - SECONDS)); (( n < $1 )) && echo $((n > 10 ? n : 10)) || echo "$1"; }
# Runs a command for at most $1 seconds, fewer if the deadline is nearer; SIGKILL 10 s after the
# SIGTERM, should a process not die while it waits on the GPU. Exit 124 or 137 when stopped.
limited() { local seconds; seconds=$(left "$1"); shift; timeout -k 10 "$seconds" "$@"; }

if compgen -G ".whl/*.whl" >/dev/null; then  # test-only packages carried as wheels
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

step "device"
$PY -c "import numpy, pytest, ninja" || echo "WARNING: numpy, pytest or ninja missing: carry them as wheels in .whl"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv || true
$PY -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuDNN',
        torch.backends.cudnn.version(), torch.cuda.get_device_name(), torch.cuda.get_device_properties(0))"

step "build for sm_90 only"
export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 CHARRNN_CUDA=1
rm -f charrnn_ext/_C*.so
# In place: nothing to download and no install metadata needed; pip first, as users build.
limited 200 $PY -m pip install -q --no-deps --no-build-isolation -e . \
  || limited 120 $PY setup.py -q build_ext --inplace || { echo "BUILD FAILED"; exit 1; }
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

step "CUDA tests, each sweep path in its own process"
# A sweep that never finishes (a barrier nobody reaches) takes its process with it. One pytest
# per path, with a time limit, so a hang costs that path's limit, not the run; it is named,
# and the benchmark leaves it out (auto too, at the sizes where auto picks it).
paths="block cluster grid steps auto"
hung=()
for path in $paths; do
  limited 60 $PY -m pytest -q --maxfail=10 -p no:cacheprovider tests/test_cuda_ops.py -k "$path" \
    --junitxml="$OUT/junit-cuda-ops-$path.xml"
  rc=$?
  (( rc == 124 || rc == 137 )) && { echo "HUNG: path $path, killed"; hung+=("$path"); }
  (( rc != 0 )) && status=1
done
limited 60 $PY -m pytest -q -p no:cacheprovider tests/test_cuda_ops.py \
  -k "not (${paths// / or })" --junitxml="$OUT/junit-cuda-ops-other.xml" || status=1
skip_paths=()
(( ${#hung[@]} )) && skip_paths=(--skip-paths "$(IFS=,; echo "${hung[*]}")") && echo "the benchmark leaves out: ${hung[*]}"
# torch.compile on CUDA compiles Triton kernels for minutes; its tests run on the CPU in CI.
limited 90 $PY -m pytest -q -p no:cacheprovider tests/test_ops.py tests/test_nn.py \
  -k "cuda and not compile" \
  --junitxml="$OUT/junit-ops-cuda.xml" || status=1

step "kernel benchmark against cuDNN"
limited 180 $PY bench/bench_kernels.py --device cuda ${QUICK:+--quick} "${skip_paths[@]}" \
  --out "$OUT/cuda-$(date +%F).json" || status=1

step "done, status $status"
exec >&- 2>&-  # let tee write the end of the log before the script returns
wait
exit $status
