"""The fused ops: fake kernels, the autograd.Function (double backward included), vmap rules and
rnn_tanh(), the decode, packed linears."""
import contextlib
import functools

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
    The backward computes only the gradients autograd asks for (ctx.needs_input_grad), skipping
    the products that only the others need.

    Differentiable to any order: without a graph being built (the usual backward) the backward
    is the fused backward op alone. When one is (create_graph=True, torch.func.grad/vjp/jacrev),
    the first-order gradients are still the fused op's values, but come out of
    _RNNTanhBackwardFunction, whose own derivative is that of the same BPTT written with plain
    torch ops (_rnn_tanh_backward_torch); second and higher derivatives go through that.

    torch.func: generate_vmap_rule=True; under vmap the forward and backward ops run their vmap
    rules (_forward_vmap, _backward_vmap below).
    """

    generate_vmap_rule = True

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
        # The biases only for the double backward's recomputation (the fused backward does not
        # read them); saving references costs nothing.
        ctx.save_for_backward(x, h0, w_ih, w_hh, hidden, b_ih, b_hh)
        ctx.dropout, ctx.seed = dropout, seed
        ctx.mark_non_differentiable(output[2])
        # Not materialized: the third output never gets a gradient, and zeros for it would
        # cost a [T, B, H] allocation per call.
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad_output, grad_h_n, _):
        x, h0, w_ih, w_hh, hidden, b_ih, b_hh = ctx.saved_tensors
        if grad_output is None:  # expanded zeros: the kernels copy grad_output once anyway
            grad_output = hidden.new_zeros(()).expand(hidden.shape)
        if grad_h_n is None:
            grad_h_n = h0.new_zeros(()).expand(h0.shape)
        need_x, need_h0, need_w_ih, need_w_hh, need_b_ih, need_b_hh = ctx.needs_input_grad[:6]
        mask = [need_x, need_h0, need_w_ih, need_w_hh, need_b_ih or need_b_hh]
        if torch.is_grad_enabled() and any(ctx.needs_input_grad):
            # A graph is being built (double backward, torch.func): the same fused values, out
            # of a Function that knows their derivative.
            dx, dh0, dw_ih, dw_hh, db = _RNNTanhBackwardFunction.apply(
                grad_output, grad_h_n, x, h0, w_ih, w_hh, b_ih, b_hh, hidden.detach(),
                tuple(mask), ctx.dropout, ctx.seed)
        else:
            dx, dh0, dw_ih, dw_hh, db = _BACKWARD(grad_output, grad_h_n, x, h0, w_ih, w_hh, hidden,
                                                  mask, ctx.dropout, ctx.seed)
        return (dx, dh0, dw_ih, dw_hh, db if need_b_ih else None, db if need_b_hh else None, None, None)


# --------------------------------------------------------------------------- double backward

def _dropout_multiplier(p, seed, T, B, H, dtype, device):
    """The fused op's dropout multipliers [T, B, H] for (p, seed): 1 / (1 - p) (in `dtype`, as the
    kernels round it) where kept, 0 where dropped; None when p = 0. Drawn by the forward op
    itself on inputs whose every hidden value is tanh(1) != 0, so it is the kernels' mask by
    construction (csrc/dropout_mask.h; reference.dropout_mask is its numpy copy)."""
    if p == 0:
        return None
    zeros = functools.partial(torch.zeros, dtype=dtype, device=device)
    _, _, dropped = _FORWARD(zeros(T, B, 1), zeros(B, H), zeros(H, 1), zeros(H, H),
                             torch.ones(H, dtype=dtype, device=device), None, p, seed)
    scale = 1.0 / (1.0 - p) if p < 1 else 0.0
    return (dropped != 0).to(dtype) * scale


def _rnn_tanh_torch(x, h0, w_ih, w_hh, b_ih=None, b_hh=None):
    """The layer with plain (differentiable, vmappable) torch ops: (h_1..h_T [T, B, H], h_T)."""
    pre = x @ w_ih.transpose(0, 1)
    if b_ih is not None:
        pre = pre + b_ih
    if b_hh is not None:
        pre = pre + b_hh
    h, hs = h0, []
    for t in range(x.shape[0]):
        h = torch.tanh(pre[t] + h @ w_hh.transpose(0, 1))
        hs.append(h)
    return torch.stack(hs), h


def _rnn_tanh_backward_torch(grad_output, grad_h_n, x, h0, w_ih, w_hh, b_ih, b_hh, multiplier):
    """The backward op's (dx, dh0, dw_ih, dw_hh, db) with plain torch ops (BPTT of
    reference.rnn_tanh_backward), recomputing h_1..h_T from the inputs, so that it is
    differentiable in all of them (and in grad_output, grad_h_n) to any order. multiplier: the
    dropout multipliers (grad_output is then the gradient of the dropped output) or None."""
    hidden, _ = _rnn_tanh_torch(x, h0, w_ih, w_hh, b_ih, b_hh)
    grad_hidden = grad_output if multiplier is None else grad_output * multiplier
    dnext, a = grad_h_n, [None] * x.shape[0]
    for t in reversed(range(x.shape[0])):
        a[t] = (grad_hidden[t] + dnext) * (1 - hidden[t] * hidden[t])
        dnext = a[t] @ w_hh
    a = torch.stack(a)
    h_prev = torch.cat([h0.unsqueeze(0), hidden[:-1]])
    return (a @ w_ih, dnext, torch.einsum("tbh,tbe->he", a, x), torch.einsum("tbh,tbk->hk", a, h_prev),
            a.sum((0, 1)))


class _RNNTanhBackwardFunction(torch.autograd.Function):
    """RNNTanhFunction's backward when a graph is being built: (grad_output, grad_h_n, x, h0,
    w_ih, w_hh, b_ih, b_hh, hidden, mask, dropout, seed) -> (dx, dh0, dw_ih, dw_hh, db), None
    where mask is False. The values are the fused backward op's; the derivative is that of
    _rnn_tanh_backward_torch (torch.func.vjp of it, so differentiable again when a graph is built
    once more). hidden: the forward's undropped output, detached; only the fused op reads it (the
    derivative recomputes it from the inputs, so its dependence on them is included)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad_output, grad_h_n, x, h0, w_ih, w_hh, b_ih, b_hh, hidden, mask, dropout, seed):
        return _BACKWARD(grad_output, grad_h_n, x, h0, w_ih, w_hh, hidden, list(mask), dropout, seed)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_output, grad_h_n, x, h0, w_ih, w_hh, b_ih, b_hh, _, mask, dropout, seed = inputs
        ctx.save_for_backward(grad_output, grad_h_n, x, h0, w_ih, w_hh, b_ih, b_hh)
        ctx.mask, ctx.dropout, ctx.seed = mask, dropout, seed

    @staticmethod
    def backward(ctx, *grads):
        saved = list(ctx.saved_tensors)
        x = saved[2]
        wanted = [i for i in range(8) if ctx.needs_input_grad[i]]
        if not wanted:
            return (None,) * 12
        multiplier = _dropout_multiplier(ctx.dropout, ctx.seed, x.shape[0], x.shape[1], saved[5].shape[0],
                                         x.dtype, x.device)
        outs = [i for i in range(5) if ctx.mask[i]]

        def first_order(*primals):
            args = list(saved)
            for i, t in zip(wanted, primals):
                args[i] = t
            result = _rnn_tanh_backward_torch(*args, multiplier)
            return tuple(result[i] for i in outs)

        results, vjp_fn = torch.func.vjp(first_order, *(saved[i] for i in wanted))
        cotangents = tuple(torch.zeros_like(r) if grads[i] is None else grads[i]
                           for i, r in zip(outs, results))
        grad_inputs = [None] * 12
        for i, g in zip(wanted, vjp_fn(cotangents)):
            grad_inputs[i] = g
        return tuple(grad_inputs)


