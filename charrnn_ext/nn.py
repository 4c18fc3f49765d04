"""FusedRNN: torch.nn.RNN with every tanh layer on the fused window op, nn.RNN's own code elsewhere."""
import numbers
import warnings

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import PackedSequence

from .errors import FusedRNNFallbackWarning, RNNDeviceError, RNNDtypeError, RNNShapeError
from .ops import rnn_tanh

# The device types with a fused kernel: a CPU one always, a CUDA one in CUDA builds. The op's
# Meta kernel (its fake, ops.py) only computes shapes: meta tensors run nn.RNN's implementation.
_FUSED_DEVICE_TYPES = frozenset(
    device_type for device_type, key in (("cpu", "CPU"), ("cuda", "CUDA"))
    if torch._C._dispatch_has_kernel_for_dispatch_key("charrnn::rnn_tanh_forward", key))
_FUSED_DTYPES = (torch.float32, torch.float64)

_warned_fallbacks = set()  # the reasons already warned about in this process


def _warn_fallback(key, reason):
    if key in _warned_fallbacks:
        return
    _warned_fallbacks.add(key)
    warnings.warn(f"FusedRNN: {reason}: running torch.nn.RNN's implementation (unfused) instead. "
                  "This warning is shown once per process for this reason.",
                  FusedRNNFallbackWarning, stacklevel=5)  # the caller of module(...)


def _shape(t):
    return list(t.shape)


