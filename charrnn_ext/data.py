"""Corpora, vocabulary, splits and window batching for character-level models.

Batching follows docs/design.md: the token stream is cut into B contiguous columns and
walked in windows of T steps, so row b of window k+1 continues row b of window k and
the hidden state of one window is the right initial state for the next.
"""

from __future__ import annotations

import copy
import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import CharRNNError, CorpusError, MissingFileError

# name -> (file name, canonical URL, sha256, size in bytes)
CORPORA = {
    "tinyshakespeare": (
        "tinyshakespeare.txt",
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        1115394,
    ),
}

DATA_DIR_ENV = "CHARRNN_DATA_DIR"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "charrnn"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def corpus_path(name: str, data_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Find the named corpus: data_dir, then $CHARRNN_DATA_DIR, then the user cache,
    else download it into the cache and check its sha256."""
    if name not in CORPORA:
        raise CorpusError(f"unknown corpus {name!r}; known: {', '.join(sorted(CORPORA))} "
                          "(or pass --data PATH for any UTF-8 text file)")
    fname, url, sha, _ = CORPORA[name]
    dirs = [Path(d) for d in (data_dir, os.environ.get(DATA_DIR_ENV)) if d] + [cache_dir()]
    for d in dirs:
        p = d / fname
        if p.is_file():
            # A size check is cheap and catches truncated copies; the full hash is
            # only paid on download, where corruption is likely.
            if p.stat().st_size != CORPORA[name][3]:
                raise CorpusError(f"{p} has {p.stat().st_size} bytes, expected {CORPORA[name][3]} for "
                                  f"{name}; delete it or replace it with the file from {url}")
            return p
    if not download:
        raise CorpusError(_missing_message(name, dirs))
    dest = cache_dir() / fname
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + f".part{os.getpid()}")
        with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
            while chunk := r.read(1 << 16):
                f.write(chunk)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise CorpusError(f"could not download {name} from {url} ({e}).\n"
                          + _missing_message(name, dirs)) from e
    got = _sha256(tmp)
    if got != sha:
        tmp.unlink(missing_ok=True)
        raise CorpusError(f"downloaded {name} has sha256 {got}, expected {sha}; not using it")
    os.replace(tmp, dest)
    return dest


def _missing_message(name: str, searched: list[Path]) -> str:
    fname, url, _, _ = CORPORA[name]
    where = ", ".join(str(d) for d in searched)
    return (f"corpus {name!r} not found (looked for {fname} in: {where}). "
            "To train on a local copy, which needs no network access, either:\n"
            f"  - pass --data FILE, where FILE is {fname} from {url} or any UTF-8 text\n"
            f"  - set {DATA_DIR_ENV}=DIR (or pass --data-dir DIR), where DIR holds {fname}\n"
            f"  - put {fname} at {cache_dir() / fname}")


def read_text(path: str | os.PathLike, errors: str = "strict") -> str:
    """Read a UTF-8 file. errors='strict' fails naming the byte offset of the first bad
    byte; 'replace' or 'ignore' are passed to bytes.decode."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no such file: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path} is not valid UTF-8: byte offset {e.start} "
                          f"({raw[e.start:e.start + 4]!r}...): {e.reason}. "
                          "Use --encoding-errors replace or ignore to read it anyway") from None
    if text.startswith("\ufeff"):  # a BOM is an encoding artefact, not text to model
        text = text[1:]
    return text


class Vocab:
    """Characters (Unicode code points) <-> ids. Sorted, so the same text always gives the
    same ids; stored in every checkpoint as a list of str."""

    def __init__(self, chars):
        chars = list(chars)
        if len(set(chars)) != len(chars):
            raise CharRNNError("vocabulary has duplicate characters")
        if any(len(c) != 1 for c in chars):
            raise CharRNNError("vocabulary entries must be single characters")
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        if not text:
            raise CharRNNError("cannot build a vocabulary from empty text")
        return cls(sorted(set(text)))

    def __len__(self):
        return len(self.chars)

    def __eq__(self, other):
        return isinstance(other, Vocab) and self.chars == other.chars

    def unknown(self, text: str) -> list[str]:
        return sorted(set(text) - self.index.keys())

    def encode(self, text: str) -> torch.Tensor:
        missing = self.unknown(text)
        if missing:
            shown = ", ".join(repr(c) for c in missing[:20]) + (" ..." if len(missing) > 20 else "")
            raise CharRNNError(f"{len(missing)} character(s) not in the vocabulary: {shown}")
        index = self.index
        return torch.tensor([index[c] for c in text], dtype=torch.long)

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return "".join(self.chars[i] for i in ids)


