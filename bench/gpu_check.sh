#!/usr/bin/env bash
# The whole GPU check in one call, for a lent H200 (torch and nvcc there, no network):
# build the extension for sm_90 only, try each sweep path alone (a hang costs 40 s, not the
# run), run the CUDA tests, run the CUDA kernel benchmark against cuDNN. Logs and JSON go to
# $OUT (the device tool's folder that comes back), or to bench/results/gpu-check/ elsewhere.
# Meant to finish in well under 8 minutes.
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
timeout $(left 200) $PY -m pip install -q --no-deps --no-build-isolation -e . \
  || timeout $(left 120) $PY setup.py -q build_ext --inplace || { echo "BUILD FAILED"; exit 1; }
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

step "smoke: each path alone, in its own process with a time limit"
# A sweep that never finishes (a barrier nobody reaches) takes its process with it; here it
# costs 40 s and names the path, and the tests and the benchmark below leave that path out.
hung=()
for path in block cluster grid steps; do
  CHARRNN_CUDA_SWEEP=$path timeout 40 $PY - <<'EOF'
import copy, os, statistics, torch, charrnn_ext
path = os.environ["CHARRNN_CUDA_SWEEP"]
def fwd_bwd(m, x, h0):
    out, h_n = m(x, h0)
    (out.sum() + h_n.sum()).backward()
    return [out, h_n, x.grad, h0.grad] + [p.grad for p in m.parameters()]
torch.manual_seed(0)
cpu = charrnn_ext.FusedRNN(4, 67).double()  # odd H: 5 grid blocks a tile, a cluster of 2
x, h0 = torch.randn(5, 3, 4, dtype=torch.float64), 0.5 * torch.randn(1, 3, 67, dtype=torch.float64)
try:
    got = fwd_bwd(copy.deepcopy(cpu).cuda(), x.cuda().requires_grad_(), h0.cuda().requires_grad_())
    want = fwd_bwd(cpu, x.requires_grad_(), h0.requires_grad_())
    err = max((g.cpu() - w).abs().max().item() for g, w in zip(got, want))
    print(f"{path}: float64 T=5 B=3 H=67, max abs error against the CPU op {err:.1e}",
          "ok" if err <= 1e-9 else "WRONG", flush=True)
except RuntimeError as e:
    print(f"{path}: cannot run T=5 B=3 H=67: {str(e).splitlines()[0]}", flush=True)
for H in (128, 512, 1024):
    m = charrnn_ext.FusedRNN(64, H).cuda()
    x = torch.randn(100, 32, 64, device="cuda", requires_grad=True)
    h0 = torch.zeros(1, 32, H, device="cuda", requires_grad=True)
    try:
        ms = []
        for i in range(13):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(); fwd_bwd(m, x, h0); end.record(); end.synchronize()
            ms += [start.elapsed_time(end)] if i >= 3 else []
        print(f"{path}: float32 T=100 B=32 H={H} fwd+bwd median {statistics.median(ms):.3f} ms", flush=True)
    except RuntimeError as e:
        print(f"{path}: cannot run T=100 B=32 H={H}: {str(e).splitlines()[0]}", flush=True)
EOF
  rc=$?
  (( rc == 124 )) && { echo "HUNG: path $path (killed after 40 s)"; hung+=("$path"); }
  (( rc != 0 )) && status=1
done
deselect=() skip_paths=()
if (( ${#hung[@]} )); then
  deselect=(-k "not ($(IFS='|'; echo "${hung[*]}" | sed 's/|/ or /g'))")
  skip_paths=(--skip-paths "$(IFS=,; echo "${hung[*]}")")
fi

step "CUDA tests"
timeout $(left 150) $PY -m pytest -q --maxfail=10 -p no:cacheprovider tests/test_cuda_ops.py "${deselect[@]}" \
  --junitxml="$OUT/junit-cuda-ops.xml" || status=1
# torch.compile on CUDA compiles Triton kernels for minutes; its tests run on the CPU in CI.
timeout $(left 90) $PY -m pytest -q -p no:cacheprovider tests/test_ops.py tests/test_nn.py \
  -k "cuda and not compile" \
  --junitxml="$OUT/junit-ops-cuda.xml" || status=1

step "kernel benchmark against cuDNN"
timeout $(left 180) $PY bench/bench_kernels.py --device cuda ${QUICK:+--quick} "${skip_paths[@]}" \
  --out "$OUT/cuda-$(date +%F).json" || status=1

step "done, status $status"
exec >&- 2>&-  # let tee write the end of the log before the script returns
wait
exit $status