# --------------------------------------------------------------------------- vmap rules
# torch.vmap over the two ops (and so over rnn_tanh, RNNTanhFunction's generate_vmap_rule and
# torch.func.jacrev / per-sample gradients). The rows of a batch are independent, so when the
# weights are shared (not vmapped) and there is no dropout, N vmapped problems of batch B are
# ONE kernel call over N*B rows: x [N, T, B, E] -> [T, N*B, E], h0 [N, B, H] -> [N*B, H] (an
# unbatched x or h0 is expanded), and the results unfolded. Anything else (vmapped weights or
# biases, dropout > 0) loops over the N elements, one op call each: correct, slower.
#
# Dropout under vmap: the seed is a plain int, so each of N separate calls with that seed would
# draw the same mask of (p, seed) over its own [T, B, H]; a folded call would draw a [T, N*B, H]
# mask instead, different elements for all but the first vmapped element. vmap's meaning here is
# that of the N separate calls (torch's rule: vmap(f) == stack(map(f))), so dropout > 0 loops.


def _batched(t, dim, n):
    """t with its vmapped dimension first; an unbatched t expanded to n copies (a view)."""
    return t.movedim(dim, 0) if dim is not None else t.unsqueeze(0).expand(n, *t.shape)


def _vmap_loop(op, n, in_dims, args, kwargs):
    """op over the n vmapped elements one at a time, results stacked on dim 0 (None stays None)."""
    results = []
    for i in range(n):
        sliced = [a.select(d, i) if d is not None else a for a, d in zip(args, in_dims)]
        results.append(op(*sliced, *args[len(in_dims):], **kwargs))
    outputs = tuple(None if r[0] is None else torch.stack(r) for r in zip(*results))
    return outputs, tuple(None if o is None else 0 for o in outputs)


