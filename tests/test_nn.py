"""FusedRNN against torch.nn.RNN(nonlinearity="tanh"): same constructor, parameters, state dicts,
outputs, final states and gradients."""
import contextlib

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from charrnn_ext import FusedRNN, reference
from charrnn_ext.ops import dropout_seed

from test_ops import CUDNN_FLOAT32_CLOSE

devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

E, H, T, B = 5, 13, 7, 3


def make_pair(device="cpu", dtype=torch.float32, seed=0, **kwargs):
    """A FusedRNN and an nn.RNN with identical parameters (nn.RNN loaded from FusedRNN)."""
    torch.manual_seed(seed)
    fused = FusedRNN(E, H, **kwargs).to(device=device, dtype=dtype)
    ref = torch.nn.RNN(E, H, **kwargs).to(device=device, dtype=dtype)
    ref.load_state_dict(fused.state_dict())
    return fused, ref


def run_and_grad(module, x, hx, grad_out, grad_h_n):
    """Forward, then gradients of <grad_out, output> + <grad_h_n, h_n> into every parameter,
    the input and (when given) hx. Returns (output, h_n, {name: grad})."""
    x = x.detach().clone().requires_grad_()
    hx = None if hx is None else hx.detach().clone().requires_grad_()
    output, h_n = module(x) if hx is None else module(x, hx)
    named = dict(module.named_parameters())
    inputs = {"input": x, **({} if hx is None else {"hx": hx}), **named}
    grads = torch.autograd.grad((output, h_n), list(inputs.values()), (grad_out, grad_h_n))
    return output, h_n, dict(zip(inputs, grads))


def assert_same_run(fused, ref, x, hx, **close):
    # random upstream gradients for both outputs, scaled as for a window-averaged loss
    # cuDNN's nn.RNN takes only a contiguous hx, and has no backward in eval mode (the native
    # CUDA kernels have one; flags() would turn TF32 back on unless told otherwise)
    ref_hx = None if hx is None else hx.contiguous()
    ref_flags = (contextlib.nullcontext() if ref.training or not x.is_cuda
                 else torch.backends.cudnn.flags(enabled=False, allow_tf32=False))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad(), ref_flags:
        out_shape, h_shape = (t.shape for t in (ref(x) if hx is None else ref(x, ref_hx)))
    grad_out = torch.randn(out_shape, generator=g, dtype=torch.float64).to(x.device, x.dtype)
    grad_out /= grad_out[..., 0].numel() ** 0.5
    grad_h_n = torch.randn(h_shape, generator=g, dtype=torch.float64).to(x.device, x.dtype)
    out_f, h_f, g_f = run_and_grad(fused, x, hx, grad_out, grad_h_n)
    with ref_flags:
        out_r, h_r, g_r = run_and_grad(ref, x, ref_hx, grad_out, grad_h_n)
    if x.is_cuda and x.dtype == torch.float32:
        close = {**CUDNN_FLOAT32_CLOSE, **close}
    assert out_f.shape == out_r.shape and h_f.shape == h_r.shape
    torch.testing.assert_close(out_f, out_r, **close)
    torch.testing.assert_close(h_f, h_r, **close)
    assert set(g_f) == set(g_r)
    for name in g_r:
        torch.testing.assert_close(g_f[name], g_r[name], **close,
                                   msg=lambda m, name=name: f"grad of {name}: " + m)


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("hx_given", [True, False])
def test_matches_nn_rnn(device, num_layers, batch_first, bias, hx_given):
    fused, ref = make_pair(device, num_layers=num_layers, bias=bias, batch_first=batch_first)
    torch.manual_seed(2)
    x = torch.randn((B, T, E) if batch_first else (T, B, E), device=device)
    hx = torch.randn(num_layers, B, H, device=device) if hx_given else None
    assert_same_run(fused, ref, x, hx)


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("batch_first", [False, True])
def test_dropout_eval_mode_matches_and_is_deterministic(device, batch_first):
    fused, ref = make_pair(device, num_layers=3, dropout=0.5, batch_first=batch_first)
    fused.eval()
    ref.eval()
    torch.manual_seed(3)
    x = torch.randn((B, T, E) if batch_first else (T, B, E), device=device)
    hx = torch.randn(3, B, H, device=device)
    assert_same_run(fused, ref, x, hx)
    with torch.no_grad():
        torch.testing.assert_close(fused(x, hx)[0], fused(x, hx)[0], rtol=0, atol=0)


