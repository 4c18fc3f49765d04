"""bench/bench_kernels.py --device cuda on a CPU stand-in: CUDA events, synchronisation and the
sweep planner replaced by CPU equivalents, the models on the CPU. This runs the benchmark's own
code for the GPU grid (per-path columns, a skipped path, the JSON and the table) without a GPU,
so that a slip in it shows in CI rather than in a GPU run. It
measures nothing: the timings are CPU ones and only their bookkeeping is checked."""
import json
import sys
import time
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"


class HostEvent:
    """torch.cuda.Event's timing interface over the host clock."""

    def __init__(self, enable_timing=False):
        self.at = None

    def record(self):
        self.at = time.perf_counter()

    def elapsed_time(self, end):
        return (end.at - self.at) * 1e3


@pytest.fixture
def bench_on_cpu(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("bench_kernels", None)
    import bench_kernels as bk

    for name, value in dict(Event=HostEvent, synchronize=lambda *a: None, is_available=lambda: True,
                            get_device_name=lambda *a: "CPU stand-in", device_count=lambda: 1,
                            get_device_capability=lambda *a: (9, 0)).items():
        monkeypatch.setattr(torch.cuda, name, value)
    make_impls, peak_memory = bk.make_impls, bk.peak_memory
    monkeypatch.setattr(bk, "make_impls", lambda T, B, E, H, device: make_impls(T, B, E, H, "cpu"))
    monkeypatch.setattr(bk, "peak_memory", lambda T, B, E, H, device: peak_memory(T, B, E, H, "cpu"))

    def plan(B, H, path):  # as _C.cuda_sweep_plan answers: cluster cannot run at H=9
        if path == "cluster" and H == 9:
            return None
        return dict(path="block" if path == "auto" else path, units=H, slices=1, rows=B, tiles=1,
                    groups=1, threads=H, smem_bytes=4 * H * H)

    monkeypatch.setattr(bk, "sweep_plan", plan)
    monkeypatch.setattr(bk, "cuda_grid", lambda quick: [(4, 2, 5), (3, 1, 9)])
    yield bk
    sys.modules.pop("bench_kernels", None)


def printed_table(capsys):
    """The markdown table's lines that main() printed after the JSON's path."""
    return [line for line in capsys.readouterr().out.split("wrote")[1].splitlines() if line.startswith("|")]


def test_cuda_benchmark_code_runs_on_a_cpu_stand_in(bench_on_cpu, tmp_path, capsys):
    out = tmp_path / "cuda.json"
    rows = bench_on_cpu.main(["--device", "cuda", "--quick", "--skip-paths", "grid", "--out", str(out)])

    saved = json.loads(out.read_text())
    assert saved["benchmark"] == "cuda-kernels-cpu-stand-in"
    assert saved["env"]["gpu"] == "CPU stand-in" and saved["env"]["torch"] == torch.__version__
    assert [(r["T"], r["B"], r["H"]) for r in saved["rows"]] == [(4, 2, 5), (3, 1, 9)]
    for row in rows:
        ms = row["median_ms"]
        expected = {"fused", "cuDNN", "cuDNN-tf32", "step-loop", "fused:block", "fused:steps"}
        if row["H"] == 5:
            expected.add("fused:cluster")
        assert set(ms) == expected  # grid skipped as asked, cluster only where it plans
        assert row["speedup_vs_cudnn"] == pytest.approx(ms["cuDNN"] / ms["fused"])
        assert row["speedup_vs_step_loop"] == pytest.approx(ms["step-loop"] / ms["fused"])
        assert set(row["peak_mb_fwd_bwd"]) == {"fused", "nn.RNN", "step-loop"}

    table = printed_table(capsys)
    assert len(table) == 2 + len(rows) and table[0].startswith("| T | H | B |")
    assert table[3].startswith("| 3 | 9 | 1 | block |") and " / - / - / " in table[3]  # cluster, grid absent


def test_a_hung_path_auto_would_pick_is_left_out_of_auto_and_the_ratios(bench_on_cpu, tmp_path, capsys):
    # The stand-in planner's auto picks block; gpu_check.sh passes a path that hung in the tests.
    out = tmp_path / "cuda.json"
    rows = bench_on_cpu.main(["--device", "cuda", "--quick", "--skip-paths", "block", "--out", str(out)])

    for row in rows:
        assert "fused" not in row["median_ms"] and "fused:block" not in row["median_ms"]
        assert "fused:steps" in row["median_ms"] and "cuDNN" in row["median_ms"]
        assert row["speedup_vs_cudnn"] is None and row["fused_gflops"] is None
    assert json.loads(out.read_text())["config"]["skip_paths"] == ["block"]
    table = printed_table(capsys)
    assert "| block | - |" in table[2] and "| - / " in table[2]


def test_rows_measured_before_an_interruption_are_saved(bench_on_cpu, tmp_path, monkeypatch):
    make_impls = bench_on_cpu.make_impls

    def interrupted_at_the_second_size(T, B, E, H, device):
        if (T, B, H) == (3, 1, 9):
            raise KeyboardInterrupt  # as the script's time limit would stop it
        return make_impls(T, B, E, H, device)

    monkeypatch.setattr(bench_on_cpu, "make_impls", interrupted_at_the_second_size)
    out = tmp_path / "cuda.json"
    with pytest.raises(KeyboardInterrupt):
        bench_on_cpu.main(["--device", "cuda", "--quick", "--out", str(out)])
    assert [(r["T"], r["B"], r["H"]) for r in json.loads(out.read_text())["rows"]] == [(4, 2, 5)]