@torch.library.register_vmap("charrnn::rnn_tanh_forward")
def _forward_vmap(info, in_dims, x, h0, w_ih, w_hh, b_ih=None, b_hh=None, dropout=0.0, seed=0):
    n = info.batch_size
    args = (x, h0, w_ih, w_hh, b_ih, b_hh, dropout, seed)
    if dropout != 0 or any(d is not None for d in in_dims[2:6]):
        return _vmap_loop(_FORWARD, n, in_dims[:6], args, {})
    x_n = _batched(x, in_dims[0], n)  # [N, T, B, E]
    _, T, B, E = x_n.shape
    H = w_hh.shape[0]
    output, h_n, dropped = _FORWARD(x_n.movedim(0, 1).reshape(T, n * B, E),
                                    _batched(h0, in_dims[1], n).reshape(n * B, H),
                                    w_ih, w_hh, b_ih, b_hh, dropout, seed)
    # dropped is [0] (dropout = 0): the same for every element.
    return (output.view(T, n, B, H), h_n.view(n, B, H), dropped), (1, 0, None)


@torch.library.register_vmap("charrnn::rnn_tanh_backward")
def _backward_vmap(info, in_dims, grad_output, grad_h_n, x, h0, w_ih, w_hh, output,
                   output_mask=(True,) * 5, dropout=0.0, seed=0):
    """Folded as the forward (grad_output, grad_h_n, x, h0, output into N*B rows) when w_ih, w_hh
    are not vmapped and dropout = 0. The weight gradients of a vmapped call are per element, so
    they cannot come out of the folded kernel's sums over all N*B rows: when any is asked for,
    the folded call computes the per-row a_t = dL/d(pre-activation) instead (its dx with w_ih
    the identity: the sweep of a reads only grad_output, grad_h_n, w_hh and output, and dx is
    a w_ih), and dx, dw_ih, dw_hh, db are products of a per element (batched matmul/einsum)."""
    n = info.batch_size
    args = (grad_output, grad_h_n, x, h0, w_ih, w_hh, output, list(output_mask), dropout, seed)
    if dropout != 0 or in_dims[4] is not None or in_dims[5] is not None:
        return _vmap_loop(_BACKWARD, n, in_dims[:7], args, {})
    want_dx, want_dh0, want_dw_ih, want_dw_hh, want_db = output_mask
    go, x_n, out = (_batched(t, d, n).movedim(0, 1) for t, d in
                    ((grad_output, in_dims[0]), (x, in_dims[2]), (output, in_dims[6])))  # [T, N, B, .]
    T, _, B, E = x_n.shape
    H = w_hh.shape[0]
    gh, h0_n = (_batched(t, d, n).reshape(n * B, H) for t, d in ((grad_h_n, in_dims[1]), (h0, in_dims[3])))
    go, out = go.reshape(T, n * B, H), out.reshape(T, n * B, H)
    dx = dw_ih = dw_hh = db = None
    if not (want_dw_ih or want_dw_hh or want_db):
        dx, dh0, _, _, _ = _BACKWARD(go, gh, x_n.reshape(T, n * B, E), h0_n, w_ih, w_hh, out,
                                     [want_dx, want_dh0, False, False, False], dropout, seed)
    else:
        eye = torch.eye(H, dtype=w_hh.dtype, device=w_hh.device)
        a, dh0, _, _, _ = _BACKWARD(go, gh, out, h0_n, eye, w_hh, out,
                                    [True, want_dh0, False, False, False], dropout, seed)
        a4 = a.view(T, n, B, H)
        if want_dx:
            dx = a @ w_ih
        if want_dw_ih:
            dw_ih = torch.einsum("tnbh,tnbe->nhe", a4, x_n)
        if want_dw_hh:
            h_prev = torch.cat([h0_n.unsqueeze(0), out[:-1]]).view(T, n, B, H)
            dw_hh = torch.einsum("tnbh,tnbk->nhk", a4, h_prev)
        if want_db:
            db = a4.sum((0, 2))
    results = (None if dx is None else dx.view(T, n, B, E), None if dh0 is None else dh0.view(n, B, H),
               dw_ih, dw_hh, db)
    return results, tuple(None if r is None else d for r, d in zip(results, (1, 0, 0, 0, 0)))


