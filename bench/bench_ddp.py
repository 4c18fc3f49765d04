"""Data-parallel benchmark: training characters per second with 1 process and with N processes
under torchrun (DDP, gloo on the CPU), for the same number of optimizer steps.

    python bench/bench_ddp.py                                   # 1 and 2 processes, 150 steps each
    python bench/bench_ddp.py --data-dir DIR --procs 1,2,4 --max-steps 300

Every configuration trains the trainer's default model (batch 64 x 100, all B columns split over
the processes) with `charrnn train`; 1 process runs plainly (`python -m charrnn_ext train`, torch's
default threads), N > 1 through `python -m torch.distributed.run --nproc_per_node=N` with
OMP_NUM_THREADS = cores // N. Characters per second are the trainer's own (optimizer steps only,
evaluation excluded, all processes' columns counted); "steady" is the median of the metrics lines
after the first (warm-up excluded). The result `ddp` goes to bench/out/, or with --publish to
bench/results/ (bench/common.py).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

import common  # noqa: E402  (bench/ is on sys.path when run as a script)
import report  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_one(procs: int, train_args: list[str], out: Path, timeout: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if procs == 1:
        import torch
        threads = int(env.get("OMP_NUM_THREADS") or torch.get_num_threads())  # what the child will use
        cmd = [sys.executable, "-m", "charrnn_ext", "train"]
    else:
        threads = max(1, (os.cpu_count() or 1) // procs)
        env["OMP_NUM_THREADS"] = str(threads)
        if sys.platform.startswith("linux"):
            env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "charrnn_ext", "train"]
    t0 = time.monotonic()
    r = subprocess.run([*cmd, *train_args, "--out", str(out)], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=timeout)
    wall = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"{procs} process(es) failed (exit {r.returncode}):\n{r.stderr[-4000:]}")
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = next(x for x in lines if x.get("final"))
    steady = [x["chars_per_s"] for x in lines if "chars_per_s" in x and not x.get("final")][1:]
    return {"processes": procs, "threads_per_process": threads, "chars_per_s": final["chars_per_s"],
            "chars_per_s_steady": statistics.median(steady) if steady else None, "steps": final["step"],
            "train_time_s": final["train_time_s"], "wall_s": wall, "train_loss": final["train_loss"],
            "val_loss": final["val_loss"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", default="1,2", help="comma-separated process counts (default: %(default)s)")
    p.add_argument("--max-steps", type=int, default=150, help="optimizer steps per configuration (default: 150)")
    p.add_argument("--data", default=None, help="a text file instead of tiny shakespeare")
    p.add_argument("--data-dir", default=None, help="directory holding tinyshakespeare.txt")
    common.add_output_flags(p)
    p.add_argument("--timeout", type=float, default=900, help="seconds per configuration (default: 900)")
    p.add_argument("extra", nargs="*", help="more `charrnn train` flags after --, e.g. -- --hidden-size 256")
    args = p.parse_args(argv)

    train_args = ["--max-steps", str(args.max_steps), "--time-limit", "0", "--eval-every", "0",
                  "--eval-windows", "2", "--log-every", "10", "--no-plot", "--no-progress", *args.extra]
    train_args += ["--data", args.data] if args.data else []
    train_args += ["--data-dir", args.data_dir] if args.data_dir else []
    rows = []
    with tempfile.TemporaryDirectory(prefix="charrnn-ddp-") as tmp:
        for n in [int(s) for s in args.procs.split(",")]:
            print(f"== {n} process(es), {args.max_steps} steps", file=sys.stderr, flush=True)
            row = run_one(n, train_args, Path(tmp) / f"p{n}", args.timeout)
            rows.append(row)
            print(f"   {row['chars_per_s']:,.0f} chars/s (steady {row['chars_per_s_steady'] or 0:,.0f}), "
                  f"{row['wall_s']:.0f} s wall", file=sys.stderr, flush=True)
    for row in rows:
        row["vs_first"] = row["chars_per_s"] / rows[0]["chars_per_s"]
    path = common.save(args, "ddp", {"max_steps": args.max_steps, "train_args": train_args}, rows)
    print(report.block_ddp({"ddp": json.loads(path.read_text())}))
    print(f"\nwrote {path}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
