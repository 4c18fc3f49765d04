"""The numpy oracle (charrnn_ext.reference) checked on its own: against torch autograd of a plain
per-step torch loop (float64), and against central finite differences."""
import numpy as np
import pytest
import torch

from charrnn_ext import reference

# ------------------------------------------------------------------ layer-level rnn_tanh


def torch_loop(x, h0, w_ih, w_hh, b_ih, b_hh):
    """docs/design.md's forward equations, one torch op per step."""
    h, outs = h0, []
    for t in range(x.shape[0]):
        h = torch.tanh(x[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh)
        outs.append(h)
    return torch.stack(outs), h


SHAPES = [(1, 1, 1, 1), (1, 3, 4, 13), (8, 1, 5, 37), (6, 4, 37, 13), (20, 2, 8, 8)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}-B{}-E{}-H{}".format(*s))
@pytest.mark.parametrize("bias", ["both", "none", "ih", "hh"])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_rnn_tanh_reference_matches_torch_autograd(shape, bias, layout):
    T, B, E, H = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, E))
    h0 = 0.5 * rng.standard_normal((B, H))
    w_ih = rng.standard_normal((H, E)) / np.sqrt(E)
    w_hh = 0.9 * rng.standard_normal((H, H)) / np.sqrt(H)
    b_ih = 0.1 * rng.standard_normal(H) if bias in ("both", "ih") else None
    b_hh = 0.1 * rng.standard_normal(H) if bias in ("both", "hh") else None
    grad_output = rng.standard_normal((T, B, H))
    grad_h_n = rng.standard_normal((B, H))
    if layout == "transposed":  # numpy views with other strides, same values
        x = np.ascontiguousarray(x.transpose(1, 0, 2)).transpose(1, 0, 2)
        w_ih, w_hh, h0 = (np.asfortranarray(a) for a in (w_ih, w_hh, h0))
    originals = [None if a is None else a.copy() for a in (x, h0, w_ih, w_hh, b_ih, b_hh)]

    out, h_n = reference.rnn_tanh_forward(x, h0, w_ih, w_hh, b_ih, b_hh)
    grads = reference.rnn_tanh_backward(grad_output, grad_h_n, x, h0, w_ih, w_hh, out)

    tt = [torch.tensor(a if a is not None else np.zeros(H), requires_grad=True)
          for a in (x, h0, w_ih, w_hh, b_ih, b_hh)]
    t_out, t_h_n = torch_loop(*tt)
    t_grads = torch.autograd.grad((t_out, t_h_n), tt,
                                  (torch.tensor(grad_output), torch.tensor(grad_h_n)))

    assert out.shape == (T, B, H) and h_n.shape == (B, H)
    assert out.dtype == np.float64
    assert np.max(np.abs(out - t_out.detach().numpy())) <= 1e-10
    assert np.max(np.abs(h_n - t_h_n.detach().numpy())) <= 1e-10
    assert np.array_equal(h_n, out[-1])
    for name, g, tg, a in zip(["x", "h0", "w_ih", "w_hh", "b_ih", "b_hh"], grads, t_grads, tt):
        assert g.shape == tuple(a.shape), name
        err = np.max(np.abs(g - tg.numpy()))
        assert err <= 1e-10, f"d{name}: max abs error {err:.3e}"
    for a, o in zip((x, h0, w_ih, w_hh, b_ih, b_hh), originals):
        if a is not None:
            assert np.array_equal(a, o)  # inputs untouched


def test_rnn_tanh_reference_upcasts_float32():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, 4)).astype(np.float32)
    h0 = rng.standard_normal((2, 5)).astype(np.float32)
    w_ih = rng.standard_normal((5, 4)).astype(np.float32)
    w_hh = rng.standard_normal((5, 5)).astype(np.float32)
    out, h_n = reference.rnn_tanh_forward(x, h0, w_ih, w_hh)
    assert out.dtype == np.float64 and h_n.dtype == np.float64
    out64, _ = reference.rnn_tanh_forward(*(a.astype(np.float64) for a in (x, h0, w_ih, w_hh)))
    assert np.max(np.abs(out - out64)) <= 1e-12


# ------------------------------------------------------------------ min-char-rnn

def random_params(V, Hd, scale, rng, bhh=False):
    params = {
        "Wxh": scale * rng.standard_normal((Hd, V)),
        "Whh": scale * rng.standard_normal((Hd, Hd)),
        "Why": scale * rng.standard_normal((V, Hd)),
        "bh": scale * rng.standard_normal((Hd, 1)),
        "by": scale * rng.standard_normal((V, 1)),
    }
    if bhh:
        params["bhh"] = scale * rng.standard_normal((Hd, 1))
    return params


