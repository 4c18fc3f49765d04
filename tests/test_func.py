"""Second derivatives and torch.func over the fused op (rnn_tanh / RNNTanhFunction / FusedRNN).

Double backward: the first-order gradients under create_graph=True are the fused backward op's,
their derivative that of the BPTT written with torch ops (charrnn_ext.ops._RNNTanhBackwardFunction).
torch.func: vmap rules for both ops (charrnn_ext.ops._forward_vmap / _backward_vmap) fold a vmapped
batch with shared weights into one kernel call; everything else loops. Oracles: torch.nn.RNN in
float64 with the same weights, and charrnn_ext.reference (numpy) for the dropout mask.
"""
import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from charrnn_ext import FusedRNN, RNNTanhFunction, reference, rnn_tanh

D = torch.float64
FORWARD = torch.ops.charrnn.rnn_tanh_forward
BACKWARD = torch.ops.charrnn.rnn_tanh_backward


def noncontiguous_copy(t):
    """The same values in a non-contiguous view (dims' memory order reversed, elements 2 apart)."""
    rev = list(range(t.dim()))[::-1]
    sizes = [t.shape[d] for d in rev]
    buf = t.new_zeros(sizes[:-1] + [2 * sizes[-1]])
    view = buf[..., ::2].permute(*rev)
    view.copy_(t)
    return view


