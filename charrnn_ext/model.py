"""CharRNN: characters -> embedding (or one-hot) -> recurrent stack -> logits."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import CharRNNError
from .nn import FusedRNN
from .options import option, validate

CELLS = ("rnn", "rnn-torch", "gru", "lstm")


@dataclass
class ModelConfig:
    vocab_size: int
    cell: str = option("rnn", "rnn (fused tanh RNN), rnn-torch (torch.nn.RNN), gru or lstm", choices=CELLS)
    hidden_size: int = option(512, "hidden units per layer", minimum=1)
    num_layers: int = option(2, "recurrent layers", minimum=1)
    embedding_size: int = option(64, "character embedding size; 0 for one-hot input", minimum=0)
    dropout: float = option(0.1, "dropout between layers and before the softmax head", minimum=0.0, below=1.0)

    def __post_init__(self):
        if self.vocab_size < 1:
            raise CharRNNError(f"vocab_size must be >= 1, got {self.vocab_size}")
        validate(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(name: str) -> torch.device:
    """auto: the GPU when there is one. A device that is not there is the user's to fix."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise CharRNNError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CharRNNError(f"--device {name} requested but CUDA is not available "
                           "(use --device cpu or auto)")
    return dev


class ByteDropout(nn.Module):
    """Dropout with p rounded to a multiple of 1/256, masks drawn as random bytes (the cells
    other than the fused rnn, whose dropout is inside its op).

    Why: on the CPU torch's dropout (bernoulli_) took 46 ms forward+backward on the
    [100, 64, 512] activations of the default model, a quarter of a training step; one random
    byte per element and a compare take 19 ms. The torch RNG is used, so seeds and resumed
    runs reproduce as with nn.Dropout.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.k = round(p * 256)  # drop when byte < k

    def forward(self, x):
        if not self.training or self.k == 0:
            return x
        keep = torch.empty(x.shape, dtype=torch.uint8, device=x.device).random_() >= self.k
        return x * (keep.to(x.dtype) * (256 / (256 - self.k)))

    def extra_repr(self):
        return f"p={self.k / 256}"


class CharRNN(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = c = config
        if c.embedding_size > 0:
            self.embed = nn.Embedding(c.vocab_size, c.embedding_size)
            in_size = c.embedding_size
        else:
            self.embed = None
            in_size = c.vocab_size
        cls = {"rnn": FusedRNN, "rnn-torch": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[c.cell]
        kw = {"nonlinearity": "tanh"} if c.cell in ("rnn", "rnn-torch") else {}
        # torch warns about (and ignores) inter-layer dropout on a single layer.
        inter = c.dropout if c.num_layers > 1 else 0.0
        if c.cell == "rnn":  # every dropout inside the fused op, the head's input's too
            kw["output_dropout"] = c.dropout
        self.rnn = cls(in_size, c.hidden_size, c.num_layers, dropout=inter, **kw)
        self.drop = nn.Identity() if c.cell == "rnn" else ByteDropout(c.dropout)
        self.head = nn.Linear(c.hidden_size, c.vocab_size)

    def forward(self, idx: torch.Tensor, state=None):
        """idx [B, T] token ids; state as the recurrent module takes it ([L, B, H], or
        (h, c) for lstm; None = zeros). Returns logits [B, T, V] and the final state."""
        # Time-major inside: it is the fused op's layout, so no activation transpose.
        x = idx.t()
        if self.embed is not None:
            x = self.embed(x)
        else:
            x = F.one_hot(x, self.config.vocab_size).to(self.head.weight.dtype)
        out, state = self.rnn(x, state)
        logits = self.head(self.drop(out))
        return logits.transpose(0, 1), state

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def detach_state(state):
    """Cut the graph at a window boundary (truncated BPTT) but keep the values."""
    if state is None:
        return None
    if isinstance(state, (tuple, list)):
        return tuple(s.detach() for s in state)
    return state.detach()

