"""FusedRNN: torch.nn.RNN(nonlinearity="tanh") with every layer on the fused window op."""
import torch
from torch.nn.utils.rnn import PackedSequence

from .ops import rnn_tanh


class FusedRNN(torch.nn.RNN):
    """Drop-in for torch.nn.RNN(nonlinearity="tanh").

    It subclasses nn.RNN, so the constructor, parameter names, shapes, initialisation and
    state dicts are nn.RNN's own; only forward differs: one fused call per layer per window.
    Bidirectional layers and PackedSequence input are not supported.

    Dropout, in training mode, is drawn inside the fused op (see charrnn_ext.ops.rnn_tanh):
    `dropout` on every layer's output but the last, as nn.RNN's; `output_dropout` (this class's
    own, default 0) on the last layer's output, e.g. the dropout before a model's head. Both have
    torch's expectation and scaling, but not torch's random stream; the seeds come from torch's
    generator. h_n is never dropped.
    """

    def __init__(self, *args, output_dropout=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        if isinstance(output_dropout, bool) or not 0.0 <= output_dropout <= 1.0:
            raise ValueError(f"FusedRNN: output_dropout must be a number in [0, 1], got {output_dropout!r}")
        self.output_dropout = float(output_dropout)
        if self.nonlinearity != "tanh":
            raise ValueError(f"FusedRNN supports nonlinearity='tanh' only, got {self.nonlinearity!r}")
        if self.bidirectional:
            raise NotImplementedError("FusedRNN does not support bidirectional=True; "
                                      "use torch.nn.RNN for bidirectional layers")

    def extra_repr(self):
        s = super().extra_repr()
        return s + f", output_dropout={self.output_dropout}" if self.output_dropout else s

    def forward(self, input, hx=None):
        if isinstance(input, PackedSequence):
            raise NotImplementedError("FusedRNN does not take a PackedSequence; pass a padded tensor")
        if input.dim() not in (2, 3):
            raise ValueError(f"FusedRNN: input must be [T, B, E] ([B, T, E] with batch_first) or "
                             f"unbatched [T, E], got shape {tuple(input.shape)}")
        batched = input.dim() == 3
        L, H = self.num_layers, self.hidden_size
        if not batched:
            input = input.unsqueeze(1)
        elif self.batch_first:
            input = input.transpose(0, 1)
        if input.shape[-1] != self.input_size:
            raise ValueError(f"FusedRNN: input has {input.shape[-1]} features, expected "
                             f"input_size={self.input_size}")
        B = input.shape[1]
        if hx is None:
            hx = input.new_zeros(L, B, H)
        else:
            if not batched:
                hx = hx.unsqueeze(1)
            if tuple(hx.shape) != (L, B, H):
                shape = f"[{L}, {H}]" if not batched else f"[{L}, {B}, {H}]"
                raise ValueError(f"FusedRNN: hx must have shape {shape} (num_layers, batch, "
                                 f"hidden_size), got {tuple(hx.shape) if batched else tuple(hx.shape[::2])}")

        layer_input, h_n = input, []
        for layer in range(L):
            biases = ((getattr(self, f"bias_ih_l{layer}"), getattr(self, f"bias_hh_l{layer}"))
                      if self.bias else (None, None))
            p = (self.dropout if layer < L - 1 else self.output_dropout) if self.training else 0.0
            output, h_last = rnn_tanh(layer_input, hx[layer], getattr(self, f"weight_ih_l{layer}"),
                                      getattr(self, f"weight_hh_l{layer}"), *biases, dropout=p)
            h_n.append(h_last)
            layer_input = output
        h_n = torch.stack(h_n)

        if not batched:
            return output.squeeze(1), h_n.squeeze(1)
        if self.batch_first:
            output = output.transpose(0, 1)
        return output, h_n
