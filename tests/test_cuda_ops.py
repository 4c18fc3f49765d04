"""The CUDA kernels: every sweep path, forced through CHARRNN_CUDA_SWEEP, against the CPU op in
float64 and against cuDNN's nn.RNN in float32 (TF32 off); gradcheck and opcheck on the GPU;
FusedRNN end to end; streams. Skipped without a GPU. test_ops.py runs its device-parametrized
tests on CUDA too (the automatic path)."""
import pytest
import torch

import charrnn_ext
from charrnn_ext import FusedRNN, rnn_tanh

from test_ops import BACKWARD, FORWARD, make_inputs, shape_id

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PATHS = ["auto", "block", "cluster", "grid", "steps"]

# (T, B, E, H): T=1, B=1, H=1, odd H, E > H, a batch wider than the GPU has multiprocessors
# (several rows per tile), an H beyond one block's shared memory in float32 (cluster and grid
# at their real sizes), and a long window.
SHAPES = [
    (1, 1, 3, 1),
    (1, 5, 4, 37),
    (7, 1, 65, 33),
    (13, 6, 9, 67),
    (6, 300, 5, 29),
    (9, 33, 17, 200),
    (5, 17, 8, 520),
    (600, 3, 4, 48),
]


def skip_unless_runs(path, B, H, dtype):
    """Skips where the forced path cannot run on this GPU (e.g. clusters before sm_90, or H too
    large for a block's shared memory), which the op reports as an error naming the path."""
    if path in ("auto", "steps"):
        return
    try:
        charrnn_ext._C.cuda_sweep_plan(B, H, torch.empty((), dtype=dtype).element_size(), path)
    except RuntimeError as e:
        pytest.skip(str(e))


@pytest.fixture
def sweep_path(monkeypatch, request):
    monkeypatch.setenv("CHARRNN_CUDA_SWEEP", request.param)
    return request.param


def forward_backward(inputs, seed=3, dropout=(0.0, 0)):
    """Output, h_n and every gradient; dropout: (p, the mask's seed)."""
    out, h_n = rnn_tanh(*inputs, dropout=dropout[0], seed=dropout[1])
    g = torch.Generator().manual_seed(seed)  # drawn in float64: the same numbers for every dtype
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.device, out.dtype)
    grad_h_n = torch.randn(h_n.shape, generator=g, dtype=torch.float64).to(out.device, out.dtype)
    present = [t for t in inputs if t is not None]
    grads = torch.autograd.grad((out, h_n), present, (grad_out, grad_h_n))
    return [out, h_n, *grads]


@pytest.mark.parametrize("sweep_path", PATHS, indirect=True)
@pytest.mark.parametrize("shape", SHAPES[1:7], ids=shape_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_dropout_matches_cpu_op(sweep_path, shape, dtype):
    """Each path writes the dropout in its epilogue (the per-step path: one pass after the
    sweep) and the backward draws the mask again: the CPU's mask (one header, dropout_mask.h),
    element for element, and the CPU op's outputs and gradients."""
    skip_unless_runs(sweep_path, shape[1], shape[3], dtype)
    cpu = make_inputs(*shape, torch.float64, "cpu", seed=1)
    gpu = make_inputs(*shape, dtype, "cuda", seed=1)
    dropped = [FORWARD(*(t.detach() for t in inputs), 0.3, 77)[2] for inputs in (gpu, cpu)]
    assert torch.equal(dropped[0].cpu() != 0, dropped[1] != 0)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    names = ["output", "h_n", "dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh"]
    for name, got, want in zip(names, forward_backward(gpu, dropout=(0.3, 77)), forward_backward(cpu, dropout=(0.3, 77))):
        err = (got.cpu().double() - want).abs().max().item()
        assert err <= tol * max(1.0, want.abs().max().item()), f"{name}: max abs error {err:.3e} against the CPU op"


@pytest.mark.parametrize("sweep_path", PATHS, indirect=True)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous"])
def test_float64_matches_cpu_op(sweep_path, shape, layout):
    skip_unless_runs(sweep_path, shape[1], shape[3], torch.float64)
    cpu = make_inputs(*shape, torch.float64, "cpu", layout, seed=1)
    gpu = make_inputs(*shape, torch.float64, "cuda", layout, seed=1)
    names = ["output", "h_n", "dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh"]
    for name, got, want in zip(names, forward_backward(gpu), forward_backward(cpu)):
        err = (got.cpu() - want).abs().max().item()
        assert err <= 1e-9, f"{name}: max abs error {err:.3e} against the CPU op"


@pytest.mark.parametrize("sweep_path", PATHS, indirect=True)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_float32_matches_cudnn(sweep_path, shape):
    """The fused op in float32 is as accurate as cuDNN's nn.RNN in float32: both against the same
    model in float64 (nn.RNN on the CPU), the fused op's largest error at most 3x cuDNN's plus a
    float32-sized floor. (Compared directly, the two differ by up to ~1e-4 in weight gradients
    summed over T*B rows: different summation orders, neither of them the truth.)"""
    T, B, E, H = shape
    skip_unless_runs(sweep_path, B, H, torch.float32)
    torch.manual_seed(7)
    ref = torch.nn.RNN(E, H, nonlinearity="tanh").cuda()
    fused = FusedRNN(E, H).cuda()
    fused.load_state_dict(ref.state_dict())
    truth = torch.nn.RNN(E, H, nonlinearity="tanh").double()
    truth.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, E, device="cuda")
    h0 = 0.5 * torch.randn(1, B, H, device="cuda")
    results = []
    for module, xi, hi in ((fused, x, h0), (ref, x, h0), (truth, x.cpu().double(), h0.cpu().double())):
        xi, hi = xi.clone().requires_grad_(), hi.clone().requires_grad_()
        out, h_n = module(xi, hi)
        (out.square().mean() + h_n.sum()).backward()
        results.append([t.detach().cpu().double() for t in
                        [out, h_n, xi.grad, hi.grad] + [p.grad for p in module.parameters()]])
    names = ["output", "h_n", "dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh"]
    for name, got, cudnn, want in zip(names, *results):
        err, cudnn_err = ((t - want).abs().max().item() for t in (got, cudnn))
        floor = 2e-6 * max(1.0, want.abs().max().item())
        assert err <= 3 * cudnn_err + floor, (
            f"{name}: max abs error {err:.3e} against float64, cuDNN's {cudnn_err:.3e}")


