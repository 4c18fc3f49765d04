"""The fused op's dropout (csrc/dropout_mask.h): the mask drawn in the forward's epilogue and
drawn again in the backward, against reference.dropout_mask (the same generator in numpy) and
reference.py's float64 layer with that mask applied explicitly. Every body runs on every device."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from charrnn_ext import reference, rnn_tanh
from charrnn_ext.ops import RNNTanhFunction, dropout_seed

from test_ops import (DTYPES, FORWARD, BACKWARD, GRAD_NAMES, LAYOUTS, SHAPES, assert_close_to_ref,
                      devices, machine_capabilities, make_inputs, shape_id, to_np)


def masked_reference(inputs, p, seed, grad_output, grad_h_n):
    """reference.py's layer with the mask applied by hand: output * m forward, grad_output * m
    into the layer's backward. Returns (output, h_n, grads of the six inputs)."""
    x, h0, w_ih, w_hh, b_ih, b_hh = (to_np(t) for t in inputs)
    out, h_n = reference.rnn_tanh_forward(x, h0, w_ih, w_hh, b_ih, b_hh)
    m = reference.dropout_mask(seed, p, out.shape)
    grads = reference.rnn_tanh_backward(to_np(grad_output) * m, to_np(grad_h_n), x, h0, w_ih, w_hh, out)
    return out * m, h_n, grads


def random_grads(T, B, H, dtype, device, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(T, B, H, generator=g, dtype=torch.float64).to(device, dtype),
            torch.randn(B, H, generator=g, dtype=torch.float64).to(device, dtype))


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("p", [0.05, 0.25, 0.5, 0.9])
def test_mask_statistics_and_generator(device, p):
    """The kept fraction is 1 - p within 5 binomial standard deviations; kept elements are the
    undropped output times 1 / (1 - p); the mask is reference.dropout_mask's, element for
    element (the step split across threads on the CPU included); the same seed repeats it."""
    T, B, E, H = 40, 33, 3, 131  # B*H*H = 566k: the CPU forward splits each step's columns
    x, h0, w_ih, w_hh, b_ih, b_hh = make_inputs(T, B, E, H, torch.float32, device, requires_grad=False)
    seed = 1234567 + int(p * 100)
    output, h_n, dropped = FORWARD(x, h0, w_ih, w_hh, b_ih, b_hh, p, seed)
    n = output.numel()
    kept = (dropped != 0).double().mean().item()
    assert abs(kept - (1 - p)) <= 5 * math.sqrt(p * (1 - p) / n), kept
    want = reference.dropout_mask(seed, p, output.shape)
    np.testing.assert_array_equal(to_np(dropped) != 0, want != 0)
    scale = torch.tensor(1 / (1 - p), dtype=torch.float32)
    torch.testing.assert_close(dropped, output * (dropped != 0) * scale.to(device), rtol=0, atol=0)
    assert torch.equal(FORWARD(x, h0, w_ih, w_hh, b_ih, b_hh, p, seed)[2], dropped)
    other = FORWARD(x, h0, w_ih, w_hh, b_ih, b_hh, p, seed + 1)[2]
    assert not torch.equal(other != 0, dropped != 0)


