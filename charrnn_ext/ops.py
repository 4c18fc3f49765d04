"""The fused ops: fake kernels, the autograd.Function and rnn_tanh(), the decode, packed linears."""
import contextlib

import torch

from . import _C

_FORWARD = torch.ops.charrnn.rnn_tanh_forward
_BACKWARD = torch.ops.charrnn.rnn_tanh_backward


def _check_like(x, name, t, shape):
    """Device and dtype agreement for the fake kernels; the C++ kernels run the full checks
    (charrnn::check_forward_args), the fake ones just enough to trace only what eager accepts."""
    if t.device != x.device or t.dtype != x.dtype:
        raise ValueError(f"charrnn: {name} {shape} must match x's device {x.device} and dtype "
                         f"{x.dtype}, got {t.device} and {t.dtype}")
    if t.dim() != shape.count(",") + 1:
        raise ValueError(f"charrnn: {name} must have shape {shape}, got {tuple(t.shape)}")


def _check_dropout(p):
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"charrnn: dropout must be a probability in [0, 1], got {p}")


def dropout_seed():
    """The seed of one call's dropout mask: one draw from torch's default CPU generator, so that
    torch.manual_seed, a checkpoint's RNG state and resumed runs reproduce the masks (on every
    device; the masks themselves come from csrc/dropout_mask.h's generator, not torch's)."""
    return int(torch.randint(-2**63, 2**63 - 1, (), dtype=torch.int64))


@torch.library.register_fake("charrnn::rnn_tanh_forward")
def _forward_fake(x, h0, w_ih, w_hh, b_ih, b_hh, dropout=0.0, seed=0):
    if x.dim() != 3:
        raise ValueError(f"charrnn: x must have shape [T, B, E], got {tuple(x.shape)}")
    for name, t, shape in (("h0", h0, "[B, H]"), ("w_ih", w_ih, "[H, E]"), ("w_hh", w_hh, "[H, H]"),
                           ("b_ih", b_ih, "[H]"), ("b_hh", b_hh, "[H]")):
        if t is not None:
            _check_like(x, name, t, shape)
    _check_dropout(dropout)
    T, B, _ = x.shape
    H = w_hh.shape[0]
    return x.new_empty((T, B, H)), x.new_empty((B, H)), x.new_empty((T, B, H) if dropout > 0 else (0,))


@torch.library.register_fake("charrnn::rnn_tanh_backward")
def _backward_fake(grad_output, grad_h_n, x, h0, w_ih, w_hh, output, output_mask=(True,) * 5,
                   dropout=0.0, seed=0):
    for name, t, shape in (("grad_output", grad_output, "[T, B, H]"), ("grad_h_n", grad_h_n, "[B, H]"),
                           ("h0", h0, "[B, H]"), ("w_ih", w_ih, "[H, E]"), ("w_hh", w_hh, "[H, H]"),
                           ("output", output, "[T, B, H]")):
        _check_like(x, name, t, shape)
    _check_dropout(dropout)
    # The kernels return contiguous gradients whatever the inputs' strides, None where not asked.
    shapes = (x.shape, h0.shape, w_ih.shape, w_hh.shape, w_hh.shape[:1])
    return tuple(x.new_empty(shape) if wanted else None for shape, wanted in zip(shapes, output_mask))


