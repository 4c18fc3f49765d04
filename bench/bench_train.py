"""Training benchmark: the default model on tiny shakespeare, per cell, for a fixed wall-clock budget.

    python bench/bench_train.py                                                # 4 cells x 600 s
    python bench/bench_train.py --data-dir DIR --cells rnn,rnn-torch --time-limit 60
    python bench/bench_train.py --stock 120         # charrnn's step vs stock PyTorch, profiled

Reports training characters per second (optimizer steps only, evaluation excluded) and the
validation loss in nats per character (final and best), and writes
bench/results/train-<date>.json. Every cell gets the same model configuration (the trainer's
defaults plus the flags below), so rnn vs rnn-torch compares the fused op with torch.nn.RNN
on the same work. --stock SECONDS instead times `charrnn train`'s step (the rnn cell) against
the same model written in stock PyTorch, interleaved in one process, and profiles both steps
(bench/stock.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from charrnn_ext.cli import add_config_flags  # noqa: E402
from charrnn_ext.model import CELLS as ALL_CELLS  # noqa: E402
from charrnn_ext.train import TrainConfig, Trainer  # noqa: E402
import stock  # noqa: E402  (bench/ is on sys.path when run as a script)
from common import git_commit  # noqa: E402

# The trainer's settings this benchmark lets you change, applied to every cell.
OVERRIDES = ("hidden_size", "num_layers", "embedding_size", "batch_size", "seq_len", "eval_every",
             "dropout", "lr", "lr_decay", "weight_decay")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--time-limit", type=float, default=600.0, help="seconds of training per cell (default: 600)")
    p.add_argument("--cells", default=",".join(ALL_CELLS), help="comma-separated cells (default: %(default)s)")
    p.add_argument("--data", default=None, help="a text file instead of tiny shakespeare")
    p.add_argument("--data-dir", default=None, help="directory holding tinyshakespeare.txt "
                   "(default: $CHARRNN_DATA_DIR, then ~/.cache/charrnn)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    p.add_argument("--out", default=None, help="result JSON (default: bench/results/train-<date>.json)")
    p.add_argument("--runs-dir", default=None, help="keep each cell's checkpoints here (default: a temp dir)")
    p.add_argument("--quick", action="store_true", help="smoke test: 20 s per cell, rnn and rnn-torch")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--stock", type=float, default=None, metavar="SECONDS",
                   help="time charrnn's step against stock PyTorch's for SECONDS, then profile both")
    add_config_flags(p, TrainConfig, names=OVERRIDES, keep_defaults=True)
    args = p.parse_args(argv)
    cells = ["rnn", "rnn-torch"] if args.quick and args.cells == ",".join(ALL_CELLS) else args.cells.split(",")
    if args.quick:
        args.time_limit = min(args.time_limit, 20.0)
    bad = [c for c in cells if c not in ALL_CELLS]
    if bad:
        p.error(f"unknown cell(s) {bad}; choose from {ALL_CELLS}")

    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    kind = "step" if args.stock else "train"
    out = Path(args.out) if args.out else HERE / "results" / f"{kind}-{stamp}.json"
    runs_dir = Path(args.runs_dir) if args.runs_dir else Path(tempfile.mkdtemp(prefix="charrnn-bench-"))
    report = {"benchmark": kind, "data": args.data or "tinyshakespeare", "date": stamp, "commit": git_commit(),
              "torch": str(torch.__version__), "machine": platform.machine(), "cpu_count": os.cpu_count(),
              "threads": args.threads or torch.get_num_threads(), "time_limit_s": args.time_limit,
              "load_average_at_start": os.getloadavg(), "results": []}

    def config(cell):
        return TrainConfig(data=args.data, data_dir=args.data_dir, cell=cell, time_limit=args.time_limit,
                           out=str(runs_dir / cell), threads=args.threads, device=args.device,
                           progress=not args.no_progress, **{name: getattr(args, name) for name in OVERRIDES})
    if args.stock:
        trainer = Trainer(config("rnn"))
        report.update(config=asdict(trainer.cfg), **stock.compare(trainer, args.stock))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(stock.tables(report))
        print(f"\nwritten {out}")
        return 0

    for cell in cells:
        cfg = config(cell)
        trainer = Trainer(cfg)
        print(f"== {cell}: {trainer.model.num_parameters():,} parameters, {args.time_limit:.0f} s", file=sys.stderr)
        s = trainer.run()
        row = {"cell": cell, "chars_per_s": s["chars_per_s"], "val_loss": s["val_loss"],
               "best_val_loss": s["best_val_loss"], "train_loss": s["train_loss"], "steps": s["step"],
               "epochs": s["step"] / len(trainer.train_batches), "train_time_s": s["train_time_s"],
               "elapsed_s": s["elapsed_s"], "parameters": trainer.model.num_parameters(),
               "config": asdict(cfg)}
        report["results"].append(row)
        print(f"   {cell}: {row['chars_per_s']:,.0f} chars/s, val {row['val_loss']:.4f} "
              f"(best {row['best_val_loss']:.4f}), train {row['train_loss']:.4f}, "
              f"{row['epochs']:.1f} epochs", file=sys.stderr)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")  # after every cell: a long run loses nothing
        if s["stop"] == "interrupted":
            break

    by = {r["cell"]: r for r in report["results"]}
    if "rnn" in by and "rnn-torch" in by:
        report["speedup_rnn_vs_rnn_torch"] = by["rnn"]["chars_per_s"] / by["rnn-torch"]["chars_per_s"]
        out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"\nwritten {out}")
    return 0


def table(report: dict) -> str:
    lines = [f"{report['data']}, {report['time_limit_s']:.0f} s per cell, {report['threads']} threads, "
             f"torch {report['torch']}",
             "",
             "| cell | params | chars/s | epochs | train loss | val loss (final) | val loss (best) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        lines.append(f"| {r['cell']} | {r['parameters']:,} | {r['chars_per_s']:,.0f} | {r['epochs']:.1f} | "
                     f"{r['train_loss']:.3f} | {r['val_loss']:.3f} | {r['best_val_loss']:.3f} |")
    if "speedup_rnn_vs_rnn_torch" in report:
        lines.append(f"\nrnn / rnn-torch characters per second: {report['speedup_rnn_vs_rnn_torch']:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