def test_generator_draws_are_uniform():
    """The 32-bit draws behind the mask, through the kept fraction at many thresholds of one
    seed's stream: each within 5 binomial standard deviations of 1 - p."""
    n = 1 << 20
    for p in np.linspace(0.01, 0.99, 25):
        kept = (reference.dropout_mask(99, p, (n,)) != 0).mean()
        assert abs(kept - (1 - p)) <= 5 * math.sqrt(p * (1 - p) / n), (p, kept)


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_zero_probability_is_the_undropped_op(device, dtype):
    """p = 0 returns no dropped tensor and the same output and gradients as the op without
    dropout, exactly; with p > 0 the undropped sequence (the op's output) is unchanged too."""
    inputs = make_inputs(6, 3, 5, 13, dtype, device)
    grad_output, grad_h_n = random_grads(6, 3, 13, dtype, device)
    out, h_n = rnn_tanh(*inputs)
    grads = torch.autograd.grad((out, h_n), inputs, (grad_output, grad_h_n))
    out0, h_n0 = rnn_tanh(*inputs, dropout=0.0, seed=5)
    grads0 = torch.autograd.grad((out0, h_n0), inputs, (grad_output, grad_h_n))
    assert torch.equal(out0, out) and torch.equal(h_n0, h_n)
    for g0, g in zip(grads0, grads):
        assert torch.equal(g0, g)
    detached = [t.detach() for t in inputs]
    assert FORWARD(*detached, 0.0, 5)[2].numel() == 0
    output, h_n_op, dropped = FORWARD(*detached, 0.5, 5)
    assert torch.equal(output, out.detach()) and torch.equal(h_n_op, h_n.detach())


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_probability_one_gives_zeros(device, dtype):
    """p = 1, as torch's dropout: an all-zero output, so every gradient comes through h_n alone."""
    inputs = make_inputs(5, 3, 4, 7, dtype, device)
    out, h_n = rnn_tanh(*inputs, dropout=1.0)
    assert torch.equal(out, torch.zeros_like(out))
    grad_output, grad_h_n = random_grads(5, 3, 7, dtype, device)
    grads = torch.autograd.grad((out, h_n), inputs, (grad_output, grad_h_n))
    want = torch.autograd.grad(rnn_tanh(*inputs)[1], inputs, grad_h_n)
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-13)


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("p", [0.3, 0.8])
def test_outputs_and_gradients_match_explicit_mask_reference(device, dtype, shape, layout, p):
    T, B, E, H = shape
    inputs = make_inputs(T, B, E, H, dtype, device, layout)
    out, h_n = rnn_tanh(*inputs, dropout=p, seed=2024)
    grad_output, grad_h_n = random_grads(T, B, H, dtype, device)
    grads = torch.autograd.grad((out, h_n), inputs, (grad_output, grad_h_n))
    ref_out, ref_h_n, ref_grads = masked_reference(inputs, p, 2024, grad_output, grad_h_n)
    assert_close_to_ref(out, ref_out, dtype, "output")
    assert_close_to_ref(h_n, ref_h_n, dtype, "h_n")
    for name, got, want in zip(GRAD_NAMES, grads, ref_grads):
        assert_close_to_ref(got, want, dtype, "d" + name)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_cpu_thread_paths_match_explicit_mask_reference(threads):
    """The forward's mask is applied per block of columns of a step, on whichever thread owns
    the block; the backward's as a parallel pass over grad_output: any thread count, one mask."""
    T, B, E, H = 30, 16, 5, 160
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        inputs = make_inputs(T, B, E, H)
        out, h_n = rnn_tanh(*inputs, dropout=0.4, seed=-3)
        grad_output, grad_h_n = random_grads(T, B, H, torch.float64, "cpu")
        grads = torch.autograd.grad((out, h_n), inputs, (grad_output, grad_h_n))
    finally:
        torch.set_num_threads(old)
    ref_out, _, ref_grads = masked_reference(inputs, 0.4, -3, grad_output, grad_h_n)
    assert_close_to_ref(out, ref_out, torch.float64, "output")
    for name, got, want in zip(GRAD_NAMES, grads, ref_grads):
        assert_close_to_ref(got, want, torch.float64, "d" + name)


@pytest.mark.parametrize("device", devices)
def test_expanded_grad_output_and_h_n_only(device):
    """out.sum()'s expanded gradient goes through the mask; a loss on h_n alone gets no
    gradient through the output and the mask plays no part."""
    inputs = make_inputs(4, 3, 5, 9, torch.float64, device)
    out, h_n = rnn_tanh(*inputs, dropout=0.5, seed=11)
    grads = torch.autograd.grad(out.sum(), inputs)
    _, _, want = masked_reference(inputs, 0.5, 11, torch.ones(4, 3, 9), torch.zeros(3, 9))
    for name, got, w in zip(GRAD_NAMES, grads, want):
        assert_close_to_ref(got, w, torch.float64, "d" + name)
    out, h_n = rnn_tanh(*inputs, dropout=0.5, seed=11)
    grads = torch.autograd.grad(h_n.sum(), inputs)
    _, _, want = masked_reference(inputs, 0.5, 11, torch.zeros(4, 3, 9), torch.ones(3, 9))
    for name, got, w in zip(GRAD_NAMES, grads, want):
        assert_close_to_ref(got, w, torch.float64, "d" + name)