class RNNTanhFunction(torch.autograd.Function):
    """(x, h0, w_ih, w_hh, b_ih, b_hh, dropout, seed) -> (output, h_n) through the fused kernels.

    Shapes: x [T, B, E], h0 [B, H], w_ih [H, E], w_hh [H, H], b_ih/b_hh [H] or None;
    output [T, B, H], h_n [B, H]. With dropout p > 0, output is the layer's output after the
    dropout mask of (p, seed) (csrc/dropout_mask.h); h_n is never dropped, as in nn.RNN. The
    undropped sequence is saved for the backward, which draws the mask again: none is stored.
    Once differentiable: the backward is itself a fused op without a derivative. The backward
    computes only the gradients autograd asks for (ctx.needs_input_grad), skipping the products
    that only the others need.
    """

    @staticmethod
    def forward(x, h0, w_ih, w_hh, b_ih, b_hh, dropout=0.0, seed=0):
        output, h_n, dropped = _FORWARD(x, h0, w_ih, w_hh, b_ih, b_hh, dropout, seed)
        # The undropped sequence leaves as a third, non-differentiable output: setup_context
        # saves it from there.
        return (dropped, h_n, output) if dropout > 0 else (output, h_n, dropped)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, h0, w_ih, w_hh, b_ih, b_hh, dropout, seed = inputs
        hidden = output[2] if dropout > 0 else output[0]
        ctx.save_for_backward(x, h0, w_ih, w_hh, hidden)
        ctx.dropout, ctx.seed = dropout, seed
        ctx.mark_non_differentiable(output[2])
        # Not materialized: the third output never gets a gradient, and zeros for it would
        # cost a [T, B, H] allocation per call.
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad_output, grad_h_n, _):
        if torch.is_grad_enabled() and any(ctx.needs_input_grad):
            raise RuntimeError("charrnn: double backward (create_graph=True) through rnn_tanh is not "
                               "supported; use torch.nn.RNN where second derivatives are needed")
        x, h0, w_ih, w_hh, hidden = ctx.saved_tensors
        if grad_output is None:  # expanded zeros: the kernels copy grad_output once anyway
            grad_output = hidden.new_zeros(()).expand(hidden.shape)
        if grad_h_n is None:
            grad_h_n = h0.new_zeros(()).expand(h0.shape)
        need_x, need_h0, need_w_ih, need_w_hh, need_b_ih, need_b_hh = ctx.needs_input_grad[:6]
        dx, dh0, dw_ih, dw_hh, db = _BACKWARD(grad_output, grad_h_n, x, h0, w_ih, w_hh, hidden,
                                              [need_x, need_h0, need_w_ih, need_w_hh, need_b_ih or need_b_hh],
                                              ctx.dropout, ctx.seed)
        return (dx, dh0, dw_ih, dw_hh, db if need_b_ih else None, db if need_b_hh else None, None, None)


def rnn_tanh(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, dropout=0.0, seed=None):
    """One tanh-RNN layer over a whole window: h_t = tanh(x_t w_ih^T + b_ih + h_{t-1} w_hh^T + b_hh).

    x [T, B, E] (time-major), h0 [B, H], w_ih [H, E], w_hh [H, H], b_ih/b_hh [H] or None.
    Returns (output [T, B, H], h_n [B, H]); differentiable in all six tensors.

    dropout: p in [0, 1]; output is then dropout(h_1..h_T), drawn inside the kernels with the
    same expectation and scaling as torch's dropout (kept elements times 1 / (1 - p)), but from
    a counter-based generator (csrc/dropout_mask.h), not torch's random stream. seed: the mask's
    seed; None draws one from torch's generator (dropout_seed()), so torch.manual_seed decides
    the masks. h_n is h_T, undropped.
    """
    _check_dropout(dropout)  # before a seed is drawn: a bad call leaves the RNG alone
    if dropout > 0 and seed is None:
        seed = dropout_seed()
    output, h_n, _ = RNNTanhFunction.apply(x, h0, w_ih, w_hh, b_ih, b_hh, float(dropout),
                                           0 if seed is None else seed)
    return output, h_n


# Generation: the fused decode loop (csrc/decode.h).

_DECODE = torch.ops.charrnn.rnn_tanh_decode


@torch.library.register_fake("charrnn::rnn_tanh_decode")
def _decode_fake(logits, h0, embedding, w_ih, w_hh, b_ih, b_hh, head_weight, head_bias, steps,
                 temperature, top_k, generator):
    tensors = [("logits", logits, 2), ("head_weight", head_weight, 2), ("head_bias", head_bias, 1),
               ("embedding", embedding, 2)]
    tensors += [(f"{name}[{l}]", t, dim) for name, ts, dim in (("w_ih", w_ih, 2), ("w_hh", w_hh, 2),
                                                                ("b_ih", b_ih, 1), ("b_hh", b_hh, 1))
                for l, t in enumerate(ts)]
    if h0.dim() != 3:
        raise ValueError(f"charrnn: decode's h0 must have shape [L, B, H], got {tuple(h0.shape)}")
    for name, t, dim in tensors:
        if t is not None and (t.device != h0.device or t.dtype != h0.dtype or t.dim() != dim):
            raise ValueError(f"charrnn: decode's {name} must be a {dim}-d tensor of h0's device "
                             f"{h0.device} and dtype {h0.dtype}, got {tuple(t.shape)} on {t.device}, {t.dtype}")
    return (logits.new_empty((h0.shape[1], steps), dtype=torch.long), h0.new_empty(h0.shape),
            logits.new_empty(logits.shape))


