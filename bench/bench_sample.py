"""Generation benchmark: characters per second of `generate()` on the default model size.

    python bench/bench_sample.py                     # 2 x 512, embedding 64, vocabulary 65
    python bench/bench_sample.py --samples 1,64 --rounds 3 --threads 1
    python bench/bench_sample.py --device cuda     # on a GPU

Contenders, all through charrnn_ext.sample.generate on random weights of the same size (eval mode):
  fused       the rnn cell, generate()'s path for it: on the CPU the fused decode op (one call for
              the whole text), on a GPU the CUDA graph of 16 steps (CUDAGraphSteps)
  op-loop     (GPU only) the rnn cell through the fused decode op, whose loop launches each
              step's kernels: what the CUDA graph replaces
  python      the rnn cell through the Python loop (python_steps of model_step: one model call
              per character), the reference that the fused op's text equals
  lstm        the lstm cell, generate()'s path for it: on the CPU the Python loop through
              PackedCellStep (weights packed once per text); on a GPU that is nn.LSTM's path
  gru         the gru cell, generate()'s path for it (as lstm)
  rnn-torch   the rnn-torch cell (torch.nn.RNN's weights), generate()'s path for it (as lstm)
  nn.RNN      stock PyTorch: the rnn-torch cell through its torch.nn.RNN, one module call per
              character (the Python loop of model_step)
  nn.LSTM     stock PyTorch: the lstm cell through its torch.nn.LSTM (on the CPU torch's
              default kernel, oneDNN), one module call per character
  nn.GRU      stock PyTorch: the gru cell through its torch.nn.GRU, one module call per character
On a GPU, lstm, gru and rnn-torch are the stock contenders' path (PackedCellStep is for the CPU).
The contenders run interleaved, round by round, in this one process, the order rotating per
round, so the machine's load falls on all of them alike; the table gives medians over the rounds
and the ratios of charrnn's paths to the others.

Result: `sample` (CPU) or `sample-cuda` (GPU; the card is in env), in bench/out/ or, with
--publish, bench/results/ (bench/common.py). One row per number of samples:
{"samples", "length" (characters per run, per contender), "chars_per_s" (medians), "runs" (every
round's chars/s)}.
"""

from __future__ import annotations

import argparse
import contextlib
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
import common  # noqa: E402  (bench/ is on sys.path when run as a script)

# name: (cell, how generate() is steered onto the contender's path)
CONTENDERS = {
    "fused": ("rnn", None),
    "op-loop": ("rnn", "op-loop"),      # CUDAGraphSteps replaced by the fused op's own loop
    "python": ("rnn", "python-loop"),   # the fused decode unavailable: the Python loop
    "lstm": ("lstm", None),
    "gru": ("gru", None),
    "rnn-torch": ("rnn-torch", None),
    "nn.RNN": ("rnn-torch", "module"),  # PackedCellStep off: one torch module call per character
    "nn.LSTM": ("lstm", "module"),
    "nn.GRU": ("gru", "module"),
}
DEFAULTS = {"cpu": "fused,python,lstm,gru,rnn-torch,nn.RNN,nn.LSTM,nn.GRU",
            "cuda": "fused,op-loop,python,nn.RNN,nn.LSTM"}
# the ratios the table (and bench/report.py) shows, where both contenders ran
RATIOS = [("fused", "python"), ("fused", "nn.RNN"), ("fused", "op-loop"), ("lstm", "nn.LSTM"),
          ("gru", "nn.GRU"), ("rnn-torch", "nn.RNN")]


def steered(how):
    """generate() on the contender's path."""
    if how == "op-loop":
        return mock.patch.object(sample, "CUDAGraphSteps", lambda: sample.fused_steps)
    if how == "python-loop":
        return mock.patch.object(sample, "fused_decode_available", lambda model: False)
    if how == "module":
        return mock.patch.object(sample.PackedCellStep, "supports", staticmethod(lambda model: False))
    return contextlib.nullcontext()


