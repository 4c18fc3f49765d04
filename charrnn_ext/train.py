"""The trainer: truncated BPTT over B contiguous columns, one optimizer step per window.

    trainer = Trainer(TrainConfig(data="input.txt", max_steps=1000))
    trainer.run()

Hidden state is carried (detached) from window to window and reset to zeros at every
epoch, for training and for evaluation alike. Everything needed to continue exactly
(model, optimizer, scheduler, position, carried state, RNG states) is in each checkpoint.

Launched by torchrun with WORLD_SIZE > 1, the same code trains data-parallel
(DistributedDataParallel; gloo on CPUs, nccl with one GPU per process): rank r owns the
batch columns [r*B/W, (r+1)*B/W) and the state it carries, gradients are averaged over the
ranks (so they equal one process's over all B columns), and rank 0 alone writes checkpoints,
metrics and plots. README.md, "Train on several processes or machines".
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass, fields
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from .data import Batches, Vocab, corpus_path, fit_batches, read_text, split
from .model import CharRNN, ModelConfig, detach_state, state_from_list, state_to_list

OPTIMIZERS = ("adam", "adagrad", "rmsprop", "sgd")
CHECKPOINT_FORMAT = 1
STOP_REASONS = ("interrupted", "max_steps", "max_epochs", "time_limit")  # the first that holds wins


@dataclass
class TrainConfig:
    # data
    data: str | None = None            # a UTF-8 text file; None: the named corpus
    corpus: str = "tinyshakespeare"
    data_dir: str | None = None        # where to look for the named corpus first
    encoding_errors: str = "strict"    # strict | replace | ignore
    val_frac: float = 0.1
    test_frac: float = 0.0
    # model
    cell: str = "rnn"
    hidden_size: int = 512
    num_layers: int = 2
    embedding_size: int = 64
    dropout: float = 0.25
    # optimisation
    batch_size: int = 32
    seq_len: int = 100
    optimizer: str = "adam"
    lr: float = 2e-3
    lr_decay: float = 0.9              # lr * lr_decay**epoch
    momentum: float = 0.9              # sgd only
    weight_decay: float = 0.0
    grad_clip: float = 5.0             # 0: no clipping
    clip_mode: str = "norm"            # norm (global L2 norm) | value (elementwise, min-char-rnn)
    loss_reduction: str = "mean"       # mean | sum (over the window, min-char-rnn)
    # budget: the first limit reached stops the run
    max_steps: int | None = None
    max_epochs: int | None = None
    time_limit: float | None = 600.0   # seconds of this invocation
    # evaluation and output
    eval_every: int = 250              # steps; 0: only at the end
    eval_windows: int | None = None    # cap on validation windows per evaluation
    log_every: int = 20
    out: str = "runs/charrnn"
    plot: bool = True
    progress: bool = True
    # run
    device: str = "auto"               # auto | cpu | cuda | cuda:N
    dtype: str = "float32"             # float32 | float64
    seed: int = 1337
    threads: int | None = None
    max_nonfinite: int = 20            # consecutive non-finite steps before giving up
    flush_denormal: bool = True        # CPU: treat subnormal floats as zero (see Trainer)

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.clip_mode not in ("norm", "value"):
            raise ValueError(f"clip_mode must be norm or value, got {self.clip_mode!r}")
        if self.loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction must be mean or sum, got {self.loss_reduction!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")
        if self.encoding_errors not in ("strict", "replace", "ignore"):
            raise ValueError(f"encoding_errors must be strict, replace or ignore, got {self.encoding_errors!r}")
        for name in ("batch_size", "seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.lr <= 0 or self.lr_decay <= 0 or self.grad_clip < 0:
            raise ValueError("lr and lr_decay must be > 0, grad_clip >= 0")

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(vocab_size=vocab_size, cell=self.cell, hidden_size=self.hidden_size,
                           num_layers=self.num_layers, embedding_size=self.embedding_size,
                           dropout=self.dropout)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(**d)


# Fields a resumed run may change: they steer the run, not the math, so the resumed
# trajectory stays identical to an uninterrupted one.
RESUME_OVERRIDABLE = {"data", "corpus", "data_dir", "max_steps", "max_epochs", "time_limit",
                      "eval_every", "eval_windows", "log_every", "out", "plot", "progress",
                      "device", "threads", "max_nonfinite"}


class TrainingError(RuntimeError):
    pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"--device {name} requested but CUDA is not available "
                            "(use --device cpu or auto)")
    return dev


# ---------------------------------------------------------------------------- checkpoints

def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def save_checkpoint(obj: dict, path: str | os.PathLike) -> None:
    """Write atomically: a crash or Ctrl-C mid-write leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(_to_cpu(obj), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load on the CPU whatever device wrote it; weights_only, so loading runs no code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, foreign pickle, ...
        raise ValueError(f"cannot load {path} as a checkpoint: {str(e).splitlines()[0]}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a charrnn checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def model_from_checkpoint(ckpt: dict, device="cpu") -> tuple[CharRNN, Vocab]:
    model = CharRNN(ModelConfig.from_dict(ckpt["model_config"]))
    dtype = getattr(torch, ckpt["config"].get("dtype", "float32"))
    model.to(dtype=dtype)
    model.load_state_dict(ckpt["model"])
    return model.to(device), Vocab(ckpt["vocab"])


def _rng_state(device: torch.device) -> dict:
    st = {"torch": torch.get_rng_state(), "python": _py_state_to_list(random.getstate())}
    try:
        import numpy as np
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        st["numpy"] = {"name": name, "keys": torch.from_numpy(keys.astype("int64")),
                       "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}
    except ImportError:
        pass
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _py_state_to_list(s):
    version, internal, gauss = s
    return [version, list(internal), gauss]


def _set_rng_state(st: dict, device: torch.device) -> None:
    torch.set_rng_state(st["torch"])
    version, internal, gauss = st["python"]
    random.setstate((version, tuple(internal), gauss))
    if "numpy" in st:
        import numpy as np
        n = st["numpy"]
        np.random.set_state((n["name"], n["keys"].numpy().astype("uint32"), n["pos"],
                             n["has_gauss"], n["gauss"]))
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state_all(st["cuda"])


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """A seed of its own for each rank (dropout masks must differ between ranks' columns)."""
    return int(hashlib.sha256(f"{seed}/{rank}/{step}".encode()).hexdigest()[:15], 16)


def end_distributed() -> None:
    """Tear down the process group a distributed Trainer started (after a successful run).

    The barrier first: a rank that tears down its gloo pairs while a peer still talks to them
    can abort that peer at exit (seen with torch 2.14.1, about one run in ten). Past it every
    collective has finished on every rank, which cli.program relies on."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed % 2**32)
    except ImportError:
        pass


# ------------------------------------------------------------------------------- trainer

def make_optimizer(cfg: TrainConfig, params):
    params = list(params)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adagrad":
        # The seed's update, param -= lr * g / sqrt(sum g^2 + 1e-8), exactly.
        return torch.optim.Adagrad(params, lr=cfg.lr, initial_accumulator_value=1e-8, eps=0.0,
                                   weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        # char-rnn's rmsprop: decay 0.95, eps 1e-8.
        return torch.optim.RMSprop(params, lr=cfg.lr, alpha=0.95, eps=1e-8, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: str | os.PathLike | None = None, overrides: dict | None = None):
        """cfg for a new run; or resume=CHECKPOINT, with overrides limited to
        RESUME_OVERRIDABLE (cfg is then ignored)."""
        ckpt = None
        if resume is not None:
            ckpt = load_checkpoint(resume)
            cfg = resume_config(ckpt["config"], overrides or {})
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        self.rank, self.world = 0, 1
        if int(os.environ.get("WORLD_SIZE", 1)) > 1:  # launched by torchrun
            self._init_distributed()
        if cfg.flush_denormal and self.device.type == "cpu":
            # Gradients vanishing back through a tanh RNN reach subnormal magnitudes, where x86
            # arithmetic is 10-100x slower; early steps took seconds instead of 0.15 s here.
            # Values below 1e-38 carry no information for training.
            torch.set_flush_denormal(True)
        self.dtype = getattr(torch, cfg.dtype)
        self.out = Path(cfg.out)

        self.data_path = Path(cfg.data) if cfg.data else corpus_path(cfg.corpus, cfg.data_dir)
        text = read_text(self.data_path, cfg.encoding_errors)
        data_sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if ckpt is not None:
            if ckpt["data"]["sha256"] != data_sha:
                raise TrainingError(f"{self.data_path} is not the text this checkpoint was trained on "
                                    f"(sha256 differs); resume needs the same data")
            self.vocab = Vocab(ckpt["vocab"])
        else:
            self.vocab = Vocab.from_text(text)
        if self.world > 1 and len(set(self._gather_objects(data_sha))) > 1:
            raise TrainingError(f"the processes read different texts from {self.data_path} (sha256 differs); "
                                "every node needs the same data")
        self.data_info = {"path": str(self.data_path.resolve()), "sha256": data_sha, "chars": len(text)}
        ids = self.vocab.encode(text).to(self.device)  # once, not a copy per window
        train_ids, val_ids, test_ids = split(ids, cfg.val_frac, cfg.test_frac)
        # This rank's columns (all of them in one process).
        self.train_batches = Batches(train_ids, cfg.batch_size, cfg.seq_len).shard(self.rank, self.world)
        self.val_batches, self.test_batches = (
            fit_batches(part, cfg.batch_size, cfg.seq_len).shard(self.rank, self.world) if len(part) >= 2 else None
            for part in (val_ids, test_ids))

        seed_everything(cfg.seed)
        self.model_config = cfg.model_config(len(self.vocab))
        self.model = CharRNN(self.model_config).to(device=self.device, dtype=self.dtype)  # the same on every rank
        if self.world > 1:
            seed_everything(rank_seed(cfg.seed, self.rank))  # but each rank its own dropout masks
        self.optimizer = make_optimizer(cfg, self.model.parameters())
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=cfg.lr_decay)

        self.step = 0
        self.epoch = 0
        self.window = 0            # next window of the current epoch
        self.hidden = None         # state carried into that window
        self.nonfinite_in_a_row = 0
        self.skipped_steps = 0
        self.best_val_loss = math.inf
        self.val_loss = None
        self.train_loss = None
        self.history = {"step": [], "train_loss": [], "val_step": [], "val_loss": []}
        if ckpt is not None:
            self._load_state(ckpt)
        # What a training step calls: the model, or DDP around it (which averages the gradients).
        self.net = self.model
        if self.world > 1:
            self.net = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self._interrupted = False
        # Test hook (tests/test_distributed.py): CHARRNN_FAIL_RANK=r [CHARRNN_FAIL_STEP=n, default 1]
        # makes rank r raise a TrainingError after its step n.
        self._fail_step = (int(os.environ.get("CHARRNN_FAIL_STEP", 1))
                           if os.environ.get("CHARRNN_FAIL_RANK") == str(self.rank) else None)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- distributed ---------------------------------------------------------------------

    def _init_distributed(self) -> None:
        """Join torchrun's process group: nccl with one GPU per process (cuda:LOCAL_RANK), else gloo."""
        world, B = int(os.environ["WORLD_SIZE"]), self.cfg.batch_size
        if not dist.is_available():
            raise TrainingError("launched with WORLD_SIZE > 1, but this torch has no torch.distributed")
        if B % world:
            raise TrainingError(f"--batch-size {B} does not split evenly over {world} processes: each "
                                f"process trains whole columns, so use a multiple of {world}")
        if self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(self.device)
        if not dist.is_initialized():
            # A rank that dies is noticed by torchrun, which stops the others; the timeout bounds
            # any collective that still waits on a lost peer (other launchers, a hung rank).
            timeout = timedelta(seconds=float(os.environ.get("CHARRNN_DIST_TIMEOUT", 300)))
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo", timeout=timeout)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def _all_reduce(self, values: list[float], op=None) -> list[float]:
        """The sum (or op) over all ranks of a few numbers; the numbers themselves in one process."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
        return t.tolist()

    def _columns(self, state, gather: bool):
        """Carried state [L, B/W, H] of this rank <-> [L, B, H] of all B columns (checkpoints)."""
        if state is None or self.world == 1:
            return state

        def one(s):
            if not gather:
                n = s.size(1) // self.world
                return s[:, self.rank * n:(self.rank + 1) * n].contiguous()
            parts = [torch.empty_like(s) for _ in range(self.world)]
            dist.all_gather(parts, s.contiguous())
            return torch.cat(parts, dim=1)
        return tuple(map(one, state)) if isinstance(state, tuple) else one(state)

    # -- state ---------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": asdict(self.cfg),
            "model_config": self.model_config.to_dict(),
            "vocab": list(self.vocab.chars),
            "data": dict(self.data_info),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "window": self.window,
            "hidden": state_to_list(self._columns(self.hidden, gather=True)),  # all B columns
            "rng": _rng_state(self.device),        # rank 0's streams: the ones a single process resumes
            "rng_ranks": self._gather_objects(_rng_state(self.device)) if self.world > 1 else None,
            "world_size": self.world,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "skipped_steps": self.skipped_steps,
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "best_val_loss": None if math.isinf(self.best_val_loss) else self.best_val_loss,
            "history": self.history,
            "torch_version": str(torch.__version__),
            "time": time.time(),
        }

    def _gather_objects(self, obj) -> list:
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def _load_state(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step, self.epoch, self.window = ckpt["step"], ckpt["epoch"], ckpt["window"]
        self.hidden = self._columns(state_from_list(ckpt["hidden"], self.model_config.cell, self.device),
                                    gather=False)
        self.nonfinite_in_a_row = ckpt["nonfinite_in_a_row"]
        self.skipped_steps = ckpt["skipped_steps"]
        self.train_loss, self.val_loss = ckpt["train_loss"], ckpt["val_loss"]
        bv = ckpt["best_val_loss"]
        self.best_val_loss = math.inf if bv is None else bv
        self.history = ckpt["history"]
        # Last, so nothing above (model construction included) disturbs the streams. The same
        # world size continues every rank's streams exactly; another one gives rank 0 rank 0's
        # streams and the other ranks fresh ones (dropout masks then differ from an unbroken run).
        saved = ckpt.get("rng_ranks") or [ckpt["rng"]]
        if len(saved) == self.world:
            _set_rng_state(saved[self.rank], self.device)
        else:
            _set_rng_state(saved[0], self.device)
            if self.rank:
                seed_everything(rank_seed(self.cfg.seed, self.rank, self.step))

    def save(self, *names: str) -> None:
        """Write last.pt (or the names given). Every rank must call it (it gathers the carried
        state and RNG states); rank 0 alone writes."""
        state = self.state_dict()
        if self.is_main:
            for name in names or ("last.pt",):
                save_checkpoint(state, self.out / name)

    # -- steps ---------------------------------------------------------------------------

    def _loss(self, logits, y):
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                               reduction=self.cfg.loss_reduction)

    def train_step(self, x, y) -> tuple[float, bool]:
        """One window: forward, backward, clip, step. Returns (loss, applied)."""
        cfg = self.cfg
        self.model.train()
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        logits, hidden = self.net(x, self.hidden)
        loss = self._loss(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        # DDP averages gradients over ranks. The mean of equal shares' means is the mean over all
        # B columns; a sum over all columns is W times the mean of the ranks' sums.
        (loss * self.world if cfg.loss_reduction == "sum" else loss).backward()
        # Clipping sees the averaged gradients, so every rank clips (and steps) identically.
        params = [p for p in self.model.parameters() if p.grad is not None]
        if cfg.clip_mode == "norm":
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        else:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_value_(params, cfg.grad_clip)
        value = loss.item()
        if self.world > 1:  # the loss over all B columns, as one process reports it (and all ranks agree)
            value = self._all_reduce([value])[0] / (self.world if cfg.loss_reduction == "mean" else 1)
        if not (math.isfinite(value) and torch.isfinite(norm)):
            # Keep parameters and carried state as they were; the window is consumed.
            self.optimizer.zero_grad(set_to_none=True)
            return value, False
        self.optimizer.step()
        self.hidden = detach_state(hidden)
        return value, True

    @torch.no_grad()
    def evaluate(self, batches: Batches | None = None, max_windows: int | None = None) -> float | None:
        """Mean loss in nats per character, state carried across windows from zeros. Under
        torchrun every rank evaluates its columns and the sums are added up over the ranks."""
        batches = self.val_batches if batches is None else batches
        if batches is None:
            return None
        was_training = self.model.training
        self.model.eval()
        hidden, total, count = None, 0.0, 0
        n = len(batches) if max_windows is None else min(len(batches), max_windows)
        for k in range(n if batches.batch_size else 0):  # a rank may own no column of a small split
            x, y = batches.window(k)
            x, y = x.to(self.device), y.to(self.device)
            logits, hidden = self.model(x, hidden)
            total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                                     reduction="sum").item()
            count += y.numel()
        self.model.train(was_training)
        total, count = self._all_reduce([total, count])
        return total / count

    # -- the loop ------------------------------------------------------------------------

    def _on_sigint(self, signum, frame):
        if self._interrupted:  # a second Ctrl-C: stop now, without a checkpoint
            raise KeyboardInterrupt
        self._interrupted = True
        if self.is_main:
            _write("interrupted: finishing this step and writing a checkpoint (Ctrl-C again to abort)")

    def _stop_reason(self, start: float) -> str | None:
        cfg = self.cfg
        hits = [self._interrupted,
                cfg.max_steps is not None and self.step >= cfg.max_steps,
                cfg.max_epochs is not None and self.epoch >= cfg.max_epochs,
                cfg.time_limit is not None and time.monotonic() - start >= cfg.time_limit]
        if self.world > 1:  # clocks and Ctrl-C are per process: every rank stops at the same step
            hits = self._all_reduce([float(h) for h in hits], op=dist.ReduceOp.MAX)
        return next((reason for reason, hit in zip(STOP_REASONS, hits) if hit), None)

    def run(self, callback=None) -> dict:
        """Train until a limit (steps, epochs, seconds) or Ctrl-C. callback(trainer, loss)
        runs after every step. Returns a summary dict (also the last metrics line)."""
        if not self.is_main:  # rank 0 alone writes metrics (and checkpoints, plots, the progress bar)
            return self._run(lambda record: None, callback)
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "metrics.jsonl", "a") as metrics:
            def log(record):
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
            return self._run(log, callback)

    def _run(self, log, callback) -> dict:
        cfg = self.cfg
        old_handler = None
        if threading.current_thread() is threading.main_thread():
            # Ctrl-C between two parameter updates, never in the middle of one: a checkpoint
            # written from a half-applied optimizer step would not resume exactly.
            old_handler = signal.signal(signal.SIGINT, self._on_sigint)
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.max_steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=not (cfg.progress and self.is_main), desc=f"train {cfg.cell}")
        start = time.monotonic()
        train_time, train_chars = 0.0, 0
        acc = {"loss": 0.0, "n": 0, "time": 0.0, "chars": 0}  # since the last metrics line
        chars = cfg.batch_size * cfg.seq_len  # per step, over all ranks
        per_char = chars if cfg.loss_reduction == "sum" else 1
        last_eval_step = None
        reason = None

        def flush():
            if not acc["n"]:
                return
            self.train_loss = acc["loss"] / acc["n"]
            cps = acc["chars"] / acc["time"] if acc["time"] > 0 else 0.0
            self.history["step"].append(self.step)
            self.history["train_loss"].append(self.train_loss)
            log({"step": self.step, "epoch": self.epoch, "train_loss": self.train_loss,
                 "lr": self.optimizer.param_groups[0]["lr"], "chars_per_s": cps,
                 "elapsed_s": time.monotonic() - start})
            bar.set_postfix(loss=f"{self.train_loss:.3f}",
                            val=f"{self.val_loss:.3f}" if self.val_loss is not None else "-",
                            cps=f"{cps:,.0f}", epoch=self.epoch, refresh=False)
            acc.update(loss=0.0, n=0, time=0.0, chars=0)

        try:
            while (reason := self._stop_reason(start)) is None:
                t0 = time.perf_counter()
                x, y = self.train_batches.window(self.window)
                value, applied = self.train_step(x, y)
                self.window += 1
                if self.window == len(self.train_batches):
                    self.window, self.hidden = 0, None  # a new epoch starts from zeros
                    self.epoch += 1
                    self.scheduler.step()
                self.step += 1
                dt = time.perf_counter() - t0
                train_time += dt
                train_chars += chars
                bar.update(1)
                if self._fail_step == self.step:
                    raise TrainingError(f"rank {self.rank} fails at step {self.step} (CHARRNN_FAIL_RANK test hook)")
                if callback is not None:
                    callback(self, value)

                if applied:
                    self.nonfinite_in_a_row = 0
                    acc["loss"] += value / per_char
                    acc["n"] += 1
                    acc["time"] += dt
                    acc["chars"] += chars
                else:
                    self.nonfinite_in_a_row += 1
                    self.skipped_steps += 1
                    log({"step": self.step, "nonfinite_loss": str(value)})
                    if self.nonfinite_in_a_row >= cfg.max_nonfinite:
                        last = self.out / "last.pt"
                        kept = (f"the last good checkpoint is kept at {last}" if last.exists()
                                else "no checkpoint had been written yet")
                        raise TrainingError(
                            f"loss or gradient was not finite for {self.nonfinite_in_a_row} steps in a row "
                            f"(step {self.step}); stopping, {kept}. Try a lower --lr or --grad-clip, "
                            "or --dtype float64")

                if self.step % cfg.log_every == 0:
                    flush()
                # Not during a non-finite streak: the last checkpoint stays the last good step's.
                if cfg.eval_every and self.step % cfg.eval_every == 0 and applied:
                    flush()
                    self._eval_and_save(log)
                    last_eval_step = self.step
        finally:
            bar.close()
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)

        flush()
        if reason == "interrupted":
            self.save()  # no evaluation: the user wants out now
            self._plot()
        elif last_eval_step != self.step:
            self._eval_and_save(log)
        summary = {"step": self.step, "epoch": self.epoch, "stop": reason,
                   "train_loss": self.train_loss, "val_loss": self.val_loss,
                   "best_val_loss": None if math.isinf(self.best_val_loss) else self.best_val_loss,
                   "chars_per_s": train_chars / train_time if train_time > 0 else 0.0,
                   "train_time_s": train_time, "elapsed_s": time.monotonic() - start,
                   "skipped_steps": self.skipped_steps, "checkpoint": str(self.out / "last.pt")}
        if reason != "interrupted" and self.test_batches is not None:
            summary["test_loss"] = self.evaluate(self.test_batches)
        log({"final": True, **summary})
        return summary

    def _eval_and_save(self, log) -> None:
        val = self.evaluate(max_windows=self.cfg.eval_windows)
        improved = False
        if val is not None:
            self.val_loss = val
            self.history["val_step"].append(self.step)
            self.history["val_loss"].append(val)
            improved = val < self.best_val_loss
            if improved:
                self.best_val_loss = val
            log({"step": self.step, "epoch": self.epoch, "val_loss": val, "best_val_loss": self.best_val_loss})
        self.save("last.pt", *(["best.pt"] if improved else []))
        self._plot()

    def _plot(self) -> None:
        if self.cfg.plot and self.is_main:
            plot_losses(self.history, self.out / "loss.png",
                        title=f"{self.cfg.cell} h={self.cfg.hidden_size} x{self.cfg.num_layers}")


def resume_config(saved: dict, overrides: dict) -> TrainConfig:
    bad = {k for k, v in overrides.items() if k not in RESUME_OVERRIDABLE and saved.get(k) != v}
    if bad:
        raise TrainingError(f"cannot change {', '.join(sorted(bad))} when resuming (it would change "
                            f"the model or its training); only {', '.join(sorted(RESUME_OVERRIDABLE))} may change")
    return TrainConfig.from_dict({**saved, **overrides})


def plot_losses(history: dict, path: str | os.PathLike, title: str = "") -> None:
    # The object API, not pyplot: no global backend switch, safe without a display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if history["step"]:
        ax.plot(history["step"], history["train_loss"], label="train", lw=1)
    if history["val_step"]:
        ax.plot(history["val_step"], history["val_loss"], "o-", label="validation", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / char)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = Path(path).with_name(f".{Path(path).name}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


def _write(msg: str) -> None:
    from tqdm.auto import tqdm
    tqdm.write(msg)


def train(cfg: TrainConfig | None = None, resume=None, overrides=None, callback=None, **kw) -> dict:
    """Convenience: train(data="input.txt", max_steps=100) or train(resume="out/last.pt")."""
    if cfg is None and resume is None:
        cfg = TrainConfig(**kw)
    trainer = Trainer(cfg, resume=resume, overrides=overrides)
    summary = trainer.run(callback=callback)
    end_distributed()
    return summary
