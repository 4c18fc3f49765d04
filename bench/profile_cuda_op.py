"""Where the time of one forward+backward goes on the GPU: torch.profiler's CUDA kernel times
for the fused op on each sweep path that fits, and for cuDNN's nn.RNN, float32, TF32 off.

    python bench/profile_cuda_op.py                   # T=100, E=64 at (B, H) = (32, 128), (32, 512), (32, 1024), (128, 1024)
    python bench/profile_cuda_op.py --sizes 32x512 --out profile.json

Per call: the wall time of back-to-back calls (the rate a training loop sees), the GPU time of
all kernels, of the sweep kernels (and the sweep's time per step: the two sweeps have 2T
steps), of the GEMMs and of the rest. GPU time well under the wall time means the call is
bound by the host's launches, not by the GPU.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from bench_kernels import make_impls, fwd_bwd, sweep_plan, with_sweep_path  # noqa: E402


def kernel_class(name):
    if "sweep_kernel" in name or "tanh_grad_kernel" in name:
        return "sweep"
    if any(k in name.lower() for k in ("gemm", "gemv", "cutlass", "xmma", "sm90_", "cublas")):
        return "gemm"
    return "other"


def profile(run, calls):
    for _ in range(3):
        run()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        run()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - start) / calls
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            run()
        torch.cuda.synchronize()
    totals = {"sweep": 0.0, "gemm": 0.0, "other": 0.0}
    kernels = {}
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", None)
        if us is None:
            us = e.self_cuda_time_total
        if us <= 0:
            continue
        totals[kernel_class(e.key)] += us / calls
        kernels[e.key[:90]] = us / calls
    return wall * 1e6, totals, kernels


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="32x128,32x512,32x1024,128x1024", help="BxH, comma-separated")
    p.add_argument("--T", type=int, default=100)
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    T, E = args.T, 64
    rows = []
    print(f"T={T} E={E} float32 fwd+bwd, {torch.cuda.get_device_name()}, torch {torch.__version__}; "
          "microseconds per call")
    print(f"{'B':>4} {'H':>5} {'impl':>14} {'wall':>8} {'GPU':>8} {'sweep':>8} {'per step':>8} {'GEMM':>7} {'other':>7}")
    for size in args.sizes.split(","):
        B, H = map(int, size.split("x"))
        impls = make_impls(T, B, E, H, "cuda")
        runs = {"cuDNN": fwd_bwd(impls["nn.RNN"])}
        runs.update({f"fused:{path}": with_sweep_path(fwd_bwd(impls["fused"]), path)
                     for path in ("grid", "cluster", "block", "steps")
                     if path == "steps" or sweep_plan(B, H, path) is not None})
        for name, run in runs.items():
            wall, totals, kernels = profile(run, args.calls)
            gpu = sum(totals.values())
            per_step = totals["sweep"] / (2 * T) if name.startswith("fused") else None
            rows.append(dict(B=B, H=H, T=T, impl=name, wall_us=wall, gpu_us=gpu, kernels_us=kernels,
                             per_step_us=per_step, **{f"{k}_us": v for k, v in totals.items()}))
            step = f"{per_step:8.2f}" if per_step is not None else f"{'-':>8}"
            print(f"{B:>4} {H:>5} {name:>14} {wall:8.0f} {gpu:8.0f} {totals['sweep']:8.0f} {step} "
                  f"{totals['gemm']:7.0f} {totals['other']:7.0f}", flush=True)
        if args.out:
            args.out.write_text(json.dumps(dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                                                 rows=rows), indent=1))


if __name__ == "__main__":
    main()
