"""Times charrnn_ext's fused tanh RNN against torch.nn.RNN and a per-step autograd loop.

All three run in one process with the same weights, interleaved round by round, float32;
medians are reported with the ratio to nn.RNN, achieved GFLOP/s, the fraction of a large
sgemm's GFLOP/s measured in the same run, and each one's peak memory.

    python bench/bench_kernels.py            # full grid, CPU; writes bench/results/cpu-<date>.json
    python bench/bench_kernels.py --quick    # a small grid, fewer rounds
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.benchmark as benchmark

import charrnn_ext

RESULTS = Path(__file__).resolve().parent / "results"


def step_loop(x, h, w_ih, w_hh, b_ih, b_hh):
    """What a user writes without a fused op: one autograd node per step."""
    outs = []
    for t in range(x.shape[0]):
        h = torch.tanh(F.linear(x[t], w_ih, b_ih) + F.linear(h, w_hh, b_hh))
        outs.append(h)
    return torch.stack(outs), h


def make_impls(T, B, E, H, device):
    torch.manual_seed(0)
    rnn = torch.nn.RNN(E, H).to(device)
    fused = charrnn_ext.FusedRNN(E, H).to(device)
    fused.load_state_dict(rnn.state_dict())
    params = [rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0]
    x = torch.randn(T, B, E, device=device, requires_grad=True)
    h0 = torch.zeros(1, B, H, device=device, requires_grad=True)
    return {
        "fused": lambda: fused(x, h0),
        "nn.RNN": lambda: rnn(x, h0),
        "step-loop": lambda: step_loop(x, h0[0], *params),
    }


def fwd_bwd(fn):
    def run():
        out, h_n = fn()
        (out.sum() + h_n.sum()).backward()
    return run


def fwd_only(fn):
    def run():
        with torch.no_grad():
            fn()
    return run


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved_medians(runs, device, min_time):
    """Rounds of one call each, the competitors alternating, so drift hits all alike."""
    for run in runs.values():  # warm-up (allocator, packed weights, lazy init)
        run()
        run()
    sync(device)
    start = time.perf_counter()
    next(iter(runs.values()))()
    sync(device)
    rounds = int(min(60, max(7, min_time / max(time.perf_counter() - start, 1e-6))))
    samples = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            # Timer runs single-threaded unless told otherwise.
            m = benchmark.Timer("run()", globals={"run": run}, num_threads=torch.get_num_threads()).timeit(1)
            samples[name].append(m.median)
    return {name: statistics.median(s) for name, s in samples.items()}, rounds


def peak_memory(T, B, E, H, device):
    """Peak bytes held through torch's allocator during one forward+backward of each impl,
    above what was held before it: the kernels' own temporaries included, since they
    allocate through ATen too. CUDA: the allocator's peak counter; CPU: the profiler's
    allocation records, summed in time order."""
    peaks = {}
    for name, fn in make_impls(T, B, E, H, device).items():
        run = fwd_bwd(fn)
        run()
        if device == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            run()
            torch.cuda.synchronize()
            peaks[name] = torch.cuda.max_memory_allocated() - base
            continue
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                    profile_memory=True) as prof:
            run()
        records = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                         if e.name() == "[memory]")
        held = peak = 0
        for _, nbytes in records:
            held += nbytes
            peak = max(peak, held)
        peaks[name] = peak
    return peaks


def sgemm_gflops(device, n=2048):
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    m = benchmark.Timer("torch.mm(a, b)", globals={"a": a, "b": b, "torch": torch},
                        num_threads=torch.get_num_threads()).blocked_autorange(min_run_time=1.0)
    return 2 * n ** 3 / m.median / 1e9


def markdown_table(rows):
    """The README's table: fused vs nn.RNN (and the per-step loop), medians."""
    lines = ["| H | B | mode | fused ms | nn.RNN ms | step-loop ms | vs nn.RNN | vs loop | GFLOP/s | of sgemm "
             "| peak MB fused / nn.RNN |", "|" + "---:|" * 3 + "---:|" * 8]
    for r in rows:
        ms = r["median_ms"]
        mem = r["peak_mb_fwd_bwd"]
        lines.append(f"| {r['H']} | {r['B']} | {r['mode']} | {ms['fused']:.2f} | {ms['nn.RNN']:.2f} | "
                     f"{ms['step-loop']:.2f} | {r['speedup_vs_nn_rnn']:.2f}x | {r['speedup_vs_step_loop']:.2f}x | "
                     f"{r['fused_gflops']:.0f} | {r['fraction_of_sgemm']:.0%} | "
                     f"{mem.get('fused', 0):.1f} / {mem.get('nn.RNN', 0):.1f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="H in {128, 512}, B in {1, 32}, fewer rounds")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--min-time", type=float, default=None, help="seconds of rounds per measurement")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/<device>-<date>.json)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_kernels: --device cuda but no GPU is visible")
    T, E = 100, 64
    hs, bs = ([128, 512], [1, 32]) if args.quick else ([128, 256, 512, 1024], [1, 32, 128])
    min_time = args.min_time or (0.5 if args.quick else 2.0)

    gemm_before = sgemm_gflops(args.device)
    rows = []
    header = (f"{'H':>5} {'B':>4} {'mode':<8} {'fused ms':>9} {'nn.RNN ms':>10} {'loop ms':>9} "
              f"{'x nn.RNN':>8} {'x loop':>7} {'GFLOP/s':>8} {'sgemm%':>7} {'fwd+bwd peak MB f/nn':>21}")
    print(f"T={T} E={E} float32, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"sgemm {gemm_before:.0f} GFLOP/s")
    print(header, flush=True)
    for H in hs:
        for B in bs:
            impls = make_impls(T, B, E, H, args.device)
            mem = peak_memory(T, B, E, H, args.device)
            for mode, wrap, flops in (("fwd+bwd", fwd_bwd, 6 * T * B * (H * H + E * H)),
                                      ("fwd", fwd_only, 2 * T * B * (H * H + E * H))):
                runs = {name: wrap(fn) for name, fn in impls.items()}
                med, rounds = interleaved_medians(runs, args.device, min_time)
                gflops = flops / med["fused"] / 1e9
                row = dict(T=T, B=B, E=E, H=H, mode=mode, rounds=rounds,
                           median_ms={k: v * 1e3 for k, v in med.items()},
                           speedup_vs_nn_rnn=med["nn.RNN"] / med["fused"],
                           speedup_vs_step_loop=med["step-loop"] / med["fused"],
                           fused_gflops=gflops, fraction_of_sgemm=gflops / gemm_before,
                           peak_mb_fwd_bwd={k: v / 2 ** 20 for k, v in mem.items()})
                rows.append(row)
                print(f"{H:>5} {B:>4} {mode:<8} {med['fused'] * 1e3:>9.2f} {med['nn.RNN'] * 1e3:>10.2f} "
                      f"{med['step-loop'] * 1e3:>9.2f} {row['speedup_vs_nn_rnn']:>8.2f} "
                      f"{row['speedup_vs_step_loop']:>7.2f} {gflops:>8.1f} {row['fraction_of_sgemm']:>7.0%} "
                      f"{mem.get('fused', 0) / 2**20:>6.1f}/{mem.get('nn.RNN', 0) / 2**20:<6.1f}", flush=True)
    gemm_after = sgemm_gflops(args.device)
    print(f"sgemm {gemm_after:.0f} GFLOP/s after the grid")

    date = datetime.date.today().isoformat()
    out = args.out or RESULTS / f"{args.device}-{date}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(date=date, device=args.device, machine=platform.processor() or platform.machine(),
               cpu_count=os.cpu_count(), threads=torch.get_num_threads(), torch=torch.__version__,
               cuda=torch.version.cuda, build_info=charrnn_ext.build_info(),
               sgemm_gflops_before=gemm_before, sgemm_gflops_after=gemm_after)
    if args.device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    out.write_text(json.dumps(dict(env=env, rows=rows), indent=1))
    print(f"wrote {out}\n")
    print(markdown_table(rows))
    return rows


if __name__ == "__main__":
    main()