@pytest.mark.parametrize("device", devices)
def test_dropout_train_mode(device):
    """Train mode drops between layers (not after the last): outputs differ from eval mode."""
    fused, ref = make_pair(device, num_layers=3, dropout=0.5)
    torch.manual_seed(4)
    x = torch.randn(T, B, E, device=device)
    hx = torch.randn(3, B, H, device=device)
    fused.train()
    with torch.no_grad():
        out_train, h_train = fused(x, hx)
        fused.eval()
        out_eval, h_eval = fused(x, hx)
        fused.train()
    assert out_train.shape == out_eval.shape == (T, B, H) and h_train.shape == (3, B, H)
    assert not torch.allclose(out_train, out_eval)
    # the first layer runs before any dropout, and the last layer's output is not dropped
    torch.testing.assert_close(h_train[0], h_eval[0])
    torch.testing.assert_close(out_train[-1], h_train[-1], rtol=0, atol=0)


def stacked_reference(fused, x, hx, ps, seeds, grad_out, grad_h_n):
    """reference.py's layers, each output times its mask (reference.dropout_mask) where p > 0,
    forward and backward by hand. Returns (output, h_n, {name: grad}) as run_and_grad does."""
    L = fused.num_layers
    p = {n: t.detach().cpu().numpy() for n, t in fused.named_parameters()}
    layer_in, h_n, saved = x.detach().cpu().numpy(), [], []
    for l in range(L):
        out, h_last = reference.rnn_tanh_forward(layer_in, hx[l].detach().cpu().numpy(), p[f"weight_ih_l{l}"],
                                                 p[f"weight_hh_l{l}"], p[f"bias_ih_l{l}"], p[f"bias_hh_l{l}"])
        mask = reference.dropout_mask(seeds[l], ps[l], out.shape) if ps[l] > 0 else np.ones_like(out)
        saved.append((layer_in, out, mask))
        h_n.append(h_last)
        layer_in = out * mask
    grads, g = {}, grad_out.cpu().numpy()
    for l in reversed(range(L)):
        x_l, out, mask = saved[l]
        dx, dh0, dw_ih, dw_hh, db_ih, db_hh = reference.rnn_tanh_backward(
            g * mask, grad_h_n[l].cpu().numpy(), x_l, hx[l].detach().cpu().numpy(), p[f"weight_ih_l{l}"],
            p[f"weight_hh_l{l}"], out)
        grads.update({f"weight_ih_l{l}": dw_ih, f"weight_hh_l{l}": dw_hh, f"bias_ih_l{l}": db_ih,
                      f"bias_hh_l{l}": db_hh})
        grads.setdefault("hx", [None] * L)[l] = dh0
        g = dx
    grads["input"], grads["hx"] = g, np.stack(grads["hx"])
    return layer_in, np.stack(h_n), grads


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("output_dropout", [0.0, 0.3])
def test_dropout_matches_explicit_mask_reference(device, output_dropout):
    """In train mode every layer but the last drops with `dropout`, the last with
    `output_dropout`, each through the fused op's mask of one seed drawn from torch's generator
    per dropped layer, in layer order: outputs and every gradient equal reference.py's layers with
    those masks applied by hand (float64)."""
    torch.manual_seed(0)
    fused = FusedRNN(E, H, num_layers=3, dropout=0.5, output_dropout=output_dropout).to(device, torch.float64)
    x = torch.randn(T, B, E, dtype=torch.float64, device=device)
    hx = 0.5 * torch.randn(3, B, H, dtype=torch.float64, device=device)
    g = torch.Generator().manual_seed(5)
    grad_out = torch.randn(T, B, H, generator=g, dtype=torch.float64).to(device)
    grad_h_n = torch.randn(3, B, H, generator=g, dtype=torch.float64).to(device)
    torch.manual_seed(6)
    out, h_n, grads = run_and_grad(fused, x, hx, grad_out, grad_h_n)
    torch.manual_seed(6)
    ps = [0.5, 0.5, output_dropout]
    seeds = [dropout_seed() if p > 0 else None for p in ps]
    want_out, want_h_n, want_grads = stacked_reference(fused, x, hx, ps, seeds, grad_out, grad_h_n)
    close = dict(rtol=0, atol=1e-12)
    torch.testing.assert_close(out.cpu(), torch.from_numpy(want_out), **close)
    torch.testing.assert_close(h_n.cpu(), torch.from_numpy(want_h_n), **close)
    assert set(grads) == set(want_grads)
    for name, w in want_grads.items():
        torch.testing.assert_close(grads[name].cpu(), torch.from_numpy(w), **close,
                                   msg=lambda m, name=name: f"grad of {name}: " + m)