@pytest.mark.parametrize("sweep_path", PATHS, indirect=True)
@pytest.mark.parametrize("shape", [(1, 1, 2, 3), (4, 3, 2, 5), (3, 2, 5, 9)], ids=shape_id)
def test_gradcheck(sweep_path, shape):
    skip_unless_runs(sweep_path, shape[1], shape[3], torch.float64)
    inputs = make_inputs(*shape, torch.float64, "cuda", "noncontiguous", seed=11)
    assert torch.autograd.gradcheck(rnn_tanh, tuple(inputs), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("sweep_path", PATHS, indirect=True)
def test_opcheck(sweep_path):
    skip_unless_runs(sweep_path, 3, 13, torch.float64)
    for dtype in (torch.float32, torch.float64):
        args = make_inputs(5, 3, 4, 13, dtype, "cuda", seed=2, requires_grad=False)
        assert set(torch.library.opcheck(FORWARD, tuple(args)).values()) == {"SUCCESS"}
        x, h0, w_ih, w_hh, _, _ = args
        output, h_n, _ = FORWARD(*args)
        grads = (torch.randn_like(output), torch.randn_like(h_n))
        result = torch.library.opcheck(BACKWARD, (*grads, x, h0, w_ih, w_hh, output))
        assert set(result.values()) == {"SUCCESS"}


def test_fused_rnn_module_on_cuda_matches_cpu():
    """FusedRNN (2 layers, batch_first, dropout off) moved to the GPU gives the CPU module's
    outputs and parameter gradients."""
    torch.manual_seed(0)
    cpu = FusedRNN(7, 19, num_layers=2, batch_first=True).double()
    gpu = FusedRNN(7, 19, num_layers=2, batch_first=True).double().cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(4, 11, 7, dtype=torch.float64)
    outs = []
    for module, xi in ((cpu, x), (gpu, x.cuda())):
        out, h_n = module(xi)
        (out.sum() + h_n.square().sum()).backward()
        outs.append([out, h_n] + [p.grad for p in module.parameters()])
    for got, want in zip(outs[1], outs[0]):
        torch.testing.assert_close(got.cpu(), want, atol=1e-10, rtol=0)


def test_side_stream_gives_the_same_result():
    """The kernels run on the current stream: work queued on a side stream, with no
    synchronisation but the stream's own order, gives the default stream's result."""
    inputs = make_inputs(40, 9, 6, 70, torch.float32, "cuda", seed=4, requires_grad=False)
    want = forward_backward([t.requires_grad_() for t in inputs])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fresh = [t.detach().clone().requires_grad_() for t in inputs]
        got = forward_backward(fresh)
    torch.cuda.current_stream().wait_stream(side)
    for a, b in zip(got, want):  # cuBLAS may pick another algorithm per stream: rounding only
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_device():
    """The device guard: tensors on cuda:1 run on cuda:1 while cuda:0 is current."""
    cpu = make_inputs(5, 3, 4, 21, torch.float64, "cpu", seed=6)
    gpu = make_inputs(5, 3, 4, 21, torch.float64, "cuda:1", seed=6)
    for got, want in zip(forward_backward(gpu), forward_backward(cpu)):
        assert got.device == torch.device("cuda:1")
        torch.testing.assert_close(got.cpu(), want, atol=1e-10, rtol=0)


def test_unknown_sweep_path_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CHARRNN_CUDA_SWEEP", "fastest")
    inputs = make_inputs(2, 2, 3, 4, torch.float32, "cuda", requires_grad=False)
    with pytest.raises(ValueError, match="CHARRNN_CUDA_SWEEP"):
        FORWARD(*inputs)


def test_forced_path_that_cannot_fit_is_a_clear_error(monkeypatch):
    """A block holds all of w_hh: at H=4096 in float64 (128 MB) it cannot, and says so."""
    monkeypatch.setenv("CHARRNN_CUDA_SWEEP", "block")
    inputs = make_inputs(2, 2, 3, 4096, torch.float64, "cuda", requires_grad=False)
    with pytest.raises(RuntimeError, match="CHARRNN_CUDA_SWEEP=block cannot run"):
        FORWARD(*inputs)


def test_inputs_on_mixed_devices_are_a_clear_error():
    x, h0, w_ih, w_hh, b_ih, b_hh = make_inputs(2, 2, 3, 4, torch.float32, "cuda", requires_grad=False)
    with pytest.raises(ValueError, match="h0 must be on the device of x"):
        FORWARD(x, h0.cpu(), w_ih, w_hh, b_ih, b_hh)
    with pytest.raises(ValueError, match="w_hh must be on the device of x"):
        FORWARD(x.cpu(), h0.cpu(), w_ih.cpu(), w_hh, b_ih.cpu(), b_hh.cpu())
