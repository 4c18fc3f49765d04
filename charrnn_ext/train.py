"""The trainer: truncated BPTT over B contiguous columns, one optimizer step per window.

    with Trainer(TrainConfig(data="input.txt", max_steps=1000)) as trainer:
        summary = trainer.run()

Hidden state is carried (detached) from window to window and reset to zeros at every
epoch, for training and for evaluation alike. Everything needed to continue exactly
(model, optimizer, scheduler, position, carried state, RNG states) is in each checkpoint
(checkpoint.py). Launched by torchrun, the same code trains data-parallel (distributed.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from . import distributed
from .checkpoint import (CHECKPOINT_FORMAT, load_checkpoint, resumed_config, rng_state, save_checkpoint,
                         seed_everything, state_from_list, state_to_list)
from .data import Batches, Vocab, corpus_path, read_text, split_batches
from .errors import CharRNNError, TrainingError
from .model import CharRNN, ModelConfig, detach_state, resolve_device
from .options import option, same_option, validate
from .report import RunReport

OPTIMIZERS = ("adam", "adagrad", "rmsprop", "sgd")
STOP_REASONS = ("interrupted", "max_steps", "max_epochs", "time_limit")  # the first that holds wins


@dataclass
class TrainConfig:
    # data
    data: str | None = option(None, "UTF-8 text file to train on (default: the --corpus)")
    corpus: str = option("tinyshakespeare", "named corpus: in --data-dir, $CHARRNN_DATA_DIR or ~/.cache/charrnn, "
                         "else downloaded")
    data_dir: str | None = option(None, "directory to look in first for the named corpus (default: none)")
    encoding_errors: str = option("strict", "invalid UTF-8: strict (an error), replace or ignore",
                                  choices=("strict", "replace", "ignore"))
    val_frac: float = option(0.1, "fraction of the text (its end) held out for validation", minimum=0.0, below=1.0)
    test_frac: float = option(0.0, "fraction held out for a final test loss", minimum=0.0, below=1.0)
    # model
    cell: str = same_option(ModelConfig, "cell")
    hidden_size: int = same_option(ModelConfig, "hidden_size")
    num_layers: int = same_option(ModelConfig, "num_layers")
    embedding_size: int = same_option(ModelConfig, "embedding_size")
    dropout: float = same_option(ModelConfig, "dropout")
    # optimisation
    batch_size: int = option(32, "parallel text columns per window", minimum=1)
    seq_len: int = option(100, "window length (steps of truncated backpropagation through time)", minimum=1)
    optimizer: str = option("adam", "adam, adagrad, rmsprop or sgd", choices=OPTIMIZERS)
    lr: float = option(2e-3, "learning rate", above=0.0)
    lr_decay: float = option(0.85, "per-epoch decay: lr * lr_decay**epoch", above=0.0)
    momentum: float = option(0.9, "sgd momentum", minimum=0.0)
    weight_decay: float = option(0.0, "L2 weight decay", minimum=0.0)
    grad_clip: float = option(5.0, "gradient clipping threshold; 0 disables", minimum=0.0)
    clip_mode: str = option("norm", "norm (global L2 norm) or value (elementwise, as min-char-rnn)",
                            choices=("norm", "value"))
    loss_reduction: str = option("mean", "mean over characters, or sum over the window (min-char-rnn)",
                                 choices=("mean", "sum"))
    # budget: the first limit reached stops the run
    max_steps: int | None = option(None, "stop after this many optimizer steps in total", minimum=0)
    max_epochs: int | None = option(None, "stop after this many epochs", minimum=0)
    time_limit: float | None = option(600.0, "stop after this many seconds of this run; 0: no limit")
    # evaluation and output
    eval_every: int = option(250, "validate and checkpoint every N steps (0: only at the end)", minimum=0)
    eval_windows: int | None = option(None, "at most this many validation windows per evaluation", minimum=1)
    log_every: int = option(20, "write a metrics line every N steps", minimum=1)
    out: str = option("runs/charrnn", "directory for checkpoints (last.pt, best.pt), metrics.jsonl and loss.png")
    plot: bool = option(True, "write loss.png")
    progress: bool = option(True, "show a progress bar")
    # run
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    dtype: str = option("float32", "float32 or float64", choices=("float32", "float64"))
    seed: int = option(1337, "random seed (initialisation, dropout)")
    threads: int | None = option(None, "CPU threads for torch (default: torch's choice)", minimum=1)
    max_nonfinite: int = option(20, "stop after this many non-finite steps in a row", minimum=1)
    flush_denormal: bool = option(True, "CPU: treat subnormal floats as zero (much faster vanishing gradients)")

    def __post_init__(self):
        validate(self)

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig.from_dict({**asdict(self), "vocab_size": vocab_size})

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise CharRNNError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(**d)


def make_optimizer(cfg: TrainConfig, params):
    params = list(params)
    # torch's fused kernels update every parameter in one pass instead of a dozen tensor ops per
    # parameter, each a pass over memory and a dispatch of its own; bench/bench_train.py times the
    # training step they are part of. (Adagrad's fused kernel is CPU-only, RMSprop has none: those
    # take the foreach path.)
    on = params[0].device.type
    fast = {"fused": True} if on in ("cpu", "cuda") else {"foreach": True}
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fast)
    if cfg.optimizer == "adagrad":
        # The seed's update, param -= lr * g / sqrt(sum g^2 + 1e-8), exactly.
        return torch.optim.Adagrad(params, lr=cfg.lr, initial_accumulator_value=1e-8, eps=0.0,
                                   weight_decay=cfg.weight_decay, **(fast if on == "cpu" else {"foreach": True}))
    if cfg.optimizer == "rmsprop":
        # char-rnn's rmsprop: decay 0.95, eps 1e-8.
        return torch.optim.RMSprop(params, lr=cfg.lr, alpha=0.95, eps=1e-8, weight_decay=cfg.weight_decay,
                                   foreach=True)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **fast)


class Trainer:
    def __init__(self, cfg: TrainConfig | None, resume: str | os.PathLike | None = None,
                 overrides: dict | None = None):
        """cfg for a new run; or resume=CHECKPOINT, with overrides limited to what
        checkpoint.RESUME_OVERRIDABLE allows (cfg is then ignored)."""
        ckpt = load_checkpoint(resume) if resume is not None else None
        if ckpt is not None:
            cfg = TrainConfig.from_dict(resumed_config(ckpt["config"], overrides or {}))
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.dist = distributed.from_environment(resolve_device(cfg.device), cfg.batch_size)
        self.device, self.world, self.is_main = self.dist.device, self.dist.world, self.dist.is_main
        if cfg.flush_denormal and self.device.type == "cpu":
            # Gradients vanishing back through a tanh RNN reach subnormal magnitudes, which x86
            # handles in slow microcode assists, so the steps that meet them stall. Values below
            # 1e-38 carry no information for training.
            torch.set_flush_denormal(True)
        self.out = Path(cfg.out)
        _check_out_dir(self.out)
        self._load_data(ckpt)
        self._build_model()
        self.step = self.epoch = self.window = 0  # the next window of the current epoch
        self.hidden = None                        # the state carried into it
        self.nonfinite_in_a_row = self.skipped_steps = 0
        self.best_val_loss = math.inf
        self.val_loss = self.train_loss = None
        self.history = {"step": [], "train_loss": [], "val_step": [], "val_loss": []}
        if ckpt is not None:
            self._restore(ckpt)
        self.net = self.dist.wrap(self.model)  # what a training step calls
        self._interrupted = False

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:  # after a failure a peer may be gone: leave without a last collective
            self.dist.close()

    def _load_data(self, ckpt) -> None:
        cfg = self.cfg
        self.data_path = Path(cfg.data) if cfg.data else corpus_path(cfg.corpus, cfg.data_dir)
        text = read_text(self.data_path, cfg.encoding_errors)
        sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if ckpt is not None and ckpt["data"]["sha256"] != sha:
            raise TrainingError(f"{self.data_path} is not the text this checkpoint was trained on "
                                f"(sha256 differs); resume needs the same data")
        if len(set(self.dist.gather_objects(sha))) > 1:
            raise TrainingError(f"the processes read different texts from {self.data_path} (sha256 differs); "
                                "every node needs the same data")
        self.vocab = Vocab(ckpt["vocab"]) if ckpt is not None else Vocab.from_text(text)
        self.data_info = {"path": str(self.data_path.resolve()), "sha256": sha, "chars": len(text)}
        ids = self.vocab.encode(text).to(self.device)  # once, not a copy per window
        self.train_batches, self.val_batches, self.test_batches = (
            None if b is None else self.dist.shard(b)
            for b in split_batches(ids, cfg.batch_size, cfg.seq_len, cfg.val_frac, cfg.test_frac))

    def _build_model(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed)
        self.model_config = cfg.model_config(len(self.vocab))
        self.model = CharRNN(self.model_config).to(device=self.device, dtype=getattr(torch, cfg.dtype))
        self.dist.seed_dropout(cfg.seed)  # the same model on every rank, each its own dropout masks
        self.params = list(self.model.parameters())
        self.optimizer = make_optimizer(cfg, self.params)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=cfg.lr_decay)

    def _restore(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step, self.epoch, self.window = ckpt["step"], ckpt["epoch"], ckpt["window"]
        self.hidden = self.dist.columns(state_from_list(ckpt["hidden"], self.model_config.cell, self.device))
        self.nonfinite_in_a_row, self.skipped_steps = ckpt["nonfinite_in_a_row"], ckpt["skipped_steps"]
        self.train_loss, self.val_loss = ckpt["train_loss"], ckpt["val_loss"]
        self.best_val_loss = math.inf if ckpt["best_val_loss"] is None else ckpt["best_val_loss"]
        self.history = ckpt["history"]
        # Last, so nothing above (model construction included) disturbs the streams.
        self.dist.restore_rng(ckpt.get("rng_ranks") or [ckpt["rng"]], self.cfg.seed, self.step)

    def state_dict(self) -> dict:
        """The checkpoint (its keys: checkpoint.py). Every rank must call it: it gathers."""
        rng = rng_state(self.device)
        return {"format": CHECKPOINT_FORMAT, "config": asdict(self.cfg), "model_config": self.model_config.to_dict(),
                "vocab": list(self.vocab.chars), "data": dict(self.data_info), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "step": self.step, "epoch": self.epoch, "window": self.window,
                "hidden": state_to_list(self.dist.gather_columns(self.hidden)),  # all B columns
                "rng": rng, "rng_ranks": self.dist.gather_objects(rng), "world_size": self.dist.world,
                "nonfinite_in_a_row": self.nonfinite_in_a_row, "skipped_steps": self.skipped_steps,
                "train_loss": self.train_loss, "val_loss": self.val_loss,
                "best_val_loss": None if math.isinf(self.best_val_loss) else self.best_val_loss,
                "history": self.history, "torch_version": str(torch.__version__), "time": time.time()}

    def save(self, *names: str) -> None:
        """Write last.pt (or the names given); every rank calls it, rank 0 alone writes."""
        state = self.state_dict()
        if self.is_main:
            for name in names or ("last.pt",):
                save_checkpoint(state, self.out / name)

    def train_step(self, x, y) -> tuple[float, bool]:
        """One window: forward, backward, clip, step. Returns (loss, applied)."""
        cfg, world = self.cfg, self.dist.world
        self.model.train()
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        logits, hidden = self.net(x, self.hidden)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction=cfg.loss_reduction)
        self.optimizer.zero_grad(set_to_none=True)
        # The ranks' gradients are averaged. The mean of equal shares' means is the mean over all
        # B columns; a sum over all columns is W times the mean of the ranks' sums.
        with self.dist.communicating():
            (loss * world if cfg.loss_reduction == "sum" else loss).backward()
        # Clipping sees the averaged gradients, so every rank clips (and steps) identically.
        max_norm = cfg.grad_clip if cfg.clip_mode == "norm" and cfg.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        if cfg.clip_mode == "value" and cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_value_(self.params, cfg.grad_clip)
        # The loss over all B columns, as one process reports it (and all ranks agree).
        value = self.dist.sum([loss.item()])[0] / (world if cfg.loss_reduction == "mean" else 1)
        if not (math.isfinite(value) and torch.isfinite(norm)):
            # Keep parameters and carried state as they were; the window is consumed.
            self.optimizer.zero_grad(set_to_none=True)
            return value, False
        self.optimizer.step()
        self.hidden = detach_state(hidden)
        return value, True

    @torch.no_grad()
    def evaluate(self, batches: Batches | None = None, max_windows: int | None = None) -> float | None:
        """Mean loss in nats per character, state carried across windows from zeros; each
        rank evaluates its columns and the sums are added up over the ranks."""
        batches = self.val_batches if batches is None else batches
        if batches is None:
            return None
        was_training = self.model.training
        self.model.eval()
        hidden, total, count = None, 0.0, 0
        n = len(batches) if max_windows is None else min(len(batches), max_windows)
        for k in range(n if batches.batch_size else 0):  # a rank may own no column of a small split
            x, y = (t.to(self.device) for t in batches.window(k))
            logits, hidden = self.model(x, hidden)
            total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
            count += y.numel()
        self.model.train(was_training)
        total, count = self.dist.sum([total, count])
        return total / count

    def run(self, callback=None) -> dict:
        """Train until a limit (steps, epochs, seconds) or Ctrl-C. callback(trainer, loss)
        runs after every step. Returns a summary dict (also the last metrics line)."""
        cfg = self.cfg
        chars = cfg.batch_size * cfg.seq_len  # per step, over all ranks
        with RunReport(self.out, active=self.is_main, progress=cfg.progress, plot=cfg.plot, chars_per_step=chars,
                       per_char=chars if cfg.loss_reduction == "sum" else 1, total_steps=cfg.max_steps,
                       first_step=self.step, desc=f"train {cfg.cell}") as report:
            with self._ctrl_c_between_steps(report):
                reason, last_eval_step = self._loop(report, callback)
            report.flush(self)
            if reason == "interrupted":
                self.save()  # no evaluation: the user wants out now
                report.plot(self)
            elif last_eval_step != self.step:
                self._eval_and_save(report)
            summary = {"step": self.step, "epoch": self.epoch, "stop": reason,
                       "train_loss": self.train_loss, "val_loss": self.val_loss,
                       "best_val_loss": None if math.isinf(self.best_val_loss) else self.best_val_loss,
                       "chars_per_s": report.chars_per_s(), "train_time_s": report.train_seconds,
                       "elapsed_s": report.elapsed(), "skipped_steps": self.skipped_steps,
                       "checkpoint": str(self.out / "last.pt")}
            if reason != "interrupted" and self.test_batches is not None:
                summary["test_loss"] = self.evaluate(self.test_batches)
            report.write({"final": True, **summary})
        return summary

    def _loop(self, report: RunReport, callback) -> tuple[str, int | None]:
        """Steps until a stop reason holds: (the reason, the step of the last evaluation)."""
        cfg, last_eval_step = self.cfg, None
        while (reason := self._stop_reason(report.elapsed())) is None:
            t0 = time.perf_counter()
            value, applied = self.train_step(*self.train_batches.window(self.window))
            self.step, self.window = self.step + 1, self.window + 1
            if self.window == len(self.train_batches):  # a new epoch starts from zeros
                self.window, self.hidden, self.epoch = 0, None, self.epoch + 1
                self.scheduler.step()
            report.step(value, time.perf_counter() - t0, applied)
            if callback is not None:
                callback(self, value)
            self._count_nonfinite(value, applied, report)
            if self.step % cfg.log_every == 0:
                report.flush(self)
            # Not during a non-finite streak: the last checkpoint stays the last good step's.
            if cfg.eval_every and self.step % cfg.eval_every == 0 and applied:
                report.flush(self)
                self._eval_and_save(report)
                last_eval_step = self.step
        return reason, last_eval_step

    @contextlib.contextmanager
    def _ctrl_c_between_steps(self, report: RunReport):
        """Ctrl-C between two parameter updates, never in the middle of one: a checkpoint
        written from a half-applied optimizer step would not resume exactly."""
        def on_sigint(signum, frame):
            if self._interrupted:  # a second Ctrl-C: stop now, without a checkpoint
                raise KeyboardInterrupt
            self._interrupted = True
            report.say("interrupted: finishing this step and writing a checkpoint (Ctrl-C again to abort)")
        main = threading.current_thread() is threading.main_thread()  # signals reach only that one
        old_handler = signal.signal(signal.SIGINT, on_sigint) if main else None
        try:
            yield
        finally:
            if main:
                signal.signal(signal.SIGINT, old_handler)

    def _count_nonfinite(self, value: float, applied: bool, report: RunReport) -> None:
        if applied:
            self.nonfinite_in_a_row = 0
            return
        self.nonfinite_in_a_row += 1
        self.skipped_steps += 1
        report.write({"step": self.step, "nonfinite_loss": str(value)})
        if self.nonfinite_in_a_row >= self.cfg.max_nonfinite:
            last = self.out / "last.pt"
            kept = f"the last good checkpoint is kept at {last}" if last.exists() else "no checkpoint yet"
            raise TrainingError(f"loss or gradient was not finite for {self.nonfinite_in_a_row} steps in a row "
                                f"(step {self.step}); stopping, {kept}. Try a lower --lr or --grad-clip, "
                                "or --dtype float64")

    def _stop_reason(self, elapsed: float) -> str | None:
        cfg = self.cfg
        hits = [self._interrupted,
                cfg.max_steps is not None and self.step >= cfg.max_steps,
                cfg.max_epochs is not None and self.epoch >= cfg.max_epochs,
                cfg.time_limit is not None and elapsed >= cfg.time_limit]
        # Clocks and Ctrl-C are per process: every rank stops at the same step.
        return next((reason for reason, hit in zip(STOP_REASONS, self.dist.any(hits)) if hit), None)

    def _eval_and_save(self, report: RunReport) -> None:
        val = self.evaluate(max_windows=self.cfg.eval_windows)
        improved = False
        if val is not None:
            self.val_loss = val
            self.history["val_step"].append(self.step)
            self.history["val_loss"].append(val)
            improved = val < self.best_val_loss
            self.best_val_loss = min(val, self.best_val_loss)
            report.write({"step": self.step, "epoch": self.epoch, "val_loss": val, "best_val_loss": self.best_val_loss})
        saved = ["last.pt", *(["best.pt"] if improved else [])]
        self.save(*saved)
        report.evaluated(self, val, saved)
        report.plot(self)


def _check_out_dir(out: Path) -> None:
    """--out must be a directory or not exist yet: say so before any work, not when the first
    metrics line is written."""
    for p in (out, *out.parents):
        if p.exists() and not p.is_dir():
            what = f"--out {out} is" if p == out else f"--out {out} cannot be created: {p} is"
            raise CharRNNError(f"{what} an existing file, not a directory; choose another --out")
        if p.exists():
            return


def train(cfg: TrainConfig | None = None, resume=None, overrides=None, callback=None, **kw) -> dict:
    """Convenience: train(data="input.txt", max_steps=100) or train(resume="out/last.pt")."""
    if cfg is None and resume is None:
        cfg = TrainConfig(**kw)
    with Trainer(cfg, resume=resume, overrides=overrides) as trainer:
        return trainer.run(callback=callback)