def torch_min_char_rnn(inputs, targets, hprev, params):
    """min-char-rnn's forward in torch (per step), loss summed over the window; returns
    (loss, {"d" + name: unclipped gradient}, h_last)."""
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    V = tp["Wxh"].shape[1]
    bias = tp["bh"] + tp["bhh"] if "bhh" in tp else tp["bh"]
    h = torch.tensor(hprev)
    loss = torch.zeros((), dtype=torch.float64)
    for i, t in zip(inputs, targets):
        xv = torch.zeros(V, 1, dtype=torch.float64)
        xv[i] = 1
        h = torch.tanh(tp["Wxh"] @ xv + tp["Whh"] @ h + bias)
        logits = (tp["Why"] @ h + tp["by"]).T  # [1, V]
        loss = loss + torch.nn.functional.cross_entropy(logits, torch.tensor([t]), reduction="sum")
    grads = torch.autograd.grad(loss, list(tp.values()))
    return loss.item(), {"d" + k: g.numpy() for k, g in zip(tp, grads)}, h.detach().numpy()


def finite_difference_grads(inputs, targets, hprev, params, eps=1e-6):
    fd = {}
    for k, v in params.items():
        g = np.zeros_like(v)
        for idx in np.ndindex(v.shape):
            plus = {kk: vv.copy() for kk, vv in params.items()}
            minus = {kk: vv.copy() for kk, vv in params.items()}
            plus[k][idx] += eps
            minus[k][idx] -= eps
            g[idx] = (reference.min_char_rnn_loss(inputs, targets, hprev, plus)[0]
                      - reference.min_char_rnn_loss(inputs, targets, hprev, minus)[0]) / (2 * eps)
        fd["d" + k] = g
    return fd


@pytest.mark.parametrize("bhh", [False, True])
def test_min_char_rnn_loss_gradients_match_finite_differences(bhh):
    """Weights small enough that no gradient reaches the clip at 5 (asserted), so the returned
    gradients are the exact ones."""
    rng = np.random.default_rng(2)
    V, Hd = 6, 5
    params = random_params(V, Hd, 0.3, rng, bhh=bhh)
    inputs = [int(i) for i in rng.integers(0, V, 8)]
    targets = [int(i) for i in rng.integers(0, V, 8)]
    hprev = 0.5 * rng.standard_normal((Hd, 1))
    before = {k: v.copy() for k, v in params.items()}

    loss, grads, h_last = reference.min_char_rnn_loss(inputs, targets, hprev, params)
    fd = finite_difference_grads(inputs, targets, hprev, params)

    assert set(grads) == {"d" + k for k in params}
    for name, g in grads.items():
        assert g.shape == params[name[1:]].shape
        assert np.max(np.abs(fd[name])) < 4.0, "test weights too large: clipping would kick in"
        err = np.max(np.abs(g - fd[name]))
        assert err <= 1e-6 * max(1.0, np.max(np.abs(fd[name]))), f"{name}: max abs error {err:.3e}"
    if bhh:
        assert np.array_equal(grads["dbhh"], grads["dbh"])
    # and against torch autograd of the same model (no finite-difference error)
    t_loss, t_grads, t_h = torch_min_char_rnn(inputs, targets, hprev, params)
    assert abs(loss - t_loss) <= 1e-10
    assert np.max(np.abs(h_last - t_h)) <= 1e-12
    for name, g in grads.items():
        assert np.max(np.abs(g - t_grads[name])) <= 1e-10, name
    for k in params:
        assert np.array_equal(params[k], before[k])


def test_min_char_rnn_loss_clips_gradients():
    """Large weights and a long window: some exact gradients exceed 5 in magnitude, and the
    returned ones are exactly the exact ones clipped elementwise to [-5, 5]."""
    rng = np.random.default_rng(3)
    V, Hd, n = 4, 6, 40
    params = random_params(V, Hd, 2.0, rng)
    inputs = [int(i) for i in rng.integers(0, V, n)]
    targets = [int(i) for i in rng.integers(0, V, n)]
    hprev = np.zeros((Hd, 1))
    _, grads, _ = reference.min_char_rnn_loss(inputs, targets, hprev, params)
    _, exact, _ = torch_min_char_rnn(inputs, targets, hprev, params)
    assert max(np.max(np.abs(g)) for g in exact.values()) > 5.0, "no gradient reached the clip"
    for name, g in grads.items():
        assert np.max(np.abs(g)) <= 5.0
        assert np.max(np.abs(g - np.clip(exact[name], -5, 5))) <= 1e-9, name


