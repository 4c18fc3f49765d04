"""FusedRNN at torch.nn.RNN's edges: the same exception types for the same mistakes, empty
batches, whole-model pickles under weights_only=True, nn.RNN's implementation where no fused
kernel applies, and torch.export."""
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

import charrnn_ext
import charrnn_ext.nn
from charrnn_ext import (FusedRNN, FusedRNNFallbackWarning, RNNDeviceError, RNNDtypeError, RNNInputError,
                         RNNShapeError)

from test_nn import assert_same_run

E, H, T, B, L = 5, 13, 7, 3, 2


def make_pair(dtype=torch.float32, seed=0, **kwargs):
    """A FusedRNN and an nn.RNN with one state dict."""
    torch.manual_seed(seed)
    fused = FusedRNN(E, H, **kwargs).to(dtype)
    ref = torch.nn.RNN(E, H, **kwargs).to(dtype)
    ref.load_state_dict(fused.state_dict())
    return fused, ref


@pytest.fixture
def fresh_warnings():
    """Fallback warnings come once per process per reason: forget the ones already given."""
    charrnn_ext.nn._warned_fallbacks.clear()
    yield
    charrnn_ext.nn._warned_fallbacks.clear()


def x_(*shape, **kw):
    return torch.randn(*shape, **kw)


# (id, module kwargs, args, the exact type FusedRNN must raise (None: where FusedRNN runs nn.RNN's
# code, or neither checks: whatever nn.RNN raises), a type it must be as well (what FusedRNN raised
# before: ValueError for shapes and devices, TypeError for dtypes; else nn.RNN's), its message)
MISTAKES = [
    ("input-4d", {}, lambda: (x_(T, B, E, 1),), RNNShapeError, ValueError, r"got a 4-D tensor of shape \[7, 3, 5, 1\]"),
    ("input-1d", {}, lambda: (x_(E),), RNNShapeError, ValueError, r"3-D or 2-D tensor; got a 1-D"),
    ("input-size", {}, lambda: (x_(T, B, E + 1),), RNNShapeError, ValueError, r"input_size=5.*has 6 features"),
    ("input-size-unbatched", {}, lambda: (x_(T, E + 1),), RNNShapeError, ValueError, r"unbatched input .*\[7, 6\]"),
    ("input-size-batch-first", dict(batch_first=True), lambda: (x_(B, T, E + 1),), RNNShapeError, ValueError,
     r"input \[B, T, E\] of shape \[3, 7, 6\] has 6 features, expected 5"),
    ("hx-2d-for-batched", {}, lambda: (x_(T, B, E), x_(B, H)), RNNShapeError, ValueError,
     r"hx must have shape \[2, 3, 13\].*got a 2-D tensor of shape \[3, 13\]"),
    ("hx-3d-for-unbatched", {}, lambda: (x_(T, E), x_(L, 1, H)), RNNShapeError, ValueError,
     r"hx must have shape \[2, 13\].*got a 3-D tensor"),
    ("hx-num-layers", {}, lambda: (x_(T, B, E), x_(1, B, H)), RNNShapeError, ValueError,
     r"hx must have shape \[2, 3, 13\].*got shape \[1, 3, 13\]"),
    ("hx-batch", {}, lambda: (x_(T, B, E), x_(L, B + 1, H)), RNNShapeError, ValueError, r"got shape \[2, 4, 13\]"),
    ("hx-hidden", {}, lambda: (x_(T, B, E), x_(L, B, H + 1)), RNNShapeError, ValueError, r"got shape \[2, 3, 14\]"),
    ("hx-batch-batch-first", dict(batch_first=True), lambda: (x_(B, T, E), x_(L, T, H)), RNNShapeError,
     ValueError, r"hx must have shape \[2, 3, 13\]"),
    ("hx-hidden-unbatched", {}, lambda: (x_(T, E), x_(L, H + 1)), RNNShapeError, ValueError,
     r"hx must have shape \[2, 13\].*got shape \[2, 14\]"),
    ("input-float64", {}, lambda: (x_(T, B, E, dtype=torch.float64),), RNNDtypeError, TypeError,
     r"input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)"),
    ("input-int64", {}, lambda: (torch.ones(T, B, E, dtype=torch.long),), RNNDtypeError, TypeError,
     r"input dtype \(torch.int64\)"),
    ("input-bfloat16", {}, lambda: (x_(T, B, E, dtype=torch.bfloat16),), RNNDtypeError, TypeError,
     r"input dtype \(torch.bfloat16\)"),  # a mismatch, not a fallback
    ("hx-float64", {}, lambda: (x_(T, B, E), x_(L, B, H, dtype=torch.float64)), RNNDtypeError, TypeError,
     r"hx dtype \(torch.float64\) does not match input dtype \(torch.float32\)"),
    ("input-device", {}, lambda: (x_(T, B, E, device="meta"),), RNNDeviceError, ValueError,
     r"input is on meta but the weights are on cpu"),
    ("hx-device", {}, lambda: (x_(T, B, E), x_(L, B, H, device="meta")), RNNDeviceError, ValueError,
     r"hx is on meta but input is on cpu"),
    ("seq-len-0", {}, lambda: (x_(0, B, E),), RNNShapeError, ValueError, r"larger than 0.*\[0, 3, 5\]"),
    ("seq-len-0-unbatched", {}, lambda: (x_(0, E),), RNNShapeError, ValueError, r"larger than 0.*\[0, 5\]"),
    ("seq-len-0-batch-first", dict(batch_first=True), lambda: (x_(B, 0, E),), RNNShapeError, ValueError,
     r"larger than 0.*\[3, 0, 5\]"),
    ("seq-len-0-empty-batch", {}, lambda: (x_(0, 0, E),), RNNShapeError, ValueError, r"larger than 0"),
    ("input-not-a-tensor", {}, lambda: ([[1.0] * E] * T,), None, AttributeError, r"'list' object"),
    ("packed-hx-batch", {}, lambda: (pack_padded_sequence(x_(T, B, E), torch.tensor([7, 5, 2])), x_(L, 2, H)),
     None, RuntimeError, r"Expected hidden size \(2, 3, 13\)"),
    ("relu-input-size", dict(nonlinearity="relu"), lambda: (x_(T, B, E + 1),), None, RuntimeError,
     r"input_size"),
    ("bidirectional-hx", dict(bidirectional=True), lambda: (x_(T, B, E), x_(L, B, H)), None, RuntimeError,
     r"Expected hidden size \(4, 3, 13\)"),
]