def make_inputs(T=3, B=2, E=3, H=4, bias=True, layout="contiguous", seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    ts = [torch.randn(T, B, E, generator=g, dtype=D),
          0.5 * torch.randn(B, H, generator=g, dtype=D),
          torch.randn(H, E, generator=g, dtype=D) / E ** 0.5,
          0.9 * torch.randn(H, H, generator=g, dtype=D) / H ** 0.5,
          0.1 * torch.randn(H, generator=g, dtype=D),
          0.1 * torch.randn(H, generator=g, dtype=D)]
    if not bias:
        ts[4] = ts[5] = None
    out = []
    for t in ts:
        if t is not None:
            if layout == "noncontiguous":
                t = noncontiguous_copy(t)
            t.requires_grad_(requires_grad)
        out.append(t)
    if layout == "noncontiguous":
        assert not out[0].is_contiguous() and not out[2].is_contiguous()
    return out


def torch_rnn(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, multiplier=None):
    """The layer with plain torch ops, written here independently of charrnn_ext.ops."""
    h, hs = h0, []
    for t in range(x.shape[0]):
        pre = x[t] @ w_ih.T + h @ w_hh.T
        if b_ih is not None:
            pre = pre + b_ih
        if b_hh is not None:
            pre = pre + b_hh
        h = torch.tanh(pre)
        hs.append(h)
    out = torch.stack(hs)
    return (out if multiplier is None else out * multiplier), h


def nn_rnn_fn(E, H, bias):
    """(x, h0, w_ih, w_hh, b_ih, b_hh) -> (output, h_n) through torch.nn.RNN's own forward."""
    rnn = torch.nn.RNN(E, H, bias=bias).to(D)

    def f(x, h0, w_ih, w_hh, b_ih=None, b_hh=None):
        params = {"weight_ih_l0": w_ih, "weight_hh_l0": w_hh}
        if bias:
            params.update(bias_ih_l0=b_ih, bias_hh_l0=b_hh)
        out, h_n = torch.func.functional_call(rnn, params, (x, h0.unsqueeze(0)))
        return out, h_n[0]
    return f


class CountCharrnnOps(TorchDispatchMode):
    """Records each charrnn op that reaches the kernels (below vmap/autograd), with its shapes."""

    def __init__(self):
        super().__init__()
        self.calls, self.all_ops = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.all_ops.append(func._opname)
        if func.namespace == "charrnn":
            self.calls.append((func._opname, [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]))
        return func(*args, **(kwargs or {}))

    def count(self, name):
        return sum(1 for n, _ in self.calls if n == name)


def loss_of(out, h_n):
    # Not linear in out: second derivatives through the loss and through the op both matter.
    return (out.sin() * out).sum() + (h_n * h_n * h_n).sum()


# --------------------------------------------------------------------------- double backward

@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous"])
@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_gradgradcheck(bias, layout, dropout):
    inputs = [t for t in make_inputs(bias=bias, layout=layout, seed=1) if t is not None]

    def f(x, h0, w_ih, w_hh, *b):
        return rnn_tanh(x, h0, w_ih, w_hh, *(b or (None, None)), dropout=dropout, seed=1234)

    assert torch.autograd.gradgradcheck(f, tuple(inputs), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradgradcheck_one_input_at_a_time():
    """needs_input_grad with a single differentiable input (the others constants), both levels."""
    inputs = make_inputs(requires_grad=False, seed=2)
    for i in range(6):
        args = [t.detach().clone().requires_grad_(j == i) for j, t in enumerate(inputs)]
        assert torch.autograd.gradgradcheck(lambda *a: RNNTanhFunction.apply(*a, 0.0, 0)[:2], tuple(args),
                                            eps=1e-6, atol=1e-6)


def hvp(fn, params, v):
    loss = loss_of(*fn(*params))
    grads = torch.autograd.grad(loss, params, create_graph=True)
    return torch.autograd.grad(grads, params, v)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_hessian_vector_product_matches_nn_rnn(bias):
    T, B, E, H = 4, 3, 5, 6
    params = [t for t in make_inputs(T, B, E, H, bias=bias, seed=3) if t is not None]
    g = torch.Generator().manual_seed(4)
    v = [torch.randn(p.shape, generator=g, dtype=D) for p in params]
    got = hvp(lambda *p: rnn_tanh(*p), params, v)
    want = hvp(nn_rnn_fn(E, H, bias), params, v)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    assert max(w.abs().max() for w in want) > 1e-2  # not a vacuous comparison


def test_hessian_vector_product_with_dropout_matches_reference_mask():
    """With dropout, against the same math in torch ops and the numpy mask of reference.py."""
    T, B, E, H, p, seed = 3, 2, 3, 4, 0.5, 987654321
    params = make_inputs(T, B, E, H, seed=5)
    mult = torch.from_numpy(reference.dropout_mask(seed, p, (T, B, H)))
    assert 0 < (mult == 0).sum() < mult.numel()  # some dropped, some kept
    g = torch.Generator().manual_seed(6)
    v = [torch.randn(t.shape, generator=g, dtype=D) for t in params]
    got = hvp(lambda *a: rnn_tanh(*a, dropout=p, seed=seed), params, v)
    want = hvp(lambda *a: torch_rnn(*a, multiplier=mult), params, v)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_first_order_values_under_create_graph_are_the_fused_ones():
    x, h0, w_ih, w_hh, b_ih, b_hh = params = make_inputs(5, 3, 4, 7, seed=7)
    plain = torch.autograd.grad(loss_of(*rnn_tanh(*params)), params)
    graphed = torch.autograd.grad(loss_of(*rnn_tanh(*params)), params, create_graph=True)
    for a, b in zip(plain, graphed):
        assert torch.equal(a, b)
        assert b.requires_grad
    assert not any(t.requires_grad for t in plain)


def test_first_order_backward_is_the_fused_op_alone():
    """Without create_graph the backward is one rnn_tanh_backward call and no torch recurrence
    (no tanh); with it, still one fused call for the values."""
    params = make_inputs(4, 3, 5, 6, seed=8)
    loss = loss_of(*rnn_tanh(*params))
    with CountCharrnnOps() as mode:
        torch.autograd.grad(loss, params)
    assert mode.count("rnn_tanh_backward") == 1 and mode.count("rnn_tanh_forward") == 0
    assert not any(name.startswith("tanh") for name in mode.all_ops), mode.all_ops
    loss = loss_of(*rnn_tanh(*params))
    with CountCharrnnOps() as mode:
        torch.autograd.grad(loss, params, create_graph=True)
    assert mode.count("rnn_tanh_backward") == 1 and mode.count("rnn_tanh_forward") == 0


def test_third_derivative_matches_torch_math():
    """d^3/ds^3 of the loss along a direction (nested create_graph), against the same in torch ops:
    the derivative of the double backward is itself differentiable."""
    base = make_inputs(3, 2, 3, 4, requires_grad=False, seed=9)
    g = torch.Generator().manual_seed(10)
    direction = [torch.randn(t.shape, generator=g, dtype=D) for t in base]

    def third(fn):
        s = torch.zeros((), dtype=D, requires_grad=True)
        loss = loss_of(*fn(*[b + s * d for b, d in zip(base, direction)]))
        (d1,) = torch.autograd.grad(loss, s, create_graph=True)
        (d2,) = torch.autograd.grad(d1, s, create_graph=True)
        (d3,) = torch.autograd.grad(d2, s)
        return d1, d2, d3

    got, want = third(lambda *a: rnn_tanh(*a)), third(torch_rnn)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-10)


# --------------------------------------------------------------------------- vmap

def stacked(fn, n, *args, in_dims):
    """What vmap must equal: n separate calls, results stacked on dim 0."""
    results = []
    for i in range(n):
        results.append(fn(*[a.select(d, i) if d is not None else a for a, d in zip(args, in_dims)]))
    return [torch.stack(r) for r in zip(*results)]


@pytest.mark.parametrize("case", ["x", "h0", "both", "x-dim2"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_vmap_forward_folds_into_one_call(case, bias):
    N, T, B, E, H = 5, 3, 2, 3, 4
    _, _, w_ih, w_hh, b_ih, b_hh = make_inputs(T, B, E, H, bias=bias, requires_grad=False, seed=11)
    g = torch.Generator().manual_seed(12)
    xs, x1 = torch.randn(N, T, B, E, generator=g, dtype=D), torch.randn(T, B, E, generator=g, dtype=D)
    h0s, h01 = torch.randn(N, B, H, generator=g, dtype=D), torch.randn(B, H, generator=g, dtype=D)
    x, h0, in_dims = {"x": (xs, h01, (0, None)), "h0": (x1, h0s, (None, 0)), "both": (xs, h0s, (0, 0)),
                      "x-dim2": (xs.movedim(0, 2), h01, (2, None))}[case]
    fn = lambda x, h0: rnn_tanh(x, h0, w_ih, w_hh, b_ih, b_hh)  # noqa: E731
    with CountCharrnnOps() as mode:
        out, h_n = torch.func.vmap(fn, in_dims=in_dims)(x, h0)
    assert mode.calls == [("rnn_tanh_forward", [(T, N * B, E), (N * B, H), (H, E), (H, H)]
                           + ([(H,), (H,)] if bias else []))]
    want_out, want_h_n = stacked(fn, N, x, h0, in_dims=in_dims)
    assert out.shape == (N, T, B, H) and h_n.shape == (N, B, H)
    assert (out - want_out).abs().max() <= 1e-12 and (h_n - want_h_n).abs().max() <= 1e-12


def test_vmap_with_batched_weights_loops_and_matches():
    N, (x, h0, w_ih, w_hh, b_ih, b_hh) = 3, make_inputs(requires_grad=False, seed=13)
    g = torch.Generator().manual_seed(14)
    w_hhs = w_hh + 0.1 * torch.randn((N,) + w_hh.shape, generator=g, dtype=D)
    b_ihs = b_ih + 0.1 * torch.randn(N, b_ih.shape[0], generator=g, dtype=D)
    fn = lambda w_hh, b_ih: rnn_tanh(x, h0, w_ih, w_hh, b_ih, b_hh)  # noqa: E731
    with CountCharrnnOps() as mode:
        out, h_n = torch.func.vmap(fn)(w_hhs, b_ihs)
    assert mode.count("rnn_tanh_forward") == N
    want = stacked(fn, N, w_hhs, b_ihs, in_dims=(0, 0))
    assert (out - want[0]).abs().max() <= 1e-12 and (h_n - want[1]).abs().max() <= 1e-12
    assert not torch.allclose(out[0], out[1])


def test_vmap_with_dropout_is_n_calls_with_that_seed():
    """Documented semantics: vmap(rnn_tanh(..., dropout=p, seed=s)) == stack of N calls with seed s
    (each element gets the mask of (p, s)), so it loops instead of folding."""
    N, p, seed = 4, 0.5, 42
    x, h0, w_ih, w_hh, b_ih, b_hh = make_inputs(requires_grad=False, seed=15)
    xs = torch.randn((N,) + x.shape, generator=torch.Generator().manual_seed(16), dtype=D)
    fn = lambda x: rnn_tanh(x, h0, w_ih, w_hh, b_ih, b_hh, dropout=p, seed=seed)  # noqa: E731
    with CountCharrnnOps() as mode:
        out, h_n = torch.func.vmap(fn)(xs)
    assert mode.count("rnn_tanh_forward") == N
    want = stacked(fn, N, xs, in_dims=(0,))
    assert torch.equal(out, want[0]) and torch.equal(h_n, want[1])
    mask = torch.from_numpy(reference.dropout_mask(seed, p, x.shape[:2] + w_hh.shape[:1]))
    assert torch.equal(out == 0, (mask == 0).expand_as(out))


@pytest.mark.parametrize("in_dims", [(0, 0, None, None), (0, None, 0, 0), (1, 0, 1, 0), (None, None, 0, 0),
                                     (0, 0, 0, None), (None, 0, None, 0)], ids=str)
@pytest.mark.parametrize("mask", [[True] * 5, [True, True, False, False, False], [False, False, True, True, True],
                                  [False, True, False, True, False]], ids=lambda m: "".join("1" if b else "0" for b in m))
def test_vmap_backward_op_folds_and_matches_separate_calls(in_dims, mask):
    """The backward op under vmap (grad_output, grad_h_n, x, h0, output batched or not; weights
    shared): one fused call, equal to N calls; weight gradients per element."""
    N, T, B, E, H = 3, 4, 2, 3, 5
    _, _, w_ih, w_hh, b_ih, b_hh = make_inputs(T, B, E, H, requires_grad=False, seed=17)
    g = torch.Generator().manual_seed(18)
    xs, h0s = torch.randn(N, T, B, E, generator=g, dtype=D), 0.5 * torch.randn(N, B, H, generator=g, dtype=D)
    gos, ghs = torch.randn(N, T, B, H, generator=g, dtype=D), torch.randn(N, B, H, generator=g, dtype=D)
    d_go, d_gh, d_x, d_h0 = in_dims
    # output is the forward of (x, h0): batched when either is, at x's vmapped dim (else h0's)
    d_out = d_x if d_x is not None else (None if d_h0 is None else 0)
    xs, h0s, gos, ghs = (t if d is not None else t[0] for t, d in ((xs, d_x), (h0s, d_h0), (gos, d_go), (ghs, d_gh)))
    if d_out is None:
        outs = FORWARD(xs, h0s, w_ih, w_hh, b_ih, b_hh)[0]
    else:
        outs = torch.stack([FORWARD(xs[i] if d_x is not None else xs, h0s[i] if d_h0 is not None else h0s,
                                    w_ih, w_hh, b_ih, b_hh)[0] for i in range(N)]).movedim(0, d_out)
    if d_x == 1:
        xs = xs.movedim(0, 1)
    if d_go == 1:
        gos = gos.movedim(0, 1)
    def fn(go, gh, x, h0, out):  # the wanted gradients (vmap's outputs must be tensors)
        grads = BACKWARD(go, gh, x, h0, w_ih, w_hh, out, mask)
        assert all((g is None) != wanted for g, wanted in zip(grads, mask))
        return tuple(g for g in grads if g is not None)

    with CountCharrnnOps() as mode:
        got = torch.func.vmap(fn, in_dims=(d_go, d_gh, d_x, d_h0, d_out))(gos, ghs, xs, h0s, outs)
    assert mode.count("rnn_tanh_backward") == 1 and mode.count("rnn_tanh_forward") == 0
    want = [fn(*[t.select(d, i) if d is not None else t for t, d in
                 zip((gos, ghs, xs, h0s, outs), (d_go, d_gh, d_x, d_h0, d_out))]) for i in range(N)]
    assert len(got) == sum(mask)
    for k, g in enumerate(got):
        w = torch.stack([r[k] for r in want])
        assert g.shape == w.shape and (g - w).abs().max() <= 1e-12, k


def test_vmap_backward_op_with_batched_weights_or_dropout_loops():
    N, T, B, E, H = 3, 3, 2, 3, 4
    x, h0, w_ih, w_hh, b_ih, b_hh = make_inputs(T, B, E, H, requires_grad=False, seed=19)
    g = torch.Generator().manual_seed(20)
    w_hhs = w_hh + 0.1 * torch.randn(N, H, H, generator=g, dtype=D)
    outs = torch.stack([FORWARD(x, h0, w_ih, w_hhs[i], b_ih, b_hh)[0] for i in range(N)])
    go, gh = torch.randn(T, B, H, generator=g, dtype=D), torch.randn(B, H, generator=g, dtype=D)
    for p in (0.0, 0.3):
        fn = lambda w_hh, out: BACKWARD(go, gh, x, h0, w_ih, w_hh, out, [True] * 5, p, 5)  # noqa: E731
        with CountCharrnnOps() as mode:
            got = torch.func.vmap(fn)(w_hhs, outs)
        assert mode.count("rnn_tanh_backward") == N
        want = stacked(fn, N, w_hhs, outs, in_dims=(0, 0))
        for a, b in zip(got, want):
            assert (a - b).abs().max() <= 1e-12


# --------------------------------------------------------------------------- grad, vjp, jacrev

def test_func_grad_and_vjp_match_autograd():
    params = make_inputs(4, 3, 3, 5, seed=21)
    loss = lambda *p: loss_of(*rnn_tanh(*p, dropout=0.25, seed=77))  # noqa: E731
    want = torch.autograd.grad(loss(*params), params)
    got = torch.func.grad(loss, argnums=tuple(range(6)))(*params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-14, rtol=0)
    (out, h_n), vjp_fn = torch.func.vjp(lambda *p: rnn_tanh(*p), *params)
    g = torch.Generator().manual_seed(22)
    cot = (torch.randn(out.shape, generator=g, dtype=D), torch.randn(h_n.shape, generator=g, dtype=D))
    want = torch.autograd.grad(rnn_tanh(*params), params, cot)
    for a, b in zip(vjp_fn(cot), want):
        torch.testing.assert_close(a, b, atol=1e-14, rtol=0)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_jacrev_matches_jacobian_of_nn_rnn(bias):
    T, B, E, H = 3, 2, 3, 4
    params = tuple(t.detach() for t in make_inputs(T, B, E, H, bias=bias, seed=23) if t is not None)
    argnums = tuple(range(len(params)))
    with CountCharrnnOps() as mode:
        got = torch.func.jacrev(lambda *p: rnn_tanh(*p), argnums=argnums)(*params)
    # jacrev vmaps over all T*B*H + B*H cotangents at once: one folded backward call.
    assert mode.count("rnn_tanh_backward") == 1 and mode.count("rnn_tanh_forward") == 1
    (_, shapes), = [c for c in mode.calls if c[0] == "rnn_tanh_backward"]
    assert shapes[0] == (T, (T * B * H + B * H) * B, H)
    want = torch.autograd.functional.jacobian(nn_rnn_fn(E, H, bias), params)
    for out_got, out_want in zip(got, want):
        for a, b in zip(out_got, out_want):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_hessian_by_jacrev_of_jacrev():
    x, h0, w_ih, w_hh, b_ih, b_hh = (t.detach() for t in make_inputs(seed=24))
    f = lambda fn: lambda w: loss_of(*fn(x, h0, w, w_hh, b_ih, b_hh))  # noqa: E731
    got = torch.func.jacrev(torch.func.jacrev(f(rnn_tanh)))(w_ih)
    want = torch.autograd.functional.hessian(f(torch_rnn), w_ih)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


def test_per_sample_gradients_fold_and_match_loop():
    """vmap(grad) over N inputs with shared weights: one forward and one backward call, with
    per-element weight gradients."""
    N, T, B, E, H = 4, 3, 2, 3, 5
    _, h0, w_ih, w_hh, b_ih, b_hh = (t.detach() for t in make_inputs(T, B, E, H, seed=25))
    xs = torch.randn(N, T, B, E, generator=torch.Generator().manual_seed(26), dtype=D)

    def loss(w_ih, w_hh, b_ih, b_hh, x):
        return loss_of(*rnn_tanh(x, h0, w_ih, w_hh, b_ih, b_hh))

    with CountCharrnnOps() as mode:
        got = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1, 2, 3)),
                              in_dims=(None, None, None, None, 0))(w_ih, w_hh, b_ih, b_hh, xs)
    assert mode.count("rnn_tanh_forward") == 1 and mode.count("rnn_tanh_backward") == 1
    for k, g in enumerate(got):
        ref = []
        for i in range(N):
            ps = [t.clone().requires_grad_() for t in (w_ih, w_hh, b_ih, b_hh)]
            ref.append(torch.autograd.grad(loss(*ps, xs[i]), ps[k])[0])
        assert (g - torch.stack(ref)).abs().max() <= 1e-12
    assert not torch.allclose(got[0][0], got[0][1])


