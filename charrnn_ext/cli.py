"""`charrnn train | sample | info | bench` (also `python -m charrnn_ext ...`)."""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

from .distributed import exit_process
from .errors import CharRNNError, MissingFileError, PeerLostError
from .options import value_type

EPILOG = """\
examples:
  CHARRNN_DATA_DIR=DIR charrnn train --out runs/shakespeare     # tiny shakespeare, 10 minutes
  charrnn train --data my.txt --time-limit 120 --out runs/mine
  charrnn train --resume runs/mine --time-limit 600               # continue where it stopped
  torchrun --nproc_per_node=2 -m charrnn_ext train --data my.txt  # data-parallel, 2 processes
  charrnn sample runs/mine --prime "ROMEO:" --temperature 0.8
  charrnn info runs/mine/best.pt
"""

def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, config_cls, names=None, keep_defaults=False) -> None:
    """One flag per field of a config dataclass (or of `names`), its type, choices, default
    and help taken from the field (options.py). Without keep_defaults, a flag the user did not
    give stays out of the namespace, so --resume can tell an explicit override from a default."""
    for f in fields(config_cls):
        if names is not None and f.name not in names:
            continue
        meta, default = f.metadata, f.default
        shown = f"{meta['help']} (default: {'none' if default is None else default})"
        kw = dict(dest=f.name, default=default if keep_defaults else argparse.SUPPRESS,
                  help=meta["help"] if "default" in meta["help"] else shown)
        if value_type(f) is bool:
            parser.add_argument(flag_name(f.name), action=argparse.BooleanOptionalAction, **kw)
        else:
            parser.add_argument(flag_name(f.name), type=value_type(f), choices=meta["choices"],
                                metavar=None if meta["choices"] else f.name.upper().replace("_", "-"), **kw)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; the train flags (which need the trainer) only for `train`."""
    p = argparse.ArgumentParser(prog="charrnn", description="Character-level RNN language models: "
                                "train on a text file, sample from the model.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser("train", help="train a model", description="Train a character-level model. "
                       "Ctrl-C writes a checkpoint and stops; --resume continues exactly. Launched by "
                       "torchrun, trains data-parallel (DDP) with the batch columns split over the processes.",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    if command == "train":
        from .train import TrainConfig
        add_config_flags(t, TrainConfig)
    t.add_argument("--resume", nargs="?", const="", default=None, metavar="CKPT",
                   help="continue from a checkpoint (a file, or a directory's last.pt; "
                        "without a value: --out's last.pt)")

    from .sample import generate
    gen = {k: v.default for k, v in inspect.signature(generate).parameters.items()}  # defaults live there
    s = sub.add_parser("sample", help="generate text from a checkpoint")
    s.add_argument("checkpoint", help="checkpoint file, or a run directory (best.pt, else last.pt)")
    s.add_argument("--prime", default=gen["prime"], help="text to start from (default: a newline)")
    s.add_argument("--length", type=int, default=gen["length"], help="characters to generate (default: %(default)s)")
    s.add_argument("--temperature", type=float, default=gen["temperature"],
                   help="sampling temperature; 0 picks the most likely character (default: %(default)s)")
    s.add_argument("--top-k", type=int, default=gen["top_k"],
                   help="sample only among the k most likely characters")
    s.add_argument("--num-samples", type=int, default=gen["num_samples"],
                   help="independent samples, generated together in one batch (default: %(default)s)")
    s.add_argument("--stream", action="store_true",
                   help="write the first sample as it is generated (always so with one sample)")
    s.add_argument("--seed", type=int, default=None, help="random seed for reproducible samples")
    s.add_argument("--device", default="cpu", help="auto, cpu or cuda (default: cpu)")
    s.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice); on a busy machine one "
                        "sample runs fastest on 1")

    i = sub.add_parser("info", help="show a checkpoint's config, vocabulary, step and losses")
    i.add_argument("checkpoint", help="checkpoint file or run directory")
    i.add_argument("--json", action="store_true", help="print JSON")

    sub.add_parser("bench", help="run the kernel benchmark (bench/bench_kernels.py of a source "
                   "checkout); --train runs bench/bench_train.py; other arguments are passed on",
                   add_help=False)
    return p


def _resolve_ckpt(path: str, prefer=("best.pt", "last.pt")) -> Path:
    p = Path(path)
    if p.is_dir():
        for name in prefer:
            if (p / name).is_file():
                return p / name
        raise MissingFileError(f"no {' or '.join(prefer)} in {p}")
    if not p.is_file():
        raise MissingFileError(f"no checkpoint at {p}")
    return p


def _rank_tag() -> str:
    """' (rank r of W)' in a process torchrun started, so each message says whose it is."""
    world = os.environ.get("WORLD_SIZE", "1")
    return f" (rank {os.environ.get('RANK', '?')} of {world})" if world != "1" else ""


def cmd_train(args) -> int:
    from .train import TrainConfig, Trainer
    given = {k: v for k, v in vars(args).items() if k not in ("command", "resume")}
    if "time_limit" in given and given["time_limit"] <= 0:
        given["time_limit"] = None
    if args.resume is not None:
        ckpt = _resolve_ckpt(args.resume or given.get("out", TrainConfig.out), prefer=("last.pt",))
        trainer = Trainer(None, resume=ckpt, overrides=given)
    else:
        trainer = Trainer(TrainConfig(**given))
    with trainer:
        c, rank0, world = trainer.cfg, trainer.is_main, trainer.dist.world  # rank 0 alone reports
        if rank0 and args.resume is not None:
            print(f"resuming {ckpt} at step {trainer.step} (epoch {trainer.epoch})", file=sys.stderr)
        ddp = f" x {world} processes (DDP, {c.batch_size // world} columns each)" if world > 1 else ""
        if rank0:
            print(f"data {trainer.data_path}: {trainer.data_info['chars']:,} chars, vocab {len(trainer.vocab)}, "
                  f"{len(trainer.train_batches)} windows/epoch | {c.cell} {c.num_layers}x{c.hidden_size} "
                  f"emb {c.embedding_size}, {trainer.model.num_parameters():,} params | {trainer.device}{ddp} | "
                  f"out {trainer.out}", file=sys.stderr)
        summary = trainer.run()
    code = 130 if summary["stop"] == "interrupted" else 0
    if not rank0:
        return code
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    print(f"stopped ({summary['stop']}) at step {summary['step']}, epoch {summary['epoch']}: "
          f"train {fmt(summary['train_loss'])}, val {fmt(summary['val_loss'])}, "
          f"best val {fmt(summary['best_val_loss'])}, {summary['chars_per_s']:,.0f} chars/s; "
          f"checkpoints in {trainer.out}", file=sys.stderr)
    return code


def cmd_sample(args) -> int:
    from .sample import sample_checkpoint
    ckpt = _resolve_ckpt(args.checkpoint)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    stream = sys.stdout if args.num_samples == 1 or args.stream else None
    several = args.num_samples > 1
    if several and stream is not None:
        print("----- sample 1 -----", flush=True)
    texts = sample_checkpoint(ckpt, device=args.device, stream=stream, prime=args.prime,
                              length=args.length, temperature=args.temperature, top_k=args.top_k,
                              num_samples=args.num_samples, seed=args.seed)
    if several:
        for n, text in enumerate(texts[1:] if stream is not None else texts, start=2 if stream else 1):
            print(f"----- sample {n} -----")
            print(text)
    return 0


def cmd_info(args) -> int:
    from .checkpoint import load_checkpoint
    path = _resolve_ckpt(args.checkpoint)
    ck = load_checkpoint(path)
    nparams = sum(v.numel() for v in ck["model"].values())
    info = {"checkpoint": str(path), "step": ck["step"], "epoch": ck["epoch"], "window": ck["window"],
            "train_loss": ck["train_loss"], "val_loss": ck["val_loss"], "best_val_loss": ck["best_val_loss"],
            "skipped_steps": ck["skipped_steps"], "parameters": nparams, "data": ck["data"],
            "model_config": ck["model_config"], "config": ck["config"], "vocab": ck["vocab"],
            "torch_version": ck.get("torch_version")}
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    fmt = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"  # noqa: E731
    print(f"checkpoint   {path}")
    print(f"step         {ck['step']} (epoch {ck['epoch']}, window {ck['window']})")
    print(f"losses       train {fmt(ck['train_loss'])}  val {fmt(ck['val_loss'])}  "
          f"best val {fmt(ck['best_val_loss'])}  (nats/char)")
    print(f"model        {nparams:,} parameters")
    print(f"data         {ck['data']['path']} ({ck['data']['chars']:,} chars)")
    print(f"vocabulary   {len(ck['vocab'])} symbols: {''.join(ck['vocab'])!r}")
    print("config")
    for k, v in ck["config"].items():
        print(f"  {k:16} {v}")
    return 0


def cmd_bench(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print("usage: charrnn bench [--train] [ARGS...]\n\n"
              "Runs bench/bench_kernels.py (or, with --train, bench/bench_train.py) from the source\n"
              "checkout this package lives in, with ARGS passed on (e.g. --quick, --out PATH).\n"
              "`charrnn bench -- --help` shows the benchmark's own options.")
        return 0
    name = "bench_kernels.py"
    if argv[:1] == ["--train"]:
        name, argv = "bench_train.py", argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    script = Path(__file__).resolve().parent.parent / "bench" / name
    if not script.is_file():
        raise CharRNNError(f"`charrnn bench` runs bench/{name} from a source checkout, and there is none at "
                       f"{script} (a regular, non-editable install has no bench/). Clone the repository, "
                       f"`pip install -e .` it, or run `python bench/{name}` there.")
    return subprocess.call([sys.executable, str(script), *argv])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["bench"]:
            return cmd_bench(argv[1:])
        args = build_parser(argv[0] if argv else None).parse_args(argv)
        return {"train": cmd_train, "sample": cmd_sample, "info": cmd_info}[args.command](args)
    except CharRNNError as e:
        print(f"charrnn: error{_rank_tag()}: {e}", file=sys.stderr)
        return 2
    except PeerLostError as e:
        print(f"charrnn: error{_rank_tag()}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("charrnn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `charrnn sample ... | head`
        return 0


def program() -> None:
    """The `charrnn` program (and `python -m charrnn_ext`): main(), then leave the process
    (distributed.exit_process: a torchrun rank skips interpreter finalization)."""
    exit_process(main())


if __name__ == "__main__":
    program()
