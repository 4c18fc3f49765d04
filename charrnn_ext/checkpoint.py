"""Checkpoints: the format, atomic save, safe load, the model they hold, RNG states, carried state.

A checkpoint is a plain dict of tensors and primitives (torch.load(weights_only=True) reads
it, running no code), with every tensor on the CPU whatever device wrote it:

    format        CHECKPOINT_FORMAT
    config        the TrainConfig as a dict;  model_config: the ModelConfig as a dict
    vocab         the characters, in id order;  data: path, sha256 and length of the text
    model, optimizer, scheduler                 their state dicts
    step, epoch, window                         where training continues
    hidden        the carried state of all B columns (state_to_list), or None
    rng, rng_ranks, world_size                  the RNG streams: rank 0's (the ones one process
                                                resumes) and every rank's
    nonfinite_in_a_row, skipped_steps, train_loss, val_loss, best_val_loss, history
    torch_version, time
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from .data import Vocab
from .errors import CharRNNError, MissingFileError
from .model import CharRNN, ModelConfig

CHECKPOINT_FORMAT = 1


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
        raise MissingFileError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, foreign pickle, ...
        raise CharRNNError(f"cannot load {path} as a checkpoint: {str(e).splitlines()[0]}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CharRNNError(f"{path} is not a charrnn checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


# Settings a resumed run may change: they steer the run, not the math, so the resumed
# trajectory stays identical to an uninterrupted one.
RESUME_OVERRIDABLE = {"data", "corpus", "data_dir", "max_steps", "max_epochs", "time_limit",
                      "eval_every", "eval_windows", "log_every", "out", "plot", "progress",
                      "device", "threads", "max_nonfinite"}


def resumed_config(saved: dict, overrides: dict) -> dict:
    """A checkpoint's training settings with the overrides a resumed run may make."""
    bad = {k for k, v in overrides.items() if k not in RESUME_OVERRIDABLE and saved.get(k) != v}
    if bad:
        raise CharRNNError(f"cannot change {', '.join(sorted(bad))} when resuming (it would change "
                           f"the model or its training); only {', '.join(sorted(RESUME_OVERRIDABLE))} may change")
    return {**saved, **overrides}


def model_from_checkpoint(ckpt: dict, device="cpu") -> tuple[CharRNN, Vocab]:
    model = CharRNN(ModelConfig.from_dict(ckpt["model_config"]))
    dtype = getattr(torch, ckpt["config"].get("dtype", "float32"))
    model.to(dtype=dtype)
    model.load_state_dict(ckpt["model"])
    return model.to(device), Vocab(ckpt["vocab"])


# ---------------------------------------------------------------------------- carried state

def state_to_list(state):
    """Hidden state as a list of CPU tensors (checkpoint form); None stays None."""
    if state is None:
        return None
    states = state if isinstance(state, (tuple, list)) else (state,)
    return [s.detach().cpu() for s in states]


def state_from_list(states, cell: str, device=None):
    if states is None:
        return None
    states = [s.to(device) for s in states]
    return tuple(states) if cell == "lstm" else states[0]


# ---------------------------------------------------------------------------- random streams

def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def rng_state(device: torch.device) -> dict:
    """torch's, Python's, numpy's (and the GPUs') streams, in checkpoint form."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, np_gauss = np.random.get_state()
    st = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss],
          "numpy": {"name": name, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                    "has_gauss": int(has_gauss), "gauss": float(np_gauss)}}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict, device: torch.device) -> None:
    torch.set_rng_state(st["torch"])
    version, internal, gauss = st["python"]
    random.setstate((version, tuple(internal), gauss))
    n = st["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["gauss"]))
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state_all(st["cuda"])