class FusedRNN(torch.nn.RNN):
    """Drop-in for torch.nn.RNN: tanh layers run on the fused op, one call per layer per window.

    It subclasses nn.RNN, so the constructor, parameter names, shapes, initialisation, state
    dicts and pickles are nn.RNN's own (plus the float `output_dropout`, below); only forward
    differs. forward takes and returns what nn.RNN's does: input [T, B, E] ([B, T, E] with
    batch_first) or unbatched [T, E], hx [num_layers, B, H] or unbatched [num_layers, H].

    The fused kernels run nonlinearity="tanh", unidirectional layers on padded float32/float64
    tensors on the CPU (and CUDA in CUDA builds). Every other call runs nn.RNN's own
    implementation (super().forward), with a FusedRNNFallbackWarning once per process per
    reason: nonlinearity="relu", bidirectional=True, a PackedSequence input, a dtype other than
    float32/float64 (bfloat16, float16), a device without a fused kernel (e.g. "meta"), or
    autocast with an input whose dtype differs from the weights'. Those calls give nn.RNN's
    results exactly. (Under autocast with input and weights of one dtype, the fused kernels run
    in that dtype, where nn.RNN would run in autocast's.)

    Arguments are checked before any kernel runs, for the mistakes nn.RNN checks, and each
    raises an instance of nn.RNN's exception type for it (charrnn_ext.errors: RNNShapeError,
    RNNDtypeError, RNNDeviceError, which also derive from the ValueError / TypeError that
    FusedRNN raised before). A batch of size 0 returns empty output and h_n, as nn.RNN does,
    whose backward gives zero gradients; sequence length 0 is a RuntimeError (RNNShapeError),
    as in nn.RNN.

    Dropout, in training mode, on the fused path is drawn inside the fused op (see
    charrnn_ext.ops.rnn_tanh): `dropout` on every layer's output but the last, as nn.RNN's;
    `output_dropout` (this class's own, default 0) on the last layer's output, e.g. the dropout
    before a model's head. Both have torch's expectation and scaling, but not torch's random
    stream; the seeds come from torch's generator. h_n is never dropped. On nn.RNN's
    implementation, `dropout` is nn.RNN's own and `output_dropout` is torch's F.dropout on the
    output (on a PackedSequence's data), both from torch's random stream.

    A model holding a FusedRNN, saved whole with torch.save, loads with torch.load's default
    weights_only=True wherever the same model with nn.RNN does: importing charrnn_ext adds
    FusedRNN to torch.serialization's safe globals.
    """

    def __init__(self, *args, output_dropout=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        if (not isinstance(output_dropout, numbers.Real) or isinstance(output_dropout, bool)
                or not 0.0 <= output_dropout <= 1.0):
            raise ValueError(f"FusedRNN: output_dropout must be a number in [0, 1], got {output_dropout!r}")
        self.output_dropout = float(output_dropout)

    def __setstate__(self, d):
        super().__setstate__(d)
        self.__dict__.setdefault("output_dropout", 0.0)  # pickles from before it existed

    def extra_repr(self):
        s = super().extra_repr()
        return s + f", output_dropout={self.output_dropout}" if self.output_dropout else s

    def _module_fallback(self, input):
        """(key, reason) where nn.RNN's implementation must run whatever the tensors, else None."""
        if self.nonlinearity != "tanh":
            return ("nonlinearity", self.nonlinearity), f"nonlinearity={self.nonlinearity!r} has no fused kernel"
        if self.bidirectional:
            return ("bidirectional",), "bidirectional=True has no fused kernel"
        if isinstance(input, PackedSequence):
            return ("PackedSequence",), "a PackedSequence input has no fused kernel"
        return None

    def _check_args(self, input, hx):
        """nn.RNN's checks, before any kernel runs. Returns (input [T, B, E] time-major, hx
        [L, B, H] or None, batched, fallback): fallback is (key, reason) where the tensors need
        nn.RNN's implementation (dtype, device, autocast), else None."""
        L, H = self.num_layers, self.hidden_size
        if input.dim() not in (2, 3):
            raise RNNShapeError(
                f"FusedRNN: input must be [T, B, E] ([B, T, E] with batch_first) or unbatched [T, E], "
                f"a 3-D or 2-D tensor; got a {input.dim()}-D tensor of shape {_shape(input)}")
        batched = input.dim() == 3
        if batched:
            B = input.shape[0] if self.batch_first else input.shape[1]
            expected_hx, hx_layout = [L, B, H], "[num_layers, B, hidden_size]"
        else:
            expected_hx, hx_layout = [L, H], "[num_layers, hidden_size]"

        def what():  # for the messages only: formatting costs as much as a small step
            if batched:
                return f"batched input {'[B, T, E]' if self.batch_first else '[T, B, E]'} of shape {_shape(input)}"
            return f"unbatched input [T, E] of shape {_shape(input)}"
        if hx is not None and hx.dim() != len(expected_hx):
            raise RNNShapeError(
                f"FusedRNN: hx must have shape {expected_hx} {hx_layout} for {what()}: a "
                f"{len(expected_hx)}-D tensor; got a {hx.dim()}-D tensor of shape {_shape(hx)}")

        weight = self.weight_ih_l0
        fallback = None
        mismatch = input.dtype != weight.dtype or (hx is not None and hx.dtype != input.dtype)
        if mismatch and torch._C._is_any_autocast_enabled():
            # nn.RNN skips its dtype check under autocast, and autocast casts for its kernels
            fallback = ("autocast",), (f"autocast with input dtype {input.dtype}"
                                       f"{'' if hx is None else f', hx dtype {hx.dtype}'} and weight "
                                       f"dtype {weight.dtype}")
        elif input.dtype != weight.dtype:
            raise RNNDtypeError(
                f"FusedRNN: RNN input dtype ({input.dtype}) does not match weight dtype ({weight.dtype}). "
                f"Convert input: input.to({weight.dtype}), or convert model: model.to({input.dtype})")
        if input.shape[-1] != self.input_size:
            raise RNNShapeError(
                f"FusedRNN: input.size(-1) must be equal to input_size={self.input_size}: {what()} has "
                f"{input.shape[-1]} features, expected {self.input_size}")
        if hx is not None and _shape(hx) != expected_hx:
            raise RNNShapeError(
                f"FusedRNN: hx must have shape {expected_hx} {hx_layout} for {what()}; got shape {_shape(hx)}")
        if input.device != weight.device:
            raise RNNDeviceError(
                f"FusedRNN: input is on {input.device} but the weights are on {weight.device}; "
                f"move one of them: input.to({str(weight.device)!r}) or model.to({str(input.device)!r})")
        if hx is not None and hx.device != input.device:
            raise RNNDeviceError(f"FusedRNN: hx is on {hx.device} but input is on {input.device}; "
                                 "they must be on one device")
        if fallback is None and hx is not None and hx.dtype != input.dtype:
            raise RNNDtypeError(f"FusedRNN: hx dtype ({hx.dtype}) does not match input dtype "
                                f"({input.dtype}) and weight dtype ({weight.dtype})")
        T = input.shape[1 if batched and self.batch_first else 0]
        if T == 0:
            raise RNNShapeError(f"FusedRNN: expected sequence length to be larger than 0 in RNN; "
                                f"got {what()}, with T = 0")

        if fallback is None and input.device.type not in _FUSED_DEVICE_TYPES:
            fallback = (("device", input.device.type),
                        f"device type {input.device.type!r} has no fused kernel (fused: "
                        f"{', '.join(sorted(_FUSED_DEVICE_TYPES))})")
        if fallback is None and input.dtype not in _FUSED_DTYPES:
            fallback = ("dtype", input.dtype), (f"dtype {input.dtype} has no fused kernel "
                                                "(fused: torch.float32, torch.float64)")

        if not batched:
            input = input.unsqueeze(1)
            hx = None if hx is None else hx.unsqueeze(1)
        elif self.batch_first:
            input = input.transpose(0, 1)
        return input, hx, batched, fallback

    def _unfused_forward(self, input, hx):
        """nn.RNN's implementation, with output_dropout as torch's F.dropout on the output."""
        output, h_n = super().forward(input, hx)
        if self.training and self.output_dropout > 0:
            if isinstance(output, PackedSequence):
                output = PackedSequence(F.dropout(output.data, self.output_dropout, True), output.batch_sizes,
                                        output.sorted_indices, output.unsorted_indices)
            else:
                output = F.dropout(output, self.output_dropout, True)
        return output, h_n

    def _empty_batch(self, input, hx):
        """B = 0: nn.RNN's empty output [T, 0, H] and h_n [L, 0, H], without a kernel call;
        connected to the input, hx and every weight, so that backward runs and gives zeros."""
        weights = [getattr(self, name) for name in self._flat_weights_names]
        anchor = input.sum() if hx is None else input.sum() + hx.sum()
        anchor = sum((w.sum() for w in weights), anchor) * 0
        T, H = input.shape[0], self.hidden_size
        return input.new_zeros((T, 0, H)) + anchor, input.new_zeros((self.num_layers, 0, H)) + anchor

    def forward(self, input, hx=None):
        fallback = self._module_fallback(input)
        if fallback is None:
            input_tm, hx_tm, batched, fallback = self._check_args(input, hx)
        if fallback is not None:
            _warn_fallback(*fallback)
            return self._unfused_forward(input, hx)

        L, H = self.num_layers, self.hidden_size
        B = input_tm.shape[1]
        if B == 0:
            output, h_n = self._empty_batch(input_tm, hx_tm)
        else:
            hx_tm = input_tm.new_zeros(L, B, H) if hx_tm is None else hx_tm
            layer_input, h_n = input_tm, []
            for layer in range(L):
                biases = ((getattr(self, f"bias_ih_l{layer}"), getattr(self, f"bias_hh_l{layer}"))
                          if self.bias else (None, None))
                p = (self.dropout if layer < L - 1 else self.output_dropout) if self.training else 0.0
                output, h_last = rnn_tanh(layer_input, hx_tm[layer], getattr(self, f"weight_ih_l{layer}"),
                                          getattr(self, f"weight_hh_l{layer}"), *biases, dropout=p)
                h_n.append(h_last)
                layer_input = output
            h_n = torch.stack(h_n)

        if not batched:
            return output.squeeze(1), h_n.squeeze(1)
        if self.batch_first:
            output = output.transpose(0, 1)
        return output, h_n


# torch.load(weights_only=True) unpickles only allow-listed classes: FusedRNN's state is
# nn.RNN's plus a float, so it is as safe to load as nn.RNN.
torch.serialization.add_safe_globals([FusedRNN])
