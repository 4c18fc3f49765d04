"""The fused tanh-RNN window op: fake kernels, the autograd.Function and rnn_tanh()."""
import torch

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


@torch.library.register_fake("charrnn::rnn_tanh_forward")
def _forward_fake(x, h0, w_ih, w_hh, b_ih, b_hh):
    if x.dim() != 3:
        raise ValueError(f"charrnn: x must have shape [T, B, E], got {tuple(x.shape)}")
    for name, t, shape in (("h0", h0, "[B, H]"), ("w_ih", w_ih, "[H, E]"), ("w_hh", w_hh, "[H, H]"),
                           ("b_ih", b_ih, "[H]"), ("b_hh", b_hh, "[H]")):
        if t is not None:
            _check_like(x, name, t, shape)
    T, B, _ = x.shape
    H = w_hh.shape[0]
    return x.new_empty((T, B, H)), x.new_empty((B, H))


@torch.library.register_fake("charrnn::rnn_tanh_backward")
def _backward_fake(grad_output, grad_h_n, x, h0, w_ih, w_hh, output, output_mask=(True,) * 5):
    for name, t, shape in (("grad_output", grad_output, "[T, B, H]"), ("grad_h_n", grad_h_n, "[B, H]"),
                           ("h0", h0, "[B, H]"), ("w_ih", w_ih, "[H, E]"), ("w_hh", w_hh, "[H, H]"),
                           ("output", output, "[T, B, H]")):
        _check_like(x, name, t, shape)
    # The kernels return contiguous gradients whatever the inputs' strides, None where not asked.
    shapes = (x.shape, h0.shape, w_ih.shape, w_hh.shape, w_hh.shape[:1])
    return tuple(x.new_empty(shape) if wanted else None for shape, wanted in zip(shapes, output_mask))


class RNNTanhFunction(torch.autograd.Function):
    """(x, h0, w_ih, w_hh, b_ih, b_hh) -> (output, h_n) through the fused kernels.

    Shapes: x [T, B, E], h0 [B, H], w_ih [H, E], w_hh [H, H], b_ih/b_hh [H] or None;
    output [T, B, H], h_n [B, H]. Once differentiable: the backward is itself a fused op
    without a derivative. The backward computes only the gradients autograd asks for
    (ctx.needs_input_grad), skipping the products that only the others need.
    """

    @staticmethod
    def forward(x, h0, w_ih, w_hh, b_ih, b_hh):
        return _FORWARD(x, h0, w_ih, w_hh, b_ih, b_hh)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, h0, w_ih, w_hh, b_ih, b_hh = inputs
        ctx.save_for_backward(x, h0, w_ih, w_hh, output[0])
        ctx.set_materialize_grads(True)

    @staticmethod
    def backward(ctx, grad_output, grad_h_n):
        if torch.is_grad_enabled() and any(ctx.needs_input_grad):
            raise RuntimeError("charrnn: double backward (create_graph=True) through rnn_tanh is not "
                               "supported; use torch.nn.RNN where second derivatives are needed")
        x, h0, w_ih, w_hh, output = ctx.saved_tensors
        need_x, need_h0, need_w_ih, need_w_hh, need_b_ih, need_b_hh = ctx.needs_input_grad
        dx, dh0, dw_ih, dw_hh, db = _BACKWARD(grad_output, grad_h_n, x, h0, w_ih, w_hh, output,
                                              [need_x, need_h0, need_w_ih, need_w_hh, need_b_ih or need_b_hh])
        return (dx, dh0, dw_ih, dw_hh, db if need_b_ih else None, db if need_b_hh else None)


def rnn_tanh(x, h0, w_ih, w_hh, b_ih=None, b_hh=None):
    """One tanh-RNN layer over a whole window: h_t = tanh(x_t w_ih^T + b_ih + h_{t-1} w_hh^T + b_hh).

    x [T, B, E] (time-major), h0 [B, H], w_ih [H, E], w_hh [H, H], b_ih/b_hh [H] or None.
    Returns (output [T, B, H], h_n [B, H]); differentiable in all six tensors.
    """
    return RNNTanhFunction.apply(x, h0, w_ih, w_hh, b_ih, b_hh)


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
    charrnn_ext.sample.pick's: argmax at temperature 0, else softmax(logits / temperature) over
    the top_k most likely ids, drawn with `generator`. Returns (ids [B, steps] int64, h_n
    [L, B, H], logits_n [B, V]): the drawn ids, and the state and logits after the last of them,
    from which a next call continues the same text.
    """
    return _DECODE(logits, h0, embedding, list(w_ih), list(w_hh), list(b_ih), list(b_hh),
                   head_weight, head_bias, steps, temperature, top_k, generator)
