"""PyTorch's own test inputs for torch.nn.RNN, from the installed wheel, run through FusedRNN.

torch.testing._internal.common_modules holds nn.RNN's ModuleInfo: its module_inputs_func (the
constructor and forward arguments torch tests nn.RNN with: tanh and relu, bias, batch_first,
bidirectional, with and without hx, packed sequences) and module_error_inputs_func (mistakes
and the exceptions nn.RNN raises for them). Every input goes to FusedRNN and to nn.RNN with
the same state dict: forward, gradients, second derivatives, state dict, pickling and repr must
agree; every mistake must raise nn.RNN's exception type with a message matching nn.RNN's.
"""
import io
import pickle

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence

from charrnn_ext import FusedRNN

common_modules = pytest.importorskip("torch.testing._internal.common_modules")
# Importing torch's test utilities freezes torch.backends' global flags for the whole process
# (torch's own suite sets them through flags() only); the benchmarks other tests run assign
# them directly, so the freeze is undone.
torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True
INFO = next(m for m in common_modules.module_db if m.module_cls is torch.nn.RNN)
DTYPE = torch.float64


def module_inputs(training):
    return INFO.module_inputs_func(INFO, device="cpu", dtype=DTYPE, requires_grad=True, training=training,
                                   with_packed_sequence=True)


def error_inputs():
    return INFO.module_error_inputs_func(INFO, device="cpu", dtype=DTYPE, requires_grad=True, training=True)


def describe(sample):
    kw = sample.constructor_input.kwargs
    parts = [f"{k}={v}" for k, v in kw.items() if k in ("nonlinearity", "bias", "batch_first", "bidirectional")]
    args = sample.forward_input.args
    parts.append("packed" if isinstance(args[0], PackedSequence) else "x" + "x".join(map(str, args[0].shape)))
    parts.append("hx" if len(args) > 1 else "no-hx")
    return ",".join(parts)


CASES = [(training, i) for training in (True, False) for i in range(len(module_inputs(training)))]


def fresh(arg):
    """The same values, a leaf of its own."""
    if isinstance(arg, PackedSequence):
        return PackedSequence(arg.data.detach().clone().requires_grad_(), arg.batch_sizes, arg.sorted_indices,
                              arg.unsorted_indices)
    return arg.detach().clone().requires_grad_()


def leaves(args):
    return [a.data if isinstance(a, PackedSequence) else a for a in args]


def pair(sample, training):
    torch.manual_seed(0)
    ref = torch.nn.RNN(*sample.constructor_input.args, **sample.constructor_input.kwargs, dtype=DTYPE)
    fused = FusedRNN(*sample.constructor_input.args, **sample.constructor_input.kwargs, dtype=DTYPE)
    fused.load_state_dict(ref.state_dict())
    return ref.train(training), fused.train(training)


def run(module, args):
    out, h_n = module(*args)
    return (out.data if isinstance(out, PackedSequence) else out), h_n


@pytest.mark.filterwarnings("ignore::charrnn_ext.FusedRNNFallbackWarning")
@pytest.mark.parametrize("training,index", CASES,
                         ids=[f"{'train' if t else 'eval'}-{describe(module_inputs(t)[i])}" for t, i in CASES])
def test_torch_module_inputs_give_nn_rnns_results(training, index):
    sample = module_inputs(training)[index]
    ref, fused = pair(sample, training)
    ref_args = [fresh(a) for a in sample.forward_input.args]
    fused_args = [fresh(a) for a in sample.forward_input.args]

    # forward: the module inputs have no dropout, so train and eval agree elementwise too
    ref_out, fused_out = run(ref, ref_args), run(fused, fused_args)
    for want, got in zip(ref_out, fused_out):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-9, rtol=0)

    # gradients of every input and parameter
    torch.manual_seed(1)
    weights = [torch.randn_like(t) for t in ref_out]
    for outs, module, args in ((ref_out, ref, ref_args), (fused_out, fused, fused_args)):
        sum((o * w).sum() for o, w in zip(outs, weights)).backward()
    for want, got in zip(leaves(ref_args), leaves(fused_args)):
        torch.testing.assert_close(got.grad, want.grad, atol=1e-9, rtol=0)
    for (name, want), got in zip(ref.named_parameters(), fused.parameters()):
        torch.testing.assert_close(got.grad, want.grad, atol=1e-9, rtol=0, msg=name)

    # second derivatives with respect to the tensor inputs (PackedSequence is rebuilt inside)
    if not isinstance(sample.forward_input.args[0], PackedSequence):
        inputs = tuple(fresh(a) for a in sample.forward_input.args)
        assert torch.autograd.gradgradcheck(lambda *a: run(fused, a), inputs)

    # state dict, pickling and repr
    assert list(fused.state_dict()) == list(ref.state_dict())
    for value, want in zip(fused.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(value, want)
    again = pickle.loads(pickle.dumps(fused))
    buffer = io.BytesIO()
    torch.save(fused, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer)  # weights_only=True, the default
    for copy in (again, loaded):
        assert type(copy) is FusedRNN
        for want, got in zip(run(fused, fused_args), run(copy, fused_args)):
            assert torch.equal(got, want)
    assert repr(fused) == repr(ref).replace("RNN(", "FusedRNN(", 1)


ERRORS = error_inputs()


@pytest.mark.parametrize("index", range(len(ERRORS)),
                         ids=[f"{e.error_type.__name__}-{e.error_regex[:40]}" for e in ERRORS])
def test_torch_error_inputs_raise_nn_rnns_exceptions(index):
    case = ERRORS[index]
    sample = case.module_error_input
    construct = lambda: FusedRNN(*sample.constructor_input.args, **sample.constructor_input.kwargs)  # noqa: E731
    if case.error_on == common_modules.ModuleErrorEnum.CONSTRUCTION_ERROR:
        with pytest.raises(case.error_type, match=case.error_regex):
            construct()
    else:
        module = construct()
        with pytest.raises(case.error_type, match=case.error_regex):
            module(*sample.forward_input.args, **sample.forward_input.kwargs)
