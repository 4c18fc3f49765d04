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
        # The other cells drop the head's input with torch's dropout: a cheaper mask of charrnn's
        # own (random bytes and a compare) saved no measurable share of a training step.
        self.drop = nn.Identity() if c.cell == "rnn" else nn.Dropout(c.dropout)
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