def test_output_dropout_is_checked_and_shown():
    assert "output_dropout=0.25" in repr(FusedRNN(E, H, output_dropout=0.25))
    assert "output_dropout" not in repr(FusedRNN(E, H))
    for bad in (-0.1, 1.5, True):
        with pytest.raises(ValueError, match="output_dropout must be a number in \\[0, 1\\]"):
            FusedRNN(E, H, output_dropout=bad)


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("hx_given", [True, False])
def test_unbatched_input(device, num_layers, hx_given):
    fused, ref = make_pair(device, num_layers=num_layers)
    torch.manual_seed(7)
    x = torch.randn(T, E, device=device)
    hx = torch.randn(num_layers, H, device=device) if hx_given else None
    out, h_n = fused(x, hx)
    assert out.shape == (T, H) and h_n.shape == (num_layers, H)
    assert_same_run(fused, ref, x, hx)


@pytest.mark.parametrize("device", devices)
def test_float64_module(device):
    fused, ref = make_pair(device, dtype=torch.float64, num_layers=2)
    torch.manual_seed(8)
    x = torch.randn(T, B, E, device=device, dtype=torch.float64)
    hx = torch.randn(2, B, H, device=device, dtype=torch.float64)
    out, h_n = fused(x, hx)
    assert out.dtype == h_n.dtype == torch.float64
    assert_same_run(fused, ref, x, hx, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("batch_first", [False, True])
def test_noncontiguous_input_and_hx(device, batch_first):
    fused, ref = make_pair(device, num_layers=2, batch_first=batch_first)
    torch.manual_seed(9)
    # x: the transpose of the other layout, with every other feature of a 2E-wide buffer
    base = torch.randn((T, B, 2 * E) if batch_first else (B, T, 2 * E), device=device)
    x = base.transpose(0, 1)[..., ::2]
    hx = torch.randn(B, 2, H, device=device).transpose(0, 1)
    assert not x.is_contiguous() and not hx.is_contiguous()
    assert_same_run(fused, ref, x, hx)
    # and the same numbers as the contiguous copies (up to rounding: MKL's results may depend on
    # buffer alignment, so not bit for bit)
    with torch.no_grad():
        torch.testing.assert_close(fused(x, hx)[0], fused(x.contiguous(), hx.contiguous())[0])


@pytest.mark.parametrize("kwargs", [dict(num_layers=1), dict(num_layers=3, bias=False),
                                    dict(num_layers=2, batch_first=True, dropout=0.2)],
                         ids=["1-layer", "3-layer-nobias", "2-layer-batch-first-dropout"])
def test_same_parameters_and_initialisation(kwargs):
    torch.manual_seed(10)
    fused = FusedRNN(E, H, **kwargs)
    torch.manual_seed(10)
    ref = torch.nn.RNN(E, H, **kwargs)
    f_named, r_named = dict(fused.named_parameters()), dict(ref.named_parameters())
    assert list(f_named) == list(r_named)
    for name, p in r_named.items():
        assert f_named[name].shape == p.shape
        torch.testing.assert_close(f_named[name], p, rtol=0, atol=0)
    for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                 "bidirectional", "nonlinearity"):
        assert getattr(fused, attr) == getattr(ref, attr)