def timed(model, vocab, samples, length, how) -> float:
    """Seconds of one generate() call of `length` characters per sample."""
    with steered(how):
        if model.head.weight.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        sample.generate(model, vocab, length=length, num_samples=samples, seed=0)
        if model.head.weight.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", default="1,8,64", help="batch sizes (default: %(default)s)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--contenders", default=None,
                   help=f"comma-separated, from {','.join(CONTENDERS)} (default: {DEFAULTS['cpu']}; "
                        f"on cuda {DEFAULTS['cuda']})")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians reported (default: 5)")
    p.add_argument("--seconds", type=float, default=1.0, help="target seconds per run (default: 1)")
    p.add_argument("--hidden-size", type=int, default=512)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--embedding-size", type=int, default=64)
    p.add_argument("--vocab-size", type=int, default=65)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    common.add_output_flags(p)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = (args.contenders or DEFAULTS[args.device]).split(",")
    unknown = set(names) - set(CONTENDERS)
    if unknown:
        p.error(f"unknown contenders {sorted(unknown)}")
    if args.device == "cpu" and "op-loop" in names:
        p.error("op-loop is the GPU's alternative to the CUDA graph; on the CPU it is `fused`")
    vocab = Vocab(["\n"] + [chr(32 + i) for i in range(args.vocab_size - 1)])
    models = {}
    for cell in {CONTENDERS[name][0] for name in names}:
        torch.manual_seed(0)
        models[cell] = CharRNN(ModelConfig(vocab_size=args.vocab_size, cell=cell, hidden_size=args.hidden_size,
                                           num_layers=args.num_layers, embedding_size=args.embedding_size)
                               ).to(args.device).eval()
    ratios = [(a, b) for a, b in RATIOS if a in names and b in names]
    name = "sample-cuda" if args.device == "cuda" else "sample"
    config = {"device": args.device, "hidden_size": args.hidden_size, "num_layers": args.num_layers,
              "embedding_size": args.embedding_size, "vocab_size": args.vocab_size, "rounds": args.rounds,
              "seconds": args.seconds, "contenders": names, "ratios": ratios}
    rows = []
    for samples in (int(s) for s in args.samples.split(",")):
        # Each contender's length from a short first run: about `seconds` per run.
        lengths = {}
        for n in names:
            cell, how = CONTENDERS[n]
            probe = 8
            lengths[n] = max(probe, int(probe * args.seconds / max(timed(models[cell], vocab, samples, probe, how),
                                                                   1e-6)))
        runs = {n: [] for n in names}
        for r in range(args.rounds):
            for n in names[r % len(names):] + names[:r % len(names)]:
                cell, how = CONTENDERS[n]
                runs[n].append(samples * lengths[n] / timed(models[cell], vocab, samples, lengths[n], how))
        row = {"samples": samples, "length": lengths,
               "chars_per_s": {n: statistics.median(v) for n, v in runs.items()}, "runs": runs}
        rows.append(row)
        path = common.save(args, name, config, rows, device=args.device)
        print(f"{samples} samples: " + ", ".join(f"{n} {row['chars_per_s'][n]:,.0f}" for n in names) + " chars/s",
              file=sys.stderr)

    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"\n{args.num_layers} x {args.hidden_size} cells, embedding {args.embedding_size}, vocabulary "
          f"{args.vocab_size}; {where}; characters per second, median of {args.rounds} interleaved rounds\n")
    print("| " + " | ".join(["samples", *names, *(f"{a} / {b}" for a, b in ratios)]) + " |")
    print("|---:|" + "---:|" * (len(names) + len(ratios)))
    for row in rows:
        cps = row["chars_per_s"]
        print("| " + " | ".join([str(row["samples"]), *(f"{cps[n]:,.0f}" for n in names),
                                 *(f"{cps[a] / cps[b]:.2f}x" for a, b in ratios)]) + " |")
    print(f"\nwrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
