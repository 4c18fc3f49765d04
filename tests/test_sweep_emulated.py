"""The CUDA sweep kernels (csrc/cuda/sweep_kernels.cuh) run on the CPU: compiled by g++ against
tests/cpp/emulated_cuda, each CUDA thread a host thread, and compared with a plain loop of the
recurrence. Where no GPU is available this still checks their indexing and barrier placement
for every synchronisation scope (block, cluster, grid), both directions and both dtypes, and
the forward's dropout epilogue against csrc/dropout_mask.h's mask; the
memory-ordering and speed questions need a GPU (tests/test_cuda_ops.py)."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (C++20)")
def test_sweep_kernels_match_the_recurrence_under_emulation(tmp_path):
    exe = tmp_path / "test_sweep_emulated"
    build = subprocess.run(
        ["g++", "-std=c++20", "-O1", "-pthread", "-Wall", "-Werror", "-Wno-unknown-pragmas",
         f"-I{ROOT / 'tests/cpp/emulated_cuda'}", f"-I{ROOT / 'csrc/cuda'}",
         str(ROOT / "tests/cpp/test_sweep_emulated.cpp"), "-o", str(exe)],
        capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.rstrip().endswith("0 failures"), run.stdout[-4000:]
    assert run.stdout.count("\nok ") + run.stdout.startswith("ok ") == 72  # 18 shapes x 2 directions x 2 dtypes