def split(ids: torch.Tensor, val_frac: float = 0.1, test_frac: float = 0.0):
    """Contiguous split: train first, then validation, then test (the seed's layout, so a
    validation loss is measured on text the model has never seen any part of)."""
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise CharRNNError(f"bad split fractions val={val_frac} test={test_frac}")
    n = len(ids)
    n_test = int(n * test_frac)
    n_val = int(n * val_frac)
    n_train = n - n_val - n_test
    return ids[:n_train], ids[n_train:n_train + n_val], ids[n_train + n_val:]


@dataclass
class Batches:
    """Windows over B contiguous columns of a token stream.

    x[b] = ids[b*n : (b+1)*n], y is x shifted by one; window k covers columns
    [k*T, (k+1)*T). Whatever does not fill a whole window is dropped.
    """

    ids: torch.Tensor
    batch_size: int
    seq_len: int

    def __post_init__(self):
        if self.batch_size < 1 or self.seq_len < 1:
            raise CharRNNError("batch_size and seq_len must be >= 1")
        n = (len(self.ids) - 1) // self.batch_size
        self.num_windows = n // self.seq_len
        if self.num_windows < 1:
            raise CharRNNError(
                f"{len(self.ids)} tokens are too few for one window of batch_size={self.batch_size} x "
                f"seq_len={self.seq_len} (need at least {self.batch_size * self.seq_len + 1}); "
                "use a smaller --batch-size or --seq-len, or more text")
        n = self.num_windows * self.seq_len
        self.x = self.ids[: self.batch_size * n].view(self.batch_size, n)
        self.y = self.ids[1: self.batch_size * n + 1].view(self.batch_size, n)

    def __len__(self):
        return self.num_windows

    @property
    def chars_per_window(self) -> int:
        return self.batch_size * self.seq_len

    def window(self, k: int):
        """Inputs and targets of window k, each [B, T] (contiguous copies)."""
        if not 0 <= k < self.num_windows:
            raise IndexError(k)
        s = slice(k * self.seq_len, (k + 1) * self.seq_len)
        return self.x[:, s].contiguous(), self.y[:, s].contiguous()

    def __iter__(self):
        for k in range(self.num_windows):
            yield self.window(k)

    def shard(self, rank: int, world: int) -> "Batches":
        """One process's share for data-parallel training: the whole columns
        [rank*B//world, (rank+1)*B//world), so the state it carries across windows is its own.
        The same windows as before; shares differ by at most one column (possibly none)."""
        if world == 1:
            return self
        lo, hi = rank * self.batch_size // world, (rank + 1) * self.batch_size // world
        part = copy.copy(self)
        part.batch_size, part.x, part.y = hi - lo, self.x[lo:hi], self.y[lo:hi]
        return part


def fit_batches(ids: torch.Tensor, batch_size: int, seq_len: int) -> Batches:
    """Batches for evaluation: a small validation split may not fill batch_size columns of
    seq_len; shrink the batch, then the window, rather than refuse to evaluate."""
    n = len(ids) - 1
    if n < 1:
        raise CharRNNError("need at least 2 tokens to evaluate")
    batch_size = max(1, min(batch_size, n // seq_len))
    return Batches(ids, batch_size, min(seq_len, n))


def split_batches(ids: torch.Tensor, batch_size: int, seq_len: int, val_frac: float, test_frac: float):
    """Training, validation and test batches of a token stream (split by split()); a held-out
    part shorter than 2 tokens is None."""
    train, val, test = split(ids, val_frac, test_frac)
    return (Batches(train, batch_size, seq_len),
            *(fit_batches(part, batch_size, seq_len) if len(part) >= 2 else None for part in (val, test)))