def test_min_char_rnn_hidden_gradients_equal_layer_reference():
    """The two oracles agree: min-char-rnn's hidden-layer gradients are rnn_tanh_backward's with
    one-hot inputs, B=1 and grad_output_t = Why^T (p_t - onehot(target_t))."""
    rng = np.random.default_rng(4)
    V, Hd, n = 7, 6, 9
    params = random_params(V, Hd, 0.3, rng)
    inputs = [int(i) for i in rng.integers(0, V, n)]
    targets = [int(i) for i in rng.integers(0, V, n)]
    hprev = 0.5 * rng.standard_normal((Hd, 1))
    _, grads, h_last = reference.min_char_rnn_loss(inputs, targets, hprev, params)

    x = np.eye(V)[inputs][:, None, :]  # [T, 1, V]
    out, h_n = reference.rnn_tanh_forward(x, hprev.T, params["Wxh"], params["Whh"],
                                          params["bh"][:, 0])
    assert np.max(np.abs(h_n.T - h_last)) <= 1e-12
    logits = out[:, 0, :] @ params["Why"].T + params["by"][:, 0]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dy = p - np.eye(V)[targets]
    grad_output = (dy @ params["Why"])[:, None, :]
    _, _, dw_ih, dw_hh, db, _ = reference.rnn_tanh_backward(
        grad_output, np.zeros((1, Hd)), x, hprev.T, params["Wxh"], params["Whh"], out)
    assert np.max(np.abs(grads["dWxh"] - dw_ih)) <= 1e-12
    assert np.max(np.abs(grads["dWhh"] - dw_hh)) <= 1e-12
    assert np.max(np.abs(grads["dbh"][:, 0] - db)) <= 1e-12


def test_min_char_rnn_init():
    p = reference.min_char_rnn_init(11, 17, seed=5)
    assert {k: v.shape for k, v in p.items()} == {
        "Wxh": (17, 11), "Whh": (17, 17), "Why": (11, 17), "bh": (17, 1), "by": (11, 1)}
    assert not p["bh"].any() and not p["by"].any()
    assert 0.005 < p["Whh"].std() < 0.015
    q = reference.min_char_rnn_init(11, 17, seed=5)
    r = reference.min_char_rnn_init(11, 17, seed=6)
    assert all(np.array_equal(p[k], q[k]) for k in p)
    assert not np.array_equal(p["Whh"], r["Whh"])


def _ids(text):
    chars = sorted(set(text))
    return [chars.index(c) for c in text], len(chars)


def test_min_char_rnn_train_reproduces_seed_loop():
    """Three steps of the seed's loop written out here (state carried between windows, pointer
    advanced by seq_len, Adagrad with 1e-8) give exactly train()'s losses and parameters."""
    data, V = _ids("the quick brown fox jumps over the lazy dog")
    params = reference.min_char_rnn_init(V, 8, seed=0)
    params["Whh"] = params["Whh"] * 30  # make the carried state matter
    seq_len, lr = 6, 0.1
    p = {k: v.copy() for k, v in params.items()}
    mem = {k: np.zeros_like(v) for k, v in p.items()}
    hprev, pos, losses = np.zeros((8, 1)), 0, []
    for _ in range(3):
        loss, grads, hprev = reference.min_char_rnn_loss(
            data[pos:pos + seq_len], data[pos + 1:pos + seq_len + 1], hprev, p)
        losses.append(loss)
        for k in p:
            mem[k] += grads["d" + k] ** 2
            p[k] = p[k] - lr * grads["d" + k] / np.sqrt(mem[k] + 1e-8)
        pos += seq_len
    got_losses, got_params = reference.min_char_rnn_train(data, params, seq_len=seq_len, lr=lr,
                                                          steps=3)
    np.testing.assert_allclose(got_losses, losses, rtol=1e-12, atol=0)
    for k in p:
        np.testing.assert_allclose(got_params[k], p[k], rtol=1e-12, atol=1e-15)


def test_min_char_rnn_train_learns_and_leaves_params_alone():
    data, V = _ids("hello world! " * 30)
    params = reference.min_char_rnn_init(V, 32, seed=0)
    params["bhh"] = np.zeros_like(params["bh"])  # the optional second bias trains too
    before = {k: v.copy() for k, v in params.items()}
    steps = 150
    losses, new_params = reference.min_char_rnn_train(data, params, seq_len=12, lr=0.1, steps=steps)
    assert len(losses) == steps and all(np.isfinite(losses))
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:10])
    assert losses[0] == pytest.approx(12 * np.log(V), rel=0.05)  # near-uniform predictions at init
    for k in params:
        assert np.array_equal(params[k], before[k]), f"train() modified its input {k}"
        assert new_params[k] is not params[k]
        assert not np.array_equal(new_params[k], before[k]), f"{k} did not train"
