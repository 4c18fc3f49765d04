"""Times charrnn_ext's fused tanh RNN against torch.nn.RNN and a per-step autograd loop.

All run in one process with the same weights, interleaved round by round, float32; medians
are reported with the ratios. CPU: torch.utils.benchmark timers, achieved GFLOP/s, the
fraction of a large sgemm's GFLOP/s measured in the same run, and each one's peak memory.
CUDA: CUDA events around each call, forward+backward, against cuDNN's nn.RNN with TF32 off and
on, the per-step loop, and the fused op on each sweep path it can run (CHARRNN_CUDA_SWEEP).

    python bench/bench_kernels.py                  # the CPU grid: result cpu-kernels
    python bench/bench_kernels.py --quick          # a small grid, fewer rounds
    python bench/bench_kernels.py --quick --cpu-splits   # and the CPU's forced splits and orders side by side
    python bench/bench_kernels.py --device cuda    # the GPU grid: result cuda-kernels-CARD

Results go to bench/out/, or with --publish to bench/results/ (bench/common.py);
bench/report.py renders them.
"""
import argparse
import gc
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.benchmark as benchmark

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

import charrnn_ext  # noqa: E402
from charrnn_ext.ops import _forced_cpu_choice  # noqa: E402
import common  # noqa: E402  (bench/ is on sys.path when run as a script)
import report  # noqa: E402


def step_loop(x, h, w_ih, w_hh, b_ih, b_hh):
    """What a user writes without a fused op: one autograd node per step."""
    outs = []
    for t in range(x.shape[0]):
        h = torch.tanh(F.linear(x[t], w_ih, b_ih) + F.linear(h, w_hh, b_hh))
        outs.append(h)
    return torch.stack(outs), h


def make_impls(T, B, E, H, device, cpu_splits=False):
    torch.manual_seed(0)
    rnn = torch.nn.RNN(E, H).to(device)
    fused = charrnn_ext.FusedRNN(E, H).to(device)
    fused.load_state_dict(rnn.state_dict())
    params = [rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0]
    x = torch.randn(T, B, E, device=device, requires_grad=True)
    h0 = torch.zeros(1, B, H, device=device, requires_grad=True)
    impls = {
        "fused": lambda: fused(x, h0),
        "nn.RNN": lambda: rnn(x, h0),
        "step-loop": lambda: step_loop(x, h0[0], *params),
    }
    if cpu_splits:  # the fused op again under each forced CPU choice (CPU_CHOICES), in this process
        impls.update({name: impls["fused"] for name in CPU_CHOICES})
    return impls


# The CPU's forward split and backward order, forced around the whole forward+backward call.
CPU_CHOICES = {"fused-rows": {"sweep": "rows"}, "fused-units": {"sweep": "units"},
               "fused-overlap": {"backward": "overlap"}, "fused-serial": {"backward": "serial"}}


def with_cpu_choice(run, choice):
    def forced():
        with _forced_cpu_choice(**choice):
            return run()
    return forced


def with_env(name, value, fn):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        return fn()
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


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


SWEEP_PATHS = ["block", "cluster", "grid", "steps"]


def with_sweep_path(fn, path):
    return lambda: with_env("CHARRNN_CUDA_SWEEP", path, fn)


def with_cudnn_tf32(fn):
    def run():
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=True):
            return fn()
    return run


def sweep_plan(B, H, path):
    try:
        return charrnn_ext._C.cuda_sweep_plan(B, H, 4, path)
    except RuntimeError:
        return None


def cuda_event_medians(runs, rounds):
    """Each call between two CUDA events, the competitors alternating round by round; the
    time between the events includes any gaps where the GPU waits for the CPU to launch.
    Each round runs the competitors in a fresh random order with the garbage collector off (it
    collects between rounds), as timeit does: in a fixed order, whatever runs right after the
    per-step loop (and the thousands of autograd objects it leaves behind) can pay for them."""
    for run in runs.values():  # warm-up: cuDNN plans, cuBLAS handles, allocator, module load
        for _ in range(3):
            run()
    torch.cuda.synchronize()
    samples = {name: [] for name in runs}
    order = random.Random(0)
    for _ in range(rounds):
        events = {}
        names = list(runs)
        order.shuffle(names)
        gc.collect()
        gc.disable()
        for name in names:
            run = runs[name]
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            events[name] = (start, end)
        torch.cuda.synchronize()
        gc.enable()
        for name, (start, end) in events.items():
            samples[name].append(start.elapsed_time(end) / 1e3)
    return {name: statistics.median(s) for name, s in samples.items()}


