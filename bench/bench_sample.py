"""Generation benchmark: characters per second of `generate()` on the default model size.

    python bench/bench_sample.py                     # 2 x 512, embedding 64, vocabulary 65
    python bench/bench_sample.py --samples 1,64 --rounds 3 --threads 1
    python bench/bench_sample.py --device cuda     # on a GPU

Contenders, all through charrnn_ext.sample.generate on random weights of the same size:
  fused       the rnn cell through generate()'s fused path: on the CPU the fused decode op (one
              call for the whole text), on a GPU the CUDA graph of 16 steps (CUDAGraphSteps)
  op-loop     (GPU only) the rnn cell through the fused decode op, whose loop launches each
              step's kernels: what the CUDA graph replaces
  python      the rnn cell through the Python loop (one model call per character; the
              reference that the fused op's text equals)
  lstm        (CPU only) the lstm cell through charrnn's Python loop (PackedCellStep: weights
              packed once)
  nn.RNN      the rnn-torch cell (torch.nn.RNN), one module call per character: stock PyTorch
  nn.LSTM     the lstm cell (torch.nn.LSTM), one module call per character, with torch's
              default CPU kernel (oneDNN): stock PyTorch
The contenders run interleaved, round by round, in this one process, so the machine's load
falls on all of them alike; the table gives medians over the rounds and the ratios of charrnn's paths to
the others. Writes bench/results/sample-<date>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from charrnn_ext import sample  # noqa: E402
from charrnn_ext.data import Vocab  # noqa: E402
from charrnn_ext.model import CharRNN, ModelConfig  # noqa: E402
from common import git_commit  # noqa: E402  (bench/ is on sys.path when run as a script)

# (name, cell, fused, packed: whether the Python loop may use PackedCellStep)
CONTENDERS = [("fused", "rnn", True, True), ("op-loop", "rnn", True, True), ("python", "rnn", False, True),
              ("lstm", "lstm", None, True), ("nn.RNN", "rnn-torch", None, False), ("nn.LSTM", "lstm", None, False)]
DEFAULTS = {"cpu": "fused,python,lstm,nn.RNN,nn.LSTM", "cuda": "fused,op-loop,python,nn.RNN,nn.LSTM"}


def chars_per_s(model, vocab, samples, seconds, fused, packed, op_loop=False) -> float:
    """Generates for about `seconds` (the length from a first short run) and returns chars/s."""
    def run(length):
        # Without the packed step: one module call per character, as stock PyTorch runs it.
        # op_loop: the fused op's loop on a GPU instead of the CUDA graph.
        with (contextlib.nullcontext() if packed else
              mock.patch.object(sample.PackedCellStep, "supports", staticmethod(lambda model: False))), \
             (mock.patch.object(sample, "CUDAGraphSteps", lambda: sample.fused_steps) if op_loop
              else contextlib.nullcontext()):
            start = time.perf_counter()
            sample.generate(model, vocab, length=length, num_samples=samples, seed=0, fused=fused)
            return time.perf_counter() - start
    probe = 8
    length = max(probe, int(probe * seconds / max(run(probe), 1e-6)))
    return samples * length / run(length)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", default="1,8,64", help="batch sizes (default: %(default)s)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--contenders", default=None,
                   help=f"comma-separated (default: {DEFAULTS['cpu']}; on cuda {DEFAULTS['cuda']})")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians reported (default: 5)")
    p.add_argument("--seconds", type=float, default=1.0, help="target seconds per run (default: 1)")
    p.add_argument("--hidden-size", type=int, default=512)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--embedding-size", type=int, default=64)
    p.add_argument("--vocab-size", type=int, default=65)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", default=None, help="result JSON (default: bench/results/sample-<date>.json)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = (args.contenders or DEFAULTS[args.device]).split(",")
    unknown = set(names) - {c[0] for c in CONTENDERS}
    if unknown:
        p.error(f"unknown contenders {sorted(unknown)}")
    contenders = [c for c in CONTENDERS if c[0] in names]
    vocab = Vocab(["\n"] + [chr(32 + i) for i in range(args.vocab_size - 1)])
    models = {}
    for _, cell, _, _ in contenders:
        torch.manual_seed(0)
        models[cell] = CharRNN(ModelConfig(vocab_size=args.vocab_size, cell=cell, hidden_size=args.hidden_size,
                                           num_layers=args.num_layers, embedding_size=args.embedding_size)
                               ).to(args.device).eval()
    load_before = os.getloadavg()
    rows = []
    for samples in (int(s) for s in args.samples.split(",")):
        runs = {name: [] for name, *_ in contenders}
        for _ in range(args.rounds):
            for name, cell, fused, packed in contenders:
                runs[name].append(chars_per_s(models[cell], vocab, samples, args.seconds, fused, packed,
                                              op_loop=name == "op-loop"))
        row = {"samples": samples, **{name: statistics.median(v) for name, v in runs.items()}, "runs": runs}
        rows.append(row)
        print(f"{samples} samples: " + ", ".join(f"{n} {row[n]:,.0f}" for n, *_ in contenders) + " chars/s",
              file=sys.stderr)

    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"\n{args.num_layers} x {args.hidden_size} tanh RNN (LSTM of the same size), embedding "
          f"{args.embedding_size}, vocabulary {args.vocab_size}; {where}; "
          f"characters per second, median of {args.rounds} interleaved rounds\n")
    pairs = [("fused", "python"), ("fused", "nn.RNN"), ("lstm", "nn.LSTM"), ("fused", "op-loop")]
    pairs = [(a, b) for a, b in pairs if a in names and b in names]
    print("| samples | " + " | ".join(n for n, *_ in contenders) + " | "
          + " | ".join(f"{a} / {b}" for a, b in pairs) + " |")
    print("|---:|" + "---:|" * (len(contenders) + len(pairs)))
    for row in rows:
        ratio = lambda a, b: f"{row[a] / row[b]:.1f}x" if a in row and b in row else "-"  # noqa: E731
        print(f"| {row['samples']} | " + " | ".join(f"{row[n]:,.0f}" for n, *_ in contenders)
              + " | " + " | ".join(ratio(a, b) for a, b in pairs) + " |")

    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "commit": git_commit(),
              "torch": torch.__version__, "device": args.device,
              "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
              "threads": torch.get_num_threads(), "machine": platform.processor()
              or platform.machine(), "load_average": {"before": load_before, "after": os.getloadavg()},
              "model": {"hidden_size": args.hidden_size, "num_layers": args.num_layers,
                        "embedding_size": args.embedding_size, "vocab_size": args.vocab_size},
              "rounds": args.rounds, "rows": rows}
    kind = "sample-cuda" if args.device == "cuda" else "sample"
    out = Path(args.out) if args.out else HERE / "results" / f"{kind}-{datetime.date.today()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
