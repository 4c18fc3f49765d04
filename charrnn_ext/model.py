"""CharRNN: characters -> embedding (or one-hot) -> recurrent stack -> logits."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from .nn import FusedRNN

CELLS = ("rnn", "rnn-torch", "gru", "lstm")


@dataclass
class ModelConfig:
    vocab_size: int
    cell: str = "rnn"            # rnn (fused tanh RNN), rnn-torch (torch.nn.RNN), gru, lstm
    hidden_size: int = 512
    num_layers: int = 1
    embedding_size: int = 64     # 0: one-hot input, as in min-char-rnn
    dropout: float = 0.0         # between recurrent layers and before the softmax head

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; choose one of {', '.join(CELLS)}")
        if self.vocab_size < 1 or self.hidden_size < 1 or self.num_layers < 1:
            raise ValueError("vocab_size, hidden_size and num_layers must be >= 1")
        if self.embedding_size < 0:
            raise ValueError("embedding_size must be >= 0 (0 means one-hot input)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)


class ByteDropout(nn.Module):
    """Dropout with p rounded to a multiple of 1/256, masks drawn as random bytes.

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
        self.rnn = cls(in_size, c.hidden_size, c.num_layers, dropout=inter, **kw)
        self.drop = ByteDropout(c.dropout)
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