def times(ratio, digits):
    return "-" if ratio is None else f"{ratio:.{digits}f}x"


def cuda_grid(quick):
    """(T, B, H): T=100 over H and B, plus T in {50, 256} at H=512, B=32."""
    hs, bs = ([128, 512], [1, 32]) if quick else ([128, 256, 512, 1024], [1, 32, 128])
    return [(100, B, H) for H in hs for B in bs] + [(T, 32, 512) for T in (50, 256)]


def run_cuda(args, save):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    E = 64
    rounds = 15 if args.quick else 40
    rows = []
    print(f"E={E} float32 forward+backward, {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}; medians of {rounds} interleaved rounds (CUDA events)")
    print(f"{'T':>4} {'H':>5} {'B':>4} {'path':>8} {'fused ms':>9} {'cuDNN ms':>9} {'x cuDNN':>8} "
          f"{'x TF32':>7} {'x loop':>7}  per path ms", flush=True)
    for T, B, H in cuda_grid(args.quick):
        base = make_impls(T, B, E, H, "cuda")
        auto_plan = sweep_plan(B, H, "auto")
        # A path that hung in the tests would hang the benchmark too, in its own column or in
        # auto's wherever auto picks it: both are left out, and the row's ratios with auto's.
        skip_auto = "auto" in args.skip_paths or auto_plan["path"] in args.skip_paths
        impls = {} if skip_auto else {"fused": base["fused"]}
        plans = {path: sweep_plan(B, H, path) for path in SWEEP_PATHS if path not in args.skip_paths}
        impls.update({"cuDNN": base["nn.RNN"], "cuDNN-tf32": with_cudnn_tf32(base["nn.RNN"]),
                      "step-loop": base["step-loop"]})
        runs = {name: fwd_bwd(fn) for name, fn in impls.items()}
        # The path is forced around the whole forward+backward: the backward reads it too.
        runs.update({f"fused:{path}": with_sweep_path(fwd_bwd(base["fused"]), path)
                     for path, plan in plans.items() if plan is not None})
        med = cuda_event_medians(runs, rounds)
        mem = peak_memory(T, B, E, H, "cuda")
        flops = 6 * T * B * (H * H + E * H)
        over_fused = lambda name: None if skip_auto else med[name] / med["fused"]
        row = dict(T=T, B=B, E=E, H=H, mode="fwd+bwd", rounds=rounds, auto_plan=auto_plan,
                   plans=plans, median_ms={k: v * 1e3 for k, v in med.items()},
                   speedup_vs_cudnn=over_fused("cuDNN"),
                   speedup_vs_cudnn_tf32=over_fused("cuDNN-tf32"),
                   speedup_vs_step_loop=over_fused("step-loop"),
                   fused_gflops=None if skip_auto else flops / med["fused"] / 1e9,
                   peak_mb_fwd_bwd={k: v / 2 ** 20 for k, v in mem.items()})
        rows.append(row)
        save(rows)  # row by row: a run cut short by its time limit keeps what it measured
        per_path = " ".join(f"{p}={med['fused:' + p] * 1e3:.3f}" for p in SWEEP_PATHS if "fused:" + p in med)
        fused_ms = "skipped" if skip_auto else f"{med['fused'] * 1e3:.3f}"
        print(f"{T:>4} {H:>5} {B:>4} {auto_plan['path']:>8} {fused_ms:>9} {med['cuDNN'] * 1e3:>9.3f} "
              f"{times(row['speedup_vs_cudnn'], 2):>8} {times(row['speedup_vs_cudnn_tf32'], 2):>7} "
              f"{times(row['speedup_vs_step_loop'], 1):>7}  {per_path}", flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="H in {128, 512}, B in {1, 32}, fewer rounds")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--min-time", type=float, default=None, help="seconds of rounds per measurement")
    p.add_argument("--cpu-splits", action="store_true",
                   help="CPU: also time the fused op with its forward sweep forced to each split "
                        "(rows, units) and its backward to each order (overlap, serial), interleaved "
                        "with the rest")
    p.add_argument("--skip-paths", type=lambda s: s.split(","), default=[], metavar="P[,P...]",
                   help="CUDA sweep paths to leave out of the per-path columns (e.g. one that hung)")
    common.add_output_flags(p)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_kernels: --device cuda but no GPU is visible")
    if args.device == "cuda":
        name, env = f"cuda-kernels-{common.card()}", common.environment("cuda")
        config = dict(quick=args.quick, skip_paths=args.skip_paths)
        save = lambda rows: common.save(args, name, config, rows, env=env)  # noqa: E731
        rows = run_cuda(args, save)
        print(f"wrote {save(rows)}\n")
        print(report.cuda_table(dict(rows=rows), full=True))
        return rows
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
            impls = make_impls(T, B, E, H, args.device, cpu_splits=args.cpu_splits)
            mem = peak_memory(T, B, E, H, args.device)
            for mode, wrap, flops in (("fwd+bwd", fwd_bwd, 6 * T * B * (H * H + E * H)),
                                      ("fwd", fwd_only, 2 * T * B * (H * H + E * H))):
                runs = {name: wrap(fn) for name, fn in impls.items()}
                for name, choice in CPU_CHOICES.items():
                    if name in runs:
                        runs[name] = with_cpu_choice(runs[name], choice)
                med, rounds = interleaved_medians(runs, args.device, min_time)
                gflops = flops / med["fused"] / 1e9
                row = dict(T=T, B=B, E=E, H=H, mode=mode, rounds=rounds,
                           median_ms={k: v * 1e3 for k, v in med.items()},
                           speedup_vs_nn_rnn=med["nn.RNN"] / med["fused"],
                           speedup_vs_step_loop=med["step-loop"] / med["fused"],
                           fused_gflops=gflops, fraction_of_sgemm=gflops / gemm_before,
                           peak_mb_fwd_bwd={k: v / 2 ** 20 for k, v in mem.items()})
                if args.cpu_splits:
                    row["units_over_rows"] = med["fused-units"] / med["fused-rows"]
                    if mode == "fwd+bwd":
                        row["serial_over_overlap"] = med["fused-serial"] / med["fused-overlap"]
                rows.append(row)
                print(f"{H:>5} {B:>4} {mode:<8} {med['fused'] * 1e3:>9.2f} {med['nn.RNN'] * 1e3:>10.2f} "
                      f"{med['step-loop'] * 1e3:>9.2f} {row['speedup_vs_nn_rnn']:>8.2f} "
                      f"{row['speedup_vs_step_loop']:>7.2f} {gflops:>8.1f} {row['fraction_of_sgemm']:>7.0%} "
                      f"{mem.get('fused', 0) / 2**20:>6.1f}/{mem.get('nn.RNN', 0) / 2**20:<6.1f}"
                      + (f"  rows {med['fused-rows'] * 1e3:.2f} ms, units {med['fused-units'] * 1e3:.2f} ms, "
                         f"units / rows {row['units_over_rows']:.2f}" if args.cpu_splits else "")
                      + (f"; backward serial / overlap {row['serial_over_overlap']:.2f}"
                         if "serial_over_overlap" in row else ""), flush=True)
    gemm_after = sgemm_gflops(args.device)
    print(f"sgemm {gemm_after:.0f} GFLOP/s after the grid")

    config = dict(T=T, E=E, quick=args.quick, min_time_s=min_time, cpu_splits=args.cpu_splits,
                  sgemm_gflops_before=gemm_before, sgemm_gflops_after=gemm_after)
    print(f"wrote {common.save(args, 'cpu-kernels', config, rows)}\n")
    print(report.cpu_table(dict(rows=rows), full=True))
    return rows


if __name__ == "__main__":
    main()
