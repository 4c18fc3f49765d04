"""Dropout inside the fused op against dropout outside it, interleaved in one process: the op
alone, then the training step.

    python bench/bench_dropout.py --data-dir DIR --seconds 120

Contenders:
  fused     the dropout drawn inside the fused op's kernels (rnn_tanh(..., dropout=p); in the
            step, the model as it is: FusedRNN's dropout between layers and before the head)
  unfused   torch's dropout outside the op: F.dropout on the op's output (in the step, F.dropout
            between the layers and nn.Dropout before the head, as the other cells drop)
  none      (the op only) the op without dropout, the floor both are measured against

The op: forward and backward of one layer shaped as the default model's second (T=100, B=32,
E=H=512, float32), p = --dropout (default: the trainer's); medians of interleaved calls.

The step: `charrnn train`'s model and step (the trainer's defaults: 2 x 512 fused rnn,
embedding 64, batch 32 x 100, Adam; dropout --dropout) twice, with the same initial
parameters, fused and unfused. They alternate in blocks of steps (so load on the machine hits
both alike); the medians of the blocks' ms per step and their ratio are reported, then a
profile of each step by part (bench/stock.py).

Result: `dropout`, in bench/out/ or, with --publish, bench/results/ (bench/common.py). Rows
(op, then step) of the same keys: measure, none_ms (op only), fused_ms, unfused_ms,
unfused_over_fused, count (calls or blocks), and the lists of every call's or block's ms in
runs (the step's row also its profile by part, profile_ms)."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from charrnn_ext import rnn_tanh  # noqa: E402
from charrnn_ext.train import TrainConfig, Trainer  # noqa: E402
import common  # noqa: E402  (bench/ is on sys.path when run as a script)
import stock  # noqa: E402

DROPOUT = TrainConfig.__dataclass_fields__["dropout"].default  # the trainer's


def unfused_forward(rnn, input, hx=None):
    """FusedRNN.forward (time-major, batched) with the dropout between layers outside the op."""
    hx = input.new_zeros(rnn.num_layers, input.shape[1], rnn.hidden_size) if hx is None else hx
    layer_input, h_n = input, []
    for layer in range(rnn.num_layers):
        weights = [getattr(rnn, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        output, h_last = rnn_tanh(layer_input, hx[layer], *weights)
        h_n.append(h_last)
        if layer < rnn.num_layers - 1 and rnn.training:
            output = F.dropout(output, rnn.dropout, training=True)
        layer_input = output
    return output, torch.stack(h_n)


def time_op(seconds: float, p: float) -> dict:
    T, B, E, H = 100, 32, 512, 512
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, B, E, generator=g).requires_grad_()
    h0 = torch.zeros(B, H)
    w_ih = (torch.randn(H, E, generator=g) / E**0.5).requires_grad_()
    w_hh = (torch.randn(H, H, generator=g) / H**0.5).requires_grad_()
    b_ih, b_hh = torch.zeros(H, requires_grad=True), torch.zeros(H, requires_grad=True)
    grad = torch.randn(T, B, H, generator=g)
    variants = {"none": lambda: rnn_tanh(x, h0, w_ih, w_hh, b_ih, b_hh)[0],
                "fused": lambda: rnn_tanh(x, h0, w_ih, w_hh, b_ih, b_hh, dropout=p)[0],
                "unfused": lambda: F.dropout(rnn_tanh(x, h0, w_ih, w_hh, b_ih, b_hh)[0], p)}
    ms = {name: [] for name in variants}
    end = time.monotonic() + seconds
    while time.monotonic() < end or len(ms["none"]) < 4:
        for name, forward in variants.items():
            t0 = time.perf_counter()
            forward().backward(grad)
            ms[name].append((time.perf_counter() - t0) * 1e3)
    med = {name: statistics.median(v[1:]) for name, v in ms.items()}  # the first calls warm up
    print(f"op T={T} B={B} E={E} H={H} p={p} forward + backward, ms, median of {len(ms['none']) - 1} interleaved: "
          f"no dropout {med['none']:.1f}, fused dropout {med['fused']:.1f} (+{med['fused'] - med['none']:.1f}), "
          f"F.dropout {med['unfused']:.1f} (+{med['unfused'] - med['none']:.1f})")
    return {"measure": f"op T={T} B={B} E={E} H={H} p={p}", "none_ms": med["none"], "fused_ms": med["fused"],
            "unfused_ms": med["unfused"], "unfused_over_fused": med["unfused"] / med["fused"],
            "count": len(ms["none"]) - 1, "runs": ms}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=120.0, help="interleaved timing of the step (default: 120)")
    p.add_argument("--op-seconds", type=float, default=30.0, help="interleaved timing of the op (default: 30)")
    p.add_argument("--block", type=int, default=4, help="steps per block (default: 4)")
    p.add_argument("--data-dir", default=None, help="directory holding tinyshakespeare.txt")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--dropout", type=float, default=DROPOUT,
                   help="p of the op and the step (default: the trainer's, %(default)s)")
    common.add_output_flags(p)
    args = p.parse_args(argv)

    def trainer():
        return Trainer(TrainConfig(data_dir=args.data_dir, threads=args.threads, device="cpu", progress=False,
                                   plot=False, out=tempfile.mkdtemp(prefix="charrnn-bench-"), eval_every=0,
                                   dropout=args.dropout))
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average at start {os.getloadavg()}, {torch.get_num_threads()} threads", file=sys.stderr)
    config = {"op_seconds": args.op_seconds, "seconds": args.seconds, "block": args.block,
              "dropout": args.dropout}
    rows = [time_op(args.op_seconds, args.dropout)]
    common.save(args, "dropout", config, rows)
    fused, unfused = trainer(), trainer()
    unfused.model.rnn.forward = types.MethodType(unfused_forward, unfused.model.rnn)
    unfused.model.drop = torch.nn.Dropout(unfused.cfg.dropout)
    assert fused.model.rnn.output_dropout == fused.cfg.dropout > 0  # the model under test drops in the op
    batches = fused.train_batches

    ms = {"fused": [], "unfused": []}
    k, start = 0, time.monotonic()
    for t in (fused, unfused):  # warm-up
        t.train_step(*batches.window(0))
    while time.monotonic() - start < args.seconds or len(ms["unfused"]) < 3:
        for name, t in (("fused", fused), ("unfused", unfused)):
            t0 = time.perf_counter()
            for j in range(args.block):
                t.train_step(*batches.window((k + j) % len(batches)))
            ms[name].append((time.perf_counter() - t0) / args.block * 1e3)
        k += args.block
    med = {name: statistics.median(v) for name, v in ms.items()}
    print(f"ms per step, median of {len(ms['fused'])} blocks of {args.block} steps: fused {med['fused']:.1f}, "
          f"unfused {med['unfused']:.1f}, unfused / fused {med['unfused'] / med['fused']:.2f}x")

    for t in (fused, unfused):
        stock.tag_parts(t.model)
    windows = iter(range(10**9))
    profiles = {name: stock.profile_steps(lambda t=t: t.train_step(*batches.window(next(windows) % len(batches))), 5)
                for name, t in (("fused", fused), ("unfused", unfused))}
    print("\n| step part | fused ms | unfused ms |\n|---|---:|---:|")
    for part in stock.PARTS:
        print(f"| {part} | {profiles['fused'][part]:.1f} | {profiles['unfused'][part]:.1f} |")
    print(f"| step | {sum(profiles['fused'].values()):.1f} | {sum(profiles['unfused'].values()):.1f} |")
    rows.append({"measure": f"train step, dropout {fused.cfg.dropout}, {args.block} steps a block", "none_ms": None,
                 "fused_ms": med["fused"], "unfused_ms": med["unfused"],
                 "unfused_over_fused": med["unfused"] / med["fused"], "count": len(ms["fused"]), "runs": ms,
                 "profile_ms": profiles})
    path = common.save(args, "dropout", config, rows)
    print(f"load average at end {os.getloadavg()}", file=sys.stderr)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
