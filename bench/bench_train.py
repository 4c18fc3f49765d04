"""Training benchmark: the default model on tiny shakespeare, per cell.

    python bench/bench_train.py --cells rnn --max-steps 8000 --time-limit 0 --sample   # the default run
    python bench/bench_train.py --cells rnn,rnn-torch --time-limit 60 --device cuda    # fused vs cuDNN
    python bench/bench_train.py --stock 90        # charrnn's step vs stock PyTorch, profiled

Each cell trains the trainer's default model (plus the flags below) and reports training
characters per second (optimizer steps only, evaluation excluded), the losses in nats per
character and the curve of its metrics lines. With a fixed --max-steps, no time limit and
--sample, the run is the README's: `charrnn train --max-steps N --time-limit 0` followed by
run.sh's sampling command on its best checkpoint, the text kept in the result.

--stock SECONDS instead times `charrnn train`'s step (the rnn cell) against the same model
written in stock PyTorch, interleaved in one process, and profiles both steps (bench/stock.py).

Results: `train` (CPU), `train-cuda-CARD` (GPU) or `train-step`, in bench/out/ or, with
--publish, bench/results/ (bench/common.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from charrnn_ext.cli import add_config_flags  # noqa: E402
from charrnn_ext.model import CELLS as ALL_CELLS  # noqa: E402
from charrnn_ext.sample import sample_checkpoint  # noqa: E402
from charrnn_ext.train import TrainConfig, Trainer  # noqa: E402
import common  # noqa: E402  (bench/ is on sys.path when run as a script)
import stock  # noqa: E402

# The trainer's settings this benchmark lets you change, applied to every cell.
OVERRIDES = ("hidden_size", "num_layers", "embedding_size", "batch_size", "seq_len", "eval_every",
             "dropout", "lr", "lr_decay", "weight_decay", "max_steps", "seed")
# run.sh's sampling command: `charrnn sample OUT --prime "ROMEO:" --length 500 --temperature 0.8 --seed 0`
SAMPLE = dict(prime="ROMEO:", length=500, temperature=0.8, seed=0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--time-limit", type=float, default=600.0,
                   help="seconds of training per cell; 0: none (default: 600)")
    p.add_argument("--cells", default="rnn", help="comma-separated, from %s (default: rnn)" % ",".join(ALL_CELLS))
    p.add_argument("--data", default=None, help="a text file instead of tiny shakespeare")
    p.add_argument("--data-dir", default=None, help="directory holding tinyshakespeare.txt "
                   "(default: $CHARRNN_DATA_DIR, then ~/.cache/charrnn)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    p.add_argument("--runs-dir", default=None, help="keep each cell's checkpoints here (default: a temp dir)")
    p.add_argument("--sample", action="store_true",
                   help="sample from each cell's best checkpoint with run.sh's command and keep the text")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--stock", type=float, default=None, metavar="SECONDS",
                   help="time charrnn's step against stock PyTorch's for SECONDS, then profile both")
    common.add_output_flags(p)
    add_config_flags(p, TrainConfig, names=OVERRIDES, keep_defaults=True)
    args = p.parse_args(argv)
    cells = args.cells.split(",")
    bad = [c for c in cells if c not in ALL_CELLS]
    if bad:
        p.error(f"unknown cell(s) {bad}; choose from {ALL_CELLS}")
    if args.threads:
        torch.set_num_threads(args.threads)

    runs_dir = Path(args.runs_dir) if args.runs_dir else Path(tempfile.mkdtemp(prefix="charrnn-bench-"))

    def config(cell):
        return TrainConfig(data=args.data, data_dir=args.data_dir, cell=cell, time_limit=args.time_limit or None,
                           out=str(runs_dir / cell), threads=args.threads, device=args.device,
                           progress=not args.no_progress, **{name: getattr(args, name) for name in OVERRIDES})
    if args.stock:
        trainer = Trainer(config("rnn"))
        result = stock.compare(trainer, args.stock)
        path = common.save(args, "train-step", asdict(trainer.cfg), [result], device=args.device)
        print(stock.tables(result))
        print(f"\nwrote {path}")
        return 0

    name = "train" if args.device == "cpu" else f"train-cuda-{common.card()}"
    rows = []
    for cell in cells:
        cfg = config(cell)
        trainer = Trainer(cfg)
        print(f"== {cell}: {trainer.model.num_parameters():,} parameters", file=sys.stderr)
        s = trainer.run()
        metrics = [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
        row = {"cell": cell, "parameters": trainer.model.num_parameters(), "steps": s["step"],
               "epochs": s["step"] / len(trainer.train_batches), "chars_per_s": s["chars_per_s"],
               "train_loss": s["train_loss"], "val_loss": s["val_loss"], "best_val_loss": s["best_val_loss"],
               "train_time_s": s["train_time_s"], "elapsed_s": s["elapsed_s"], "stop": s["stop"],
               "config": asdict(cfg), "curve": [m for m in metrics if not m.get("final")]}
        if args.sample:
            row["sample"] = {**SAMPLE, "text": sample_checkpoint(Path(cfg.out) / "best.pt", device=args.device,
                                                                 **SAMPLE)[0]}
        rows.append(row)
        print(f"   {cell}: {row['chars_per_s']:,.0f} chars/s, val {row['val_loss']:.4f} "
              f"(best {row['best_val_loss']:.4f}), {row['epochs']:.1f} epochs", file=sys.stderr)
        path = common.save(args, name, {"cells": cells, "time_limit_s": args.time_limit}, rows,
                           device=args.device)  # after every cell: a long run loses nothing
        if s["stop"] == "interrupted":
            break
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