# --------------------------------------------------------------------------- FusedRNN

def test_fused_rnn_functional_call_vmap_and_jacrev():
    N, T, B, E, H, L = 3, 3, 2, 3, 4, 2
    torch.manual_seed(27)
    fused = FusedRNN(E, H, num_layers=L).to(D)
    ref = torch.nn.RNN(E, H, num_layers=L).to(D)
    params = {k: v.detach() for k, v in fused.named_parameters()}
    xs = torch.randn(N, T, B, E, dtype=D)
    run = lambda m: lambda p, x: torch.func.functional_call(m, p, (x,))  # noqa: E731
    with CountCharrnnOps() as mode:
        out, h_n = torch.func.vmap(run(fused), in_dims=(None, 0))(params, xs)
    assert mode.count("rnn_tanh_forward") == L
    # nn.RNN has no vmap rule (aten::rnn_tanh): its side is a loop and autograd's jacobian.
    want_out, want_h_n = (torch.stack(r) for r in zip(*[run(ref)(params, x) for x in xs]))
    torch.testing.assert_close(out, want_out, atol=1e-12, rtol=0)
    torch.testing.assert_close(h_n, want_h_n, atol=1e-12, rtol=0)

    got = torch.func.jacrev(lambda p: run(fused)(p, xs[0])[0])(params)
    names = list(params)
    want = torch.autograd.functional.jacobian(
        lambda *ps: run(ref)(dict(zip(names, ps)), xs[0])[0], tuple(params.values()))
    for k, w in zip(names, want):
        assert got[k].shape == w.shape
        torch.testing.assert_close(got[k], w, atol=1e-12, rtol=1e-10, msg=k)


def test_nested_vmap_folds_both_levels():
    M, N, T, B, E, H = 2, 3, 3, 2, 3, 4
    _, h0, w_ih, w_hh, b_ih, b_hh = make_inputs(T, B, E, H, requires_grad=False, seed=28)
    xs = torch.randn(M, N, T, B, E, generator=torch.Generator().manual_seed(29), dtype=D)
    fn = lambda x: rnn_tanh(x, h0, w_ih, w_hh, b_ih, b_hh)[0]  # noqa: E731
    with CountCharrnnOps() as mode:
        out = torch.func.vmap(torch.func.vmap(fn))(xs)
    assert [shapes[0] for _, shapes in mode.calls] == [(T, M * N * B, E)]
    want = torch.stack([torch.stack([fn(x) for x in row]) for row in xs])
    assert (out - want).abs().max() <= 1e-12