@pytest.mark.parametrize("device", devices)
def test_seed_comes_from_torch_generator(device):
    """Without a seed each call draws one from torch's generator: torch.manual_seed repeats the
    masks, another seed changes them, and the generator moves by dropout_seed()'s one draw."""
    inputs = make_inputs(5, 4, 3, 11, torch.float64, device, requires_grad=False)
    torch.manual_seed(7)
    first = rnn_tanh(*inputs, dropout=0.5)[0]
    after = torch.randint(1000, ())
    torch.manual_seed(7)
    assert torch.equal(rnn_tanh(*inputs, dropout=0.5)[0], first)
    torch.manual_seed(7)
    seed = dropout_seed()
    assert torch.equal(torch.randint(1000, ()), after)
    assert torch.equal(rnn_tanh(*inputs, dropout=0.5, seed=seed)[0], first)
    torch.manual_seed(8)
    assert not torch.equal(rnn_tanh(*inputs, dropout=0.5)[0], first)
    state = torch.get_rng_state()
    rnn_tanh(*inputs)  # no dropout: no draw
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("shape", [(1, 1, 2, 3), (4, 3, 2, 5)], ids=shape_id)
@pytest.mark.parametrize("p", [0.3, 0.7])
def test_gradcheck(device, shape, p):
    inputs = make_inputs(*shape, torch.float64, device)
    assert torch.autograd.gradcheck(lambda *a: rnn_tanh(*a, dropout=p, seed=31), inputs, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("device", devices)
def test_opcheck(device):
    inputs = make_inputs(4, 3, 5, 7, torch.float64, device, requires_grad=False)
    for p, seed in ((0.0, 0), (0.4, 123), (1.0, -9)):
        torch.library.opcheck(FORWARD, (*inputs, p, seed))
        output, h_n, dropped = FORWARD(*inputs, p, seed)
        g_out, g_hn = random_grads(4, 3, 7, torch.float64, device)
        x, h0, w_ih, w_hh = inputs[:4]
        torch.library.opcheck(BACKWARD, (g_out, g_hn, x, h0, w_ih, w_hh, output, [True] * 5, p, seed))


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
@pytest.mark.parametrize("entry", ["rnn_tanh", "forward", "backward"])
def test_bad_probability_raises(p, entry):
    inputs = make_inputs(3, 2, 4, 5, torch.float32, requires_grad=False)
    state = torch.get_rng_state()
    with pytest.raises(ValueError, match="dropout must be a probability in \\[0, 1\\]"):
        if entry == "rnn_tanh":
            rnn_tanh(*inputs, dropout=p)
        elif entry == "forward":
            FORWARD(*inputs, p, 0)
        else:
            out = FORWARD(*inputs)[0]
            BACKWARD(torch.ones_like(out), torch.zeros_like(out[0]), *inputs[:4], out, [True] * 5, p, 0)
    assert torch.equal(torch.get_rng_state(), state)


def test_function_apply_marks_the_undropped_sequence_non_differentiable():
    x, h0, w_ih, w_hh, b_ih, b_hh = make_inputs(3, 2, 4, 5)
    dropped, h_n, hidden = RNNTanhFunction.apply(x, h0, w_ih, w_hh, b_ih, b_hh, 0.5, 3)
    assert dropped.requires_grad and h_n.requires_grad and not hidden.requires_grad


CAPABILITY_CHILD = """
import sys, torch, charrnn_ext
results = [torch.ops.charrnn.rnn_tanh_forward(*inputs, 0.3, 77) for inputs in torch.load(sys.argv[1])]
torch.save(dict(info=charrnn_ext.build_info(), results=results), sys.argv[2])
"""


@pytest.mark.parametrize("capability", machine_capabilities())
def test_every_cpu_capability_draws_the_reference_mask(capability, tmp_path):
    """The dropout kernel is compiled once per CPU capability (vectorised differently): each
    variant, forced with ATEN_CPU_CAPABILITY, draws reference.dropout_mask's mask, in float32
    and float64. H = 37 leaves partial vectors at every width."""
    cases = [[t.detach() for t in make_inputs(9, 5, 3, 37, dtype, seed=3)] for dtype in DTYPES]
    torch.save(cases, tmp_path / "in.pt")
    proc = subprocess.run([sys.executable, "-c", CAPABILITY_CHILD, str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
                          env=dict(os.environ, ATEN_CPU_CAPABILITY=capability), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt")
    assert got["info"]["cpu_capability"] == capability
    for dtype, (output, _, dropped) in zip(DTYPES, got["results"]):
        assert dropped.dtype == dtype
        want = to_np(output) * reference.dropout_mask(77, 0.3, output.shape)
        assert_close_to_ref(dropped, want, dtype, f"dropped ({dtype})")


def test_meta_tensors_give_the_dropped_shape():
    meta = [t.to("meta") for t in make_inputs(4, 3, 5, 13, torch.float32, requires_grad=False)]
    assert FORWARD(*meta, 0.5, 1)[2].shape == (4, 3, 13)
    assert FORWARD(*meta)[2].shape == (0,)