@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_both_ways(num_layers, bias):
    torch.manual_seed(11)
    fused = FusedRNN(E, H, num_layers=num_layers, bias=bias)
    torch.manual_seed(12)
    ref = torch.nn.RNN(E, H, num_layers=num_layers, bias=bias)
    f_sd, r_sd = fused.state_dict(), ref.state_dict()
    assert list(f_sd) == list(r_sd)
    assert all(f_sd[k].shape == r_sd[k].shape for k in r_sd)
    assert any(not torch.equal(f_sd[k], r_sd[k]) for k in r_sd)  # different seeds

    torch.manual_seed(13)
    x = torch.randn(T, B, E)

    # nn.RNN -> FusedRNN
    fused.load_state_dict(ref.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fused(x)[0], ref(x)[0])

    # FusedRNN -> a fresh nn.RNN
    torch.manual_seed(14)
    fused2 = FusedRNN(E, H, num_layers=num_layers, bias=bias)
    ref2 = torch.nn.RNN(E, H, num_layers=num_layers, bias=bias)
    ref2.load_state_dict(fused2.state_dict(), strict=True)
    for k, v in fused2.state_dict().items():
        torch.testing.assert_close(ref2.state_dict()[k], v, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(ref2(x)[0], fused2(x)[0])
        torch.testing.assert_close(ref2(x)[1], fused2(x)[1])


def test_bidirectional_runs_nn_rnn():
    """No fused kernel: nn.RNN's implementation runs (tests/test_nn_contract.py checks the results)."""
    out, h_n = FusedRNN(E, H, bidirectional=True)(torch.randn(T, B, E))
    assert out.shape == (T, B, 2 * H) and h_n.shape == (2, B, H)


def test_relu_runs_nn_rnn():
    assert FusedRNN(E, H, nonlinearity="relu").nonlinearity == "relu"
    with pytest.raises(ValueError, match="Unknown nonlinearity"):  # nn.RNN's own check
        FusedRNN(E, H, nonlinearity="sigmoid")
    FusedRNN(E, H, nonlinearity="tanh")  # explicit tanh is fine


def test_packed_sequence_runs_nn_rnn():
    """As bidirectional: nn.RNN's implementation runs, and returns a PackedSequence."""
    rnn = FusedRNN(E, H)
    packed = pack_padded_sequence(torch.randn(T, B, E), torch.tensor([7, 5, 2]))
    out, h_n = rnn(packed)
    assert out.data.shape == (7 + 5 + 2, H) and h_n.shape == (1, B, H)


@pytest.mark.parametrize("hx_shape, expected", [
    ((2, B, H), r"\[3, 3, 13\]"),       # wrong num_layers
    ((3, B + 1, H), r"\[3, 3, 13\]"),   # wrong batch
    ((3, B, H + 1), r"\[3, 3, 13\]"),   # wrong hidden size
    ((B, H), r"\[3, 3, 13\]"),          # missing the layer dimension
])
def test_wrong_hx_shape_raises(hx_shape, expected):
    rnn = FusedRNN(E, H, num_layers=3)
    with pytest.raises(ValueError, match=r"hx must have shape " + expected):
        rnn(torch.randn(T, B, E), torch.randn(*hx_shape))


def test_wrong_hx_shape_unbatched_raises():
    rnn = FusedRNN(E, H, num_layers=2)
    with pytest.raises(ValueError, match=r"hx must have shape \[2, 13\]"):
        rnn(torch.randn(T, E), torch.randn(2, H + 1))


@pytest.mark.parametrize("x_shape, pattern", [
    ((T, B, E + 1), r"input_size=5"),
    ((T, E + 2), r"input_size=5"),
    ((T, B, E, 1), r"input must be \[T, B, E\]"),
    ((E,), r"input must be \[T, B, E\]"),
])
def test_wrong_input_shape_raises(x_shape, pattern):
    rnn = FusedRNN(E, H)
    with pytest.raises(ValueError, match=pattern):
        rnn(torch.randn(*x_shape))


def test_is_an_nn_rnn_and_trains():
    """A FusedRNN is an nn.RNN (isinstance checks in user code keep working), and an optimiser
    step through it changes every parameter."""
    torch.manual_seed(15)
    rnn = FusedRNN(E, H, num_layers=2)
    assert isinstance(rnn, torch.nn.RNN)
    before = {k: v.detach().clone() for k, v in rnn.named_parameters()}
    opt = torch.optim.SGD(rnn.parameters(), lr=0.1)
    out, h_n = rnn(torch.randn(T, B, E))
    (out.pow(2).mean() + h_n.pow(2).mean()).backward()
    opt.step()
    for k, v in rnn.named_parameters():
        assert not torch.equal(v.detach(), before[k]), k


@pytest.mark.parametrize("device", devices)
def test_frozen_layer_and_data_input(device):
    """Input without grad (one-hot) and a frozen first layer: the trainable parameters get
    nn.RNN's gradients, the frozen ones none (the fused backward is not asked for them)."""
    fused, ref = make_pair(device, torch.float64, seed=16, num_layers=2)
    for module in (fused, ref):
        for name, p in module.named_parameters():
            p.requires_grad_(not name.endswith("_l0"))
    x = torch.nn.functional.one_hot(torch.randint(0, E, (T, B)), E).to(device, torch.float64)
    grads = {}
    for module in (fused, ref):
        out, h_n = module(x)
        (out.square().mean() + h_n.sum()).backward()
        grads[module] = {name: p.grad for name, p in module.named_parameters()}
    for name, g in grads[ref].items():
        if name.endswith("_l0"):
            assert g is None and grads[fused][name] is None, name
        else:
            torch.testing.assert_close(grads[fused][name], g, msg=lambda m, name=name: f"grad of {name}: " + m)