def raised(module, args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FusedRNNFallbackWarning)
        with pytest.raises(Exception) as info:
            module(*args)
    return info.value


@pytest.mark.parametrize("kwargs, make_args, fused_type, old_type, message",
                         [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_same_exception_type_as_nn_rnn(kwargs, make_args, fused_type, old_type, message):
    """The same call on nn.RNN and FusedRNN (one state dict): FusedRNN's exception is an
    instance of nn.RNN's exception's type, of the type FusedRNN raised before (so `except`
    clauses of either kind still catch it), and names what was wrong."""
    fused, ref = make_pair(num_layers=L, **kwargs)
    args = make_args()
    ref_exc, fused_exc = raised(ref, args), raised(fused, args)
    assert isinstance(fused_exc, type(ref_exc)), (type(ref_exc), type(fused_exc), fused_exc)
    assert isinstance(fused_exc, old_type), (old_type, type(fused_exc))
    if fused_type is not None:  # FusedRNN's own check, before any kernel, not the op's
        assert type(fused_exc) is fused_type and str(fused_exc).startswith("FusedRNN: ")
    assert re.search(message, str(fused_exc)), str(fused_exc)


def test_error_types_derive_from_both():
    for cls in (RNNShapeError, RNNDtypeError, RNNDeviceError):
        assert issubclass(cls, RNNInputError) and issubclass(cls, RuntimeError) and issubclass(cls, ValueError)
    assert issubclass(RNNDtypeError, TypeError)


# B = 0: empty outputs, and a backward that gives zero gradients, without the op.

@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("hx_given", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_empty_batch_matches_nn_rnn(monkeypatch, batch_first, hx_given, bias):
    fused, ref = make_pair(torch.float64, num_layers=L, batch_first=batch_first, bias=bias)

    def no_kernel(*args, **kwargs):
        raise AssertionError("the fused op must not run for B = 0")
    monkeypatch.setattr(charrnn_ext.nn, "rnn_tanh", no_kernel)
    results = []
    for module in (fused, ref):
        x = torch.randn((0, T, E) if batch_first else (T, 0, E), dtype=torch.float64, requires_grad=True)
        hx = torch.randn(L, 0, H, dtype=torch.float64, requires_grad=True) if hx_given else None
        out, h_n = module(x, hx)
        inputs = [x] + ([hx] if hx_given else []) + list(module.parameters())
        # every input reached (allow_unused=False), as in nn.RNN's graph
        grads = torch.autograd.grad(out.sum() + h_n.sum(), inputs)
        results.append((out, h_n, grads))
    (out_f, h_f, g_f), (out_r, h_r, g_r) = results
    assert out_f.shape == out_r.shape == ((0, T, H) if batch_first else (T, 0, H))
    assert h_f.shape == h_r.shape == (L, 0, H)
    assert out_f.dtype == h_f.dtype == torch.float64 and out_f.requires_grad and h_f.requires_grad
    assert len(g_f) == len(g_r)
    for gf, gr in zip(g_f, g_r):
        assert gf.shape == gr.shape and gf.dtype == gr.dtype
        assert torch.equal(gf, gr) and not gf.any()
    # and a whole training step: .backward() fills every parameter's grad with zeros
    fused.zero_grad(set_to_none=True)
    out, h_n = fused(torch.randn((0, T, E) if batch_first else (T, 0, E), dtype=torch.float64))
    (out.sum() + h_n.sum()).backward()
    assert all(p.grad is not None and not p.grad.any() for p in fused.parameters())


def test_empty_batch_without_grad():
    fused, _ = make_pair(num_layers=L)
    with torch.no_grad():
        out, h_n = fused(torch.randn(T, 0, E))
    assert out.shape == (T, 0, H) and h_n.shape == (L, 0, H) and not out.requires_grad


# Whole-model pickles under torch.load's default weights_only=True.

def make_model(cls):
    torch.manual_seed(20)
    kwargs = dict(num_layers=L, batch_first=True, dropout=0.1)
    if cls is FusedRNN:
        kwargs["output_dropout"] = 0.25
    return torch.nn.Sequential(torch.nn.Embedding(11, E), cls(E, H, **kwargs)).eval()


def test_whole_model_loads_with_weights_only(tmp_path):
    """Where the model with nn.RNN loads (its torch classes allow-listed), the model with
    FusedRNN loads as well: FusedRNN was allow-listed on import."""
    assert FusedRNN in torch.serialization.get_safe_globals()
    ids = torch.randint(0, 11, (B, T))
    torch_classes = [torch.nn.Sequential, torch.nn.Embedding]
    for cls in (torch.nn.RNN, FusedRNN):
        model = make_model(cls)
        torch.save(model, tmp_path / "model.pt")
        extra = [torch.nn.RNN] if cls is torch.nn.RNN else []
        with torch.serialization.safe_globals(torch_classes + extra):
            loaded = torch.load(tmp_path / "model.pt")  # weights_only=True, torch's default
        assert type(loaded[1]) is cls
        with torch.no_grad():
            for got, want in zip(loaded(ids), model(ids)):
                assert torch.equal(got, want)
    assert loaded[1].output_dropout == 0.25 and loaded[1].dropout == 0.1 and not loaded.training


def test_whole_model_loads_with_weights_only_in_a_fresh_process(tmp_path):
    """In a fresh process: refused before charrnn_ext is imported, loaded after; forward equal."""
    model = make_model(FusedRNN)
    ids = torch.randint(0, 11, (B, T))
    with torch.no_grad():
        want = model(ids)
    torch.save(model, tmp_path / "model.pt")
    torch.save(ids, tmp_path / "ids.pt")
    code = (
        "import pickle, sys, torch\n"
        "allowed = [torch.nn.Sequential, torch.nn.Embedding]\n"
        "try:\n"
        "    with torch.serialization.safe_globals(allowed):\n"
        "        torch.load('model.pt')\n"
        "    print('loaded without charrnn_ext')\n"
        "except pickle.UnpicklingError as e:\n"
        "    print('refused:', 'charrnn_ext.nn.FusedRNN' in str(e))\n"
        "import charrnn_ext\n"
        "with torch.serialization.safe_globals(allowed):\n"
        "    model = torch.load('model.pt')\n"
        "with torch.no_grad():\n"
        "    torch.save(model(torch.load('ids.pt')), 'out.pt')\n"
        "print(type(model[1]).__name__, model[1].output_dropout)\n")
    imported_from = str(Path(charrnn_ext.__file__).resolve().parents[1])
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": imported_from}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.splitlines() == ["refused: True", "FusedRNN 0.25"], r.stdout
    got = torch.load(tmp_path / "out.pt")
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_old_pickle_without_output_dropout_loads():
    fused, _ = make_pair()
    state = fused.__getstate__()
    del state["output_dropout"]
    restored = FusedRNN.__new__(FusedRNN)
    restored.__setstate__(state)
    assert restored.output_dropout == 0.0
    x = torch.randn(T, B, E)
    with torch.no_grad():
        assert torch.equal(restored(x)[0], fused(x)[0])


# nn.RNN's implementation where the fused kernels do not apply.

def fallback_warnings(record):
    return [w for w in record if issubclass(w.category, FusedRNNFallbackWarning)]


def call_recording(module, *args):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = module(*args)
    return result, fallback_warnings(record)


@pytest.mark.parametrize("kwargs", [dict(nonlinearity="relu"), dict(bidirectional=True),
                                    dict(nonlinearity="relu", bidirectional=True, bias=False)],
                         ids=["relu", "bidirectional", "relu-bidirectional-nobias"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_unfused_configurations_match_nn_rnn_exactly(fresh_warnings, kwargs, batch_first, dropout):
    """Forward and every gradient equal nn.RNN's, bit for bit (float64), in training mode with
    nn.RNN's own dropout between layers from the same seed."""
    fused, ref = make_pair(torch.float64, num_layers=L, batch_first=batch_first, dropout=dropout, **kwargs)
    D = 2 if fused.bidirectional else 1
    x = torch.randn((B, T, E) if batch_first else (T, B, E), dtype=torch.float64)
    hx = torch.randn(D * L, B, H, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FusedRNNFallbackWarning)
        torch.manual_seed(30)  # the dropout masks: both draw from torch's generator
        got = fused(x, hx)
        torch.manual_seed(30)
        want = ref(x, hx)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
        if dropout == 0:
            assert_same_run(fused, ref, x, hx, rtol=0, atol=0)
        fused.eval(), ref.eval()
        assert_same_run(fused, ref, x, hx, rtol=0, atol=0)
        assert_same_run(fused, ref, x[0] if batch_first else x[:, 0], None, rtol=0, atol=0)  # unbatched


@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_sequence_matches_nn_rnn_exactly(enforce_sorted):
    fused, ref = make_pair(torch.float64, num_layers=L)
    lengths = torch.tensor([7, 5, 2] if enforce_sorted else [5, 7, 2])
    padded = torch.randn(T, B, E, dtype=torch.float64)
    hx = torch.randn(L, B, H, dtype=torch.float64)
    g = torch.Generator().manual_seed(31)
    grad_data = torch.randn(int(lengths.sum()), H, generator=g, dtype=torch.float64)
    grad_h_n = torch.randn(L, B, H, generator=g, dtype=torch.float64)
    results = []
    for module in (fused, ref):
        x, h0 = padded.clone().requires_grad_(), hx.clone().requires_grad_()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FusedRNNFallbackWarning)
            out, h_n = module(pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted), h0)
        grads = torch.autograd.grad((out.data, h_n), [x, h0, *module.parameters()], (grad_data, grad_h_n))
        results.append((out, h_n, grads))
    (out_f, h_f, g_f), (out_r, h_r, g_r) = results
    assert type(out_f) is type(out_r)
    for a, b in zip(out_f, out_r):
        assert (a is None and b is None) or torch.equal(a, b)
    assert torch.equal(h_f, h_r)
    assert all(torch.equal(a, b) for a, b in zip(g_f, g_r))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_dtypes_run_nn_rnn(fresh_warnings, dtype):
    fused, ref = make_pair(dtype, num_layers=L)
    x = torch.randn(T, B, E, dtype=dtype)
    (out, h_n), caught = call_recording(fused, x)
    assert len(caught) == 1 and re.search(
        rf"FusedRNN: dtype {dtype} has no fused kernel.*torch.nn.RNN's implementation \(unfused\)",
        str(caught[0].message))
    assert out.dtype == h_n.dtype == dtype
    assert_same_run(fused, ref, x, torch.randn(L, B, H, dtype=dtype), rtol=0, atol=0)


def test_meta_device_runs_nn_rnn(fresh_warnings):
    fused, ref = make_pair(num_layers=L, batch_first=True)
    fused.to("meta"), ref.to("meta")
    x = torch.randn(B, T, E, device="meta")
    (out, h_n), caught = call_recording(fused, x)
    assert len(caught) == 1 and re.search(
        r"device type 'meta' has no fused kernel.*torch.nn.RNN's implementation \(unfused\)", str(caught[0].message))
    out_r, h_r = ref(x)
    assert out.device.type == h_n.device.type == "meta"
    assert out.shape == out_r.shape == (B, T, H) and h_n.shape == h_r.shape == (L, B, H)


def test_autocast_with_mismatched_dtype_runs_nn_rnn(fresh_warnings):
    """nn.RNN skips its dtype check under autocast; FusedRNN runs nn.RNN's implementation there."""
    fused, ref = make_pair(num_layers=L)
    x = torch.randn(T, B, E, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (out, h_n), caught = call_recording(fused, x)
        out_r, h_r = ref(x)
    assert len(caught) == 1 and "autocast" in str(caught[0].message)
    assert torch.equal(out, out_r) and torch.equal(h_n, h_r)


@pytest.mark.parametrize("case", ["relu", "bidirectional", "packed", "bfloat16", "meta"])
def test_fallback_warns_once_per_reason(fresh_warnings, case):
    kwargs = dict(relu=dict(nonlinearity="relu"), bidirectional=dict(bidirectional=True)).get(case, {})
    fused = FusedRNN(E, H, **kwargs)
    x = torch.randn(T, B, E)
    if case == "packed":
        x = pack_padded_sequence(x, torch.tensor([7, 5, 2]))
    elif case == "bfloat16":
        fused, x = fused.bfloat16(), x.bfloat16()
    elif case == "meta":
        fused, x = fused.to("meta"), x.to("meta")
    first, second = call_recording(fused, x)[1], call_recording(fused, x)[1]
    assert len(first) == 1 and "torch.nn.RNN's implementation (unfused)" in str(first[0].message)
    assert second == []
    # another reason still warns
    other_kwargs = dict(bidirectional=True) if case == "relu" else dict(nonlinearity="relu")
    _, other = call_recording(FusedRNN(E, H, **other_kwargs), torch.randn(T, B, E))
    assert len(other) == 1 and str(other[0].message) != str(first[0].message)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("x_shape", [(T, B, E), (T, E)], ids=["batched", "unbatched"])
def test_supported_calls_stay_fused(monkeypatch, dtype, x_shape):
    """float32/float64 tanh on the CPU: one fused call per layer, no warning."""
    calls = []

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return charrnn_ext.ops.rnn_tanh(*args, **kwargs)
    monkeypatch.setattr(charrnn_ext.nn, "rnn_tanh", counting)
    fused, ref = make_pair(dtype, num_layers=L)
    x = torch.randn(*x_shape, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FusedRNNFallbackWarning)
        out, h_n = fused(x)
    assert len(calls) == L
    torch.testing.assert_close(out, ref(x)[0])


@pytest.mark.parametrize("case", ["relu", "packed"])
def test_output_dropout_on_the_fallback_is_torch_dropout(case):
    """Training mode: output_dropout is F.dropout on nn.RNN's output (a PackedSequence's data),
    from torch's generator; h_n is not dropped; eval mode drops nothing."""
    kwargs = dict(nonlinearity="relu") if case == "relu" else {}
    torch.manual_seed(40)
    fused = FusedRNN(E, H, num_layers=L, output_dropout=0.5, **kwargs).double()
    ref = torch.nn.RNN(E, H, num_layers=L, **kwargs).double()
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(T, B, E, dtype=torch.float64)
    if case == "packed":
        x = pack_padded_sequence(x, torch.tensor([7, 5, 2]))
    data = (lambda out: out.data) if case == "packed" else (lambda out: out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FusedRNNFallbackWarning)
        torch.manual_seed(41)
        out, h_n = fused(x)
        torch.manual_seed(41)
        out_r, h_r = ref(x)
        want = F.dropout(data(out_r), 0.5, training=True)
        assert torch.equal(data(out), want) and torch.equal(h_n, h_r)
        assert not torch.equal(data(out), data(out_r))  # something was dropped
        fused.eval()
        assert torch.equal(data(fused(x)[0]), data(out_r))


# torch.export

class Tagger(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = FusedRNN(E, H, num_layers=L, batch_first=True, dropout=0.2, output_dropout=0.3)
        self.head = torch.nn.Linear(H, 4)

    def forward(self, x, hx):
        out, h_n = self.rnn(x, hx)
        return self.head(out), h_n


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_export(dynamic):
    """float32, CPU, eval mode: the exported program holds the fused op (one per layer) and gives
    eager's results; with a dynamic batch size and sequence length, at other sizes too."""
    torch.manual_seed(50)
    model = Tagger().eval()
    x, hx = torch.randn(B, T, E), torch.randn(L, B, H)
    batch, time = torch.export.Dim("batch"), torch.export.Dim("time")
    shapes = ({0: batch, 1: time}, {1: batch}) if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("error", FusedRNNFallbackWarning)
        program = torch.export.export(model, (x, hx), dynamic_shapes=shapes)
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert targets.count("charrnn.rnn_tanh_forward.default") == L, targets
    b2, t2 = (B + 2, T - 3) if dynamic else (B, T)
    x2, hx2 = torch.randn(b2, t2, E), torch.randn(L, b2, H)
    with torch.no_grad():
        got, want = program.module()(x2, hx2), model(x2, hx2)
    assert got[0].shape == (b2, t2, 4) and got[1].shape == (L, b2, H)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