def rnn_tanh(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, dropout=0.0, seed=None):
    """One tanh-RNN layer over a whole window: h_t = tanh(x_t w_ih^T + b_ih + h_{t-1} w_hh^T + b_hh).

    x [T, B, E] (time-major), h0 [B, H], w_ih [H, E], w_hh [H, H], b_ih/b_hh [H] or None.
    Returns (output [T, B, H], h_n [B, H]); differentiable in all six tensors.

    dropout: p in [0, 1]; output is then dropout(h_1..h_T), drawn inside the kernels with the
    same expectation and scaling as torch's dropout (kept elements times 1 / (1 - p)), but from
    a counter-based generator (csrc/dropout_mask.h), not torch's random stream. seed: the mask's
    seed; None draws one from torch's generator (dropout_seed()), so torch.manual_seed decides
    the masks. h_n is h_T, undropped.

    Differentiable to any order (create_graph=True, torch.func.grad/vjp/jacrev, hessian as
    jacrev(jacrev); forward-mode AD, hence jacfwd and torch.func.hessian, is not implemented).
    torch.vmap: with shared (unvmapped) weights and biases and dropout = 0, N vmapped problems
    run as one kernel call over N*B rows, forward and backward (per-element weight gradients
    included); vmapped weights or biases, or dropout > 0, loop over the N elements. With dropout
    under vmap every element gets the mask of (p, seed), exactly as N separate calls with that
    seed; pass the seed explicitly (seed=None draws it with torch.randint, which vmap allows only
    with randomness="same", giving one seed for all elements).
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
    softmax(logits / temperature) over the top_k most likely ids, drawn with `generator`.
    Returns (ids [B, steps] int64, h_n [L, B, H], logits_n [B, V]): the drawn ids, and the state
    and logits after the last of them, from which a next call continues the same text.
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