def rnn_tanh_decode(logits, h0, embedding, w_ih, w_hh, b_ih, b_hh, head_weight, head_bias, steps,
                    temperature=1.0, top_k=None, generator=None):
    """`steps` draws from a stack of L tanh layers with a linear head, in one call.

    logits [B, V]: the logits of the first draw; h0 [L, B, H]: the state that produced them;
    embedding [V, E] (None: one-hot input); w_ih, w_hh, b_ih, b_hh: lists of L tensors as in
    torch.nn.RNN (biases may be None); head_weight [V, H], head_bias [V] or None. Each draw is
    charrnn_ext.sample.draw's (torch.multinomial's): argmax at temperature 0, else
    softmax(logits / temperature) over the top_k most likely ids, drawn with `generator`. Returns (ids [B, steps] int64, h_n
    [L, B, H], logits_n [B, V]): the drawn ids, and the state and logits after the last of them,
    from which a next call continues the same text.
    """
    return _DECODE(logits, h0, embedding, list(w_ih), list(w_hh), list(b_ih), list(b_hh),
                   head_weight, head_bias, steps, temperature, top_k, generator)


# Generation's products for the cells without a fused decode (csrc/rnn_tanh.h), CPU only.

PACKED_LINEAR_ALIGN = 16  # kPackedLinearAlign


@torch.library.register_fake("charrnn::pack_linear")
def _pack_linear_fake(weight):
    if weight.dim() != 2:
        raise ValueError(f"charrnn: pack_linear's weight must have shape [N, K], got {tuple(weight.shape)}")
    N, K = weight.shape
    return weight.new_empty(((N + PACKED_LINEAR_ALIGN - 1) // PACKED_LINEAR_ALIGN * PACKED_LINEAR_ALIGN * K,))


@torch.library.register_fake("charrnn::packed_linear")
def _packed_linear_fake(input, packed, out_features, bias):
    if input.dim() != 2:
        raise ValueError(f"charrnn: packed_linear's input must have shape [B, K], got {tuple(input.shape)}")
    return input.new_empty((input.shape[0], out_features))


class PackedLinear:
    """x -> x weight^T + bias, with weight [N, K] packed once for the CPU step kernels.

    For loops that multiply by the same weight a few rows at a time (sampling one character per
    call): each call skips the re-layout, checks and thread start-up that a GEMM call pays, which
    at one row cost more than the multiply-adds. Inference only (no autograd); the values are
    the weight's at construction. CPU tensors, float32 or float64.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.out_features = weight.shape[0]
        self.packed = torch.ops.charrnn.pack_linear(weight.detach())
        self.bias = None if bias is None else bias.detach().contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.charrnn.packed_linear(x, self.packed, self.out_features, self.bias)


# Benchmarks and tests: the CPU kernels' choices forced (csrc/rnn_tanh.h, force_cpu_choice).

@contextlib.contextmanager
def _forced_cpu_choice(sweep: str | None = None, backward: str | None = None):
    """Within the block, the CPU kernels' forward and backward sweeps split a step among threads
    by `sweep` ("rows", "units" or "auto") and the backward runs in the order `backward`
    ("overlap", "serial" or "auto"); None leaves that choice as it is. For benchmarks and tests
    that compare them in one process: the setting is process-wide, not per thread. Restored on
    exit; an unknown value is a ValueError, and leaves every choice as it was.

        with _forced_cpu_choice(sweep="rows", backward="serial"):
            out, h_n = rnn_tanh(...); (out.sum() + h_n.sum()).backward()
    """
    wanted = {knob: value for knob, value in (("sweep", sweep), ("backward", backward)) if value is not None}
    saved = {}
    try:
        for knob, value in wanted.items():
            saved[knob] = _C._force_cpu_choice(knob, value)
        yield
    finally:
        for knob, value in saved.items():
            _C._force_cpu_choice(knob, value)
