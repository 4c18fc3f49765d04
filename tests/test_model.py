import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from charrnn_ext.checkpoint import state_from_list, state_to_list
from charrnn_ext.model import CharRNN, ModelConfig, detach_state
from charrnn_ext.nn import FusedRNN


@pytest.mark.parametrize("cell", ["rnn", "rnn-torch", "gru", "lstm"])
@pytest.mark.parametrize("layers", [1, 2])
def test_shapes_and_state(cell, layers):
    torch.manual_seed(0)
    m = CharRNN(ModelConfig(vocab_size=11, cell=cell, hidden_size=8, num_layers=layers, embedding_size=5,
                            dropout=0.1))
    idx = torch.randint(11, (3, 7))
    logits, state = m(idx)
    assert logits.shape == (3, 7, 11)
    states = state if cell == "lstm" else (state,)
    assert all(s.shape == (layers, 3, 8) for s in states)
    logits2, _ = m(idx[:, :1], state)  # a state goes back in as it came out
    assert logits2.shape == (3, 1, 11)
    back = state_from_list(state_to_list(state), cell)
    assert all(torch.equal(a, b) for a, b in zip(states, back if cell == "lstm" else (back,)))
    assert all(not s.requires_grad for s in (detach_state(state) if cell == "lstm" else (detach_state(state),)))


def test_rnn_cell_is_the_fused_op_and_one_hot_input():
    m = CharRNN(ModelConfig(vocab_size=13, cell="rnn", hidden_size=6, embedding_size=0))
    assert isinstance(m.rnn, FusedRNN)
    assert m.embed is None and m.rnn.weight_ih_l0.shape == (6, 13)  # one-hot, as min-char-rnn


def test_fused_and_torch_rnn_share_state_dicts_and_outputs():
    torch.manual_seed(0)
    cfg = dict(vocab_size=9, hidden_size=12, num_layers=2, embedding_size=4, dropout=0.0)
    fused = CharRNN(ModelConfig(cell="rnn", **cfg)).double()
    plain = CharRNN(ModelConfig(cell="rnn-torch", **cfg)).double()
    plain.load_state_dict(fused.state_dict())
    idx = torch.randint(9, (5, 6))
    h0 = torch.randn(2, 5, 12, dtype=torch.float64)
    (a, ha), (b, hb) = fused(idx, h0), plain(idx, h0)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ha, hb)
    a.square().sum().backward()
    b.square().sum().backward()
    for (n, p), q in zip(fused.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)


class _CountCharrnnOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "charrnn":
            self.calls.append(func.name())
        return func(*args, **(kwargs or {}))


def test_multilayer_stack_runs_one_fused_call_per_layer_per_window():
    if not any(n.startswith("charrnn::") for n in torch._C._dispatch_get_all_op_names()):
        pytest.skip("the fused extension's ops are not registered")
    m = CharRNN(ModelConfig(vocab_size=9, cell="rnn", hidden_size=8, num_layers=3, embedding_size=4))
    idx = torch.randint(9, (2, 20))
    with _CountCharrnnOps() as fwd:
        logits, _ = m(idx)
    with _CountCharrnnOps() as bwd:
        logits.sum().backward()
    assert len(fwd.calls) == 3, fwd.calls
    assert len(bwd.calls) == 3, bwd.calls


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="unknown cell"):
        ModelConfig(vocab_size=5, cell="transformer")
    with pytest.raises(ValueError):
        ModelConfig(vocab_size=5, dropout=1.0)
    with pytest.raises(ValueError):
        ModelConfig(vocab_size=5, embedding_size=-1)


def test_fused_cell_drops_inside_the_op_other_cells_with_torch_dropout():
    """The fused rnn cell takes its dropout (between layers and before the head) inside the op:
    no dropout module before the head. The other cells drop the head's input with nn.Dropout."""
    fused = CharRNN(ModelConfig(vocab_size=9, cell="rnn", hidden_size=8, num_layers=2, dropout=0.3))
    assert isinstance(fused.drop, torch.nn.Identity)
    assert fused.rnn.dropout == 0.3 and fused.rnn.output_dropout == 0.3
    idx = torch.randint(9, (3, 11))
    fused.train()
    torch.manual_seed(2)
    a, _ = fused(idx)
    torch.manual_seed(2)
    assert torch.equal(fused(idx)[0], a)
    fused.eval()
    assert not torch.allclose(fused(idx)[0], a)  # train mode dropped the head's input
    for cell in ("rnn-torch", "gru", "lstm"):
        m = CharRNN(ModelConfig(vocab_size=9, cell=cell, hidden_size=8, num_layers=2, dropout=0.3))
        assert isinstance(m.drop, torch.nn.Dropout) and m.drop.p == 0.3
