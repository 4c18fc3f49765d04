"""One small forward+backward per CUDA sweep path, for compute-sanitizer to watch.

    compute-sanitizer --tool memcheck  python bench/sanitize_sweeps.py block cluster grid steps
    compute-sanitizer --tool racecheck python bench/sanitize_sweeps.py block cluster grid steps

Each path runs on a shape that gives it several blocks (and, for cluster and grid, several
slices of w_hh), odd sizes, in float32 with dropout and in float64 without, and prints a line
when it has finished, so that a log cut short by a hang still names the paths that completed.
A path the GPU cannot run at that shape is reported and skipped.
"""
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import charrnn_ext  # noqa: E402
from charrnn_ext import rnn_tanh  # noqa: E402

# (T, B, E, H) per path: a tile of several rows, an H that splits unevenly into slices.
SHAPES = {"block": (6, 5, 7, 37), "cluster": (6, 5, 7, 201), "grid": (6, 5, 7, 70), "steps": (6, 5, 7, 37)}


def run(path):
    T, B, E, H = SHAPES[path]
    if path != "steps":
        try:
            charrnn_ext._C.cuda_sweep_plan(B, H, 4, path)
        except RuntimeError as e:
            print(f"{path}: cannot run here ({e})", flush=True)
            return
    os.environ["CHARRNN_CUDA_SWEEP"] = path
    for dtype, dropout in ((torch.float32, 0.3), (torch.float64, 0.0)):
        g = torch.Generator().manual_seed(0)
        inputs = [torch.randn(shape, generator=g, dtype=dtype).cuda().requires_grad_()
                  for shape in ((T, B, E), (B, H), (H, E), (H, H), (H,), (H,))]
        out, h_n = rnn_tanh(*inputs, dropout=dropout, seed=5)
        (out.square().sum() + h_n.sum()).backward()
        torch.cuda.synchronize()
    print(f"{path}: finished (T={T} B={B} E={E} H={H})", flush=True)


if __name__ == "__main__":
    if not torch.cuda.is_available():
        sys.exit("sanitize_sweeps: no GPU is visible")
    for name in sys.argv[1:] or list(SHAPES):
        run(name)
