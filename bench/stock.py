"""`charrnn train`'s step against the same model in stock PyTorch, side by side in one process.

The stock model is what a user writes by hand: nn.Embedding, nn.RNN(tanh, dropout between the
layers), nn.Dropout, nn.Linear, F.cross_entropy, torch.optim.Adam and clip_grad_norm_, with the
hidden state carried across windows. Both train on the same windows, in alternating blocks of
steps (so load on the machine hits both alike), and each step is profiled into the parts that
bench_train.py reports: the recurrent op's forward and backward, dropout, head and loss, the
optimizer (clipping included) and the rest.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

PARTS = ("op forward", "op backward", "dropout", "head and loss", "optimizer", "other")


class StockCharRNN(nn.Module):
    def __init__(self, vocab_size: int, embedding_size: int, hidden_size: int, num_layers: int, dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding_size)
        self.rnn = nn.RNN(embedding_size, hidden_size, num_layers, nonlinearity="tanh", batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, idx, hidden=None):
        out, hidden = self.rnn(self.embed(idx), hidden)
        return self.head(self.drop(out)), hidden


class StockTrainer:
    """The hand-written loop: one window per call, state carried (detached)."""

    def __init__(self, cfg, vocab_size: int, device):
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        self.model = StockCharRNN(vocab_size, cfg.embedding_size, cfg.hidden_size, cfg.num_layers,
                                  cfg.dropout).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.hidden = None

    def train_step(self, x, y):
        logits, hidden = self.model(x, self.hidden)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.hidden = hidden.detach()
        return loss.item(), True


def tag_parts(model: nn.Module) -> None:
    """Name the profiler range of each part's forward: the recurrent stack ("## rnn"), the
    dropout before the head ("## dropout") and the head ("## head"). The optimizer's step and
    zero_grad are named by torch ("Optimizer.step#..."); clipping is wrapped here."""
    for name, part in (("rnn", model.rnn), ("dropout", model.drop), ("head", model.head)):
        ranges = []
        part.register_forward_pre_hook(lambda m, a, ranges=ranges, name=name:
                                       ranges.append(record_function(f"## {name}").__enter__()))
        part.register_forward_hook(lambda m, a, out, ranges=ranges: ranges.pop().__exit__(None, None, None))


def _named_clipping(clip):
    def clip_in_range(*args, **kwargs):
        with record_function("## optimizer"):
            return clip(*args, **kwargs)
    return clip_in_range


def _part_of_forward(event) -> str:
    names = []
    while event is not None:
        names.append(event.name)
        event = event.cpu_parent
    if any("dropout" in n or "bernoulli" in n for n in names):
        return "dropout"
    if "## rnn" in names:
        return "op forward"
    if "## head" in names or any(k in n for n in names for k in ("cross_entropy", "log_softmax", "nll_loss")):
        return "head and loss"
    if "## optimizer" in names or any(n.startswith("Optimizer.") for n in names):
        return "optimizer"
    return "other"


def profile_steps(step, steps: int) -> dict:
    """Milliseconds per step of each part (self CPU time of every event, backward events
    charged to the part whose forward op created them, through autograd's sequence numbers)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        wall = time.perf_counter() - t0
    events = list(prof.events())
    forward_part, totals = {}, dict.fromkeys(PARTS, 0.0)
    backward = []
    for e in events:
        root = e
        while root.cpu_parent is not None:
            root = root.cpu_parent
        if root.name.startswith("autograd::engine::evaluate_function"):
            backward.append((e, root))
            continue
        part = _part_of_forward(e)
        if e.sequence_nr >= 0:
            forward_part.setdefault((e.thread, e.sequence_nr), part)
        totals[part] += e.self_cpu_time_total
    for e, root in backward:
        part = forward_part.get((root.thread, root.sequence_nr), "other")
        if part == "op forward":
            part = "op backward"
        totals[part] += e.self_cpu_time_total
    measured = sum(totals.values())
    # Shares from the profile, scaled to the wall time of a step (the profiler's own cost dropped).
    return {part: wall / steps * 1e3 * t / measured for part, t in totals.items()}


def side_by_side(trainer, stock: StockTrainer, seconds: float, block: int = 4) -> dict:
    """Alternate blocks of `block` steps of each until `seconds` have passed; chars/s per block."""
    batches, chars = trainer.train_batches, trainer.cfg.batch_size * trainer.cfg.seq_len
    rates = {"charrnn": [], "stock": []}
    k, start = 0, time.monotonic()
    while time.monotonic() - start < seconds or not rates["stock"]:
        for name, t in (("charrnn", trainer), ("stock", stock)):
            t0 = time.perf_counter()
            for j in range(block):
                x, y = batches.window((k + j) % len(batches))
                t.train_step(x, y)
            rates[name].append(block * chars / (time.perf_counter() - t0))
        k += block
    med = {name: statistics.median(r) for name, r in rates.items()}
    return {"blocks": len(rates["stock"]), "block_steps": block, "chars_per_s": med,
            "ratio": med["charrnn"] / med["stock"], "per_block": rates}


def compare(trainer, seconds: float, profile_steps_each: int = 5) -> dict:
    stock = StockTrainer(trainer.cfg, len(trainer.vocab), trainer.device)
    stock.model.to(dtype=next(trainer.model.parameters()).dtype)
    tag_parts(trainer.model)
    tag_parts(stock.model)
    windows = iter(range(10**9))

    def step_of(t):
        def step():
            x, y = trainer.train_batches.window(next(windows) % len(trainer.train_batches))
            t.train_step(x, y)
        return step
    for t in (trainer, stock):  # warm-up: first-call allocations, thread pools
        for _ in range(2):
            step_of(t)()
    timing = side_by_side(trainer, stock, seconds)
    clip = torch.nn.utils.clip_grad_norm_
    torch.nn.utils.clip_grad_norm_ = _named_clipping(clip)
    try:
        profiles = {name: profile_steps(step_of(t), profile_steps_each)
                    for name, t in (("charrnn", trainer), ("stock", stock))}
    finally:
        torch.nn.utils.clip_grad_norm_ = clip
    return {**timing, "profile_ms_per_step": profiles}


def tables(result: dict) -> str:
    cps = result["chars_per_s"]
    lines = ["| | charrnn train | stock PyTorch | ratio |", "|---|---:|---:|---:|",
             f"| chars/s (median of {result['blocks']} blocks of {result['block_steps']} steps) | "
             f"{cps['charrnn']:,.0f} | {cps['stock']:,.0f} | {result['ratio']:.2f}x |", "",
             "| step part | charrnn train ms | share | stock ms | share |", "|---|---:|---:|---:|---:|"]
    prof = result["profile_ms_per_step"]
    total = {name: sum(p.values()) for name, p in prof.items()}
    for part in PARTS:
        a, b = prof["charrnn"][part], prof["stock"][part]
        lines.append(f"| {part} | {a:.1f} | {a / total['charrnn']:.0%} | {b:.1f} | {b / total['stock']:.0%} |")
    lines.append(f"| step | {total['charrnn']:.1f} | | {total['stock']:.1f} | |")
    return "\n".join(lines)
