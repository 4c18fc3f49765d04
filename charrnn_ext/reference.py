"""Independent numpy references (float64) for everything the package computes.

Two oracles live here and depend on nothing but numpy:

* the layer-level tanh RNN of docs/design.md (`rnn_tanh_forward` / `rnn_tanh_backward`),
  written as the plainest possible per-step loops, against which the fused op is tested, and
  the mask of its fused dropout (`dropout_mask`);
* karpathy's min-char-rnn (one-hot input, one tanh layer, softmax, window-summed
  cross-entropy, BPTT, elementwise clip to [-5, 5], Adagrad), against which the trainer
  is tested.
"""
import numpy as np


def rnn_tanh_forward(x, h0, w_ih, w_hh, b_ih=None, b_hh=None):
    """x [T, B, E], h0 [B, H], w_ih [H, E], w_hh [H, H], b_* [H] -> (output [T, B, H], h_n [B, H])."""
    x = np.asarray(x, dtype=np.float64)
    h = np.asarray(h0, dtype=np.float64)
    T = x.shape[0]
    bias = np.zeros(w_hh.shape[0])
    if b_ih is not None:
        bias = bias + b_ih
    if b_hh is not None:
        bias = bias + b_hh
    output = np.empty((T,) + h.shape)
    for t in range(T):
        h = np.tanh(x[t] @ w_ih.T + h @ w_hh.T + bias)
        output[t] = h
    return output, h.copy()


def rnn_tanh_backward(grad_output, grad_h_n, x, h0, w_ih, w_hh, output):
    """Gradients of sum(grad_output * output) + sum(grad_h_n * h_n).

    Returns (dx [T, B, E], dh0 [B, H], dw_ih [H, E], dw_hh [H, H], db_ih [H], db_hh [H]).
    """
    T = x.shape[0]
    dx = np.zeros_like(x, dtype=np.float64)
    dw_ih = np.zeros_like(w_ih, dtype=np.float64)
    dw_hh = np.zeros_like(w_hh, dtype=np.float64)
    db = np.zeros(w_hh.shape[0])
    dnext = np.array(grad_h_n, dtype=np.float64)
    for t in reversed(range(T)):
        h_prev = h0 if t == 0 else output[t - 1]
        a = (grad_output[t] + dnext) * (1.0 - output[t] ** 2)
        dw_hh += a.T @ h_prev
        dw_ih += a.T @ x[t]
        db += a.sum(axis=0)
        dx[t] = a @ w_ih
        dnext = a @ w_hh
    return dx, dnext, dw_ih, dw_hh, db, db.copy()


def dropout_mask(seed, p, shape):
    """The fused op's dropout multipliers for a layer's output of `shape` ([T, B, H]): 1 / (1 - p)
    where an element is kept, 0 where dropped (0 everywhere when p = 1). The generator of
    csrc/dropout_mask.h written again in numpy: element e (row-major) has the draw
    SplitMix64(seed)'s e-th output >> 32, and is kept iff draw >= round(p * 2^32)."""
    e = np.arange(1, int(np.prod(shape)) + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as in C
        z = np.uint64(seed % 2**64) + e * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    draw = (z ^ (z >> np.uint64(31))) >> np.uint64(32)
    keep = draw >= np.uint64(int(p * 2**32 + 0.5))  # llround: half away from zero
    return np.where(keep, 1.0 / (1.0 - p) if p < 1 else 0.0, 0.0).reshape(shape)


# ---------------------------------------------------------------- min-char-rnn

def min_char_rnn_init(vocab_size, hidden_size, seed=0):
    """The seed's initialisation: weights randn * 0.01, biases zero (column vectors)."""
    rng = np.random.default_rng(seed)
    return {
        "Wxh": rng.standard_normal((hidden_size, vocab_size)) * 0.01,
        "Whh": rng.standard_normal((hidden_size, hidden_size)) * 0.01,
        "Why": rng.standard_normal((vocab_size, hidden_size)) * 0.01,
        "bh": np.zeros((hidden_size, 1)),
        "by": np.zeros((vocab_size, 1)),
    }


def min_char_rnn_loss(inputs, targets, hprev, params):
    """min-char-rnn's lossFun. inputs/targets: lists of ids; hprev [H, 1].

    An optional params["bhh"] [H, 1] is a second hidden bias added like bh (nn.RNN keeps
    b_ih and b_hh apart); its gradient equals dbh. Returns (loss, grads, h_last) where
    grads maps "d" + name to an array clipped elementwise to [-5, 5].
    """
    Wxh, Whh, Why, bh, by = (params[k] for k in ("Wxh", "Whh", "Why", "bh", "by"))
    bias = bh + params["bhh"] if "bhh" in params else bh
    V = Wxh.shape[1]
    xs, hs, ps = {}, {-1: np.copy(hprev)}, {}
    loss = 0.0
    for t in range(len(inputs)):
        xs[t] = np.zeros((V, 1))
        xs[t][inputs[t]] = 1
        hs[t] = np.tanh(Wxh @ xs[t] + Whh @ hs[t - 1] + bias)
        ys = Why @ hs[t] + by
        ys = ys - ys.max()  # same probabilities, no overflow
        ps[t] = np.exp(ys) / np.sum(np.exp(ys))
        loss += -np.log(ps[t][targets[t], 0])
    dWxh, dWhh, dWhy = np.zeros_like(Wxh), np.zeros_like(Whh), np.zeros_like(Why)
    dbh, dby = np.zeros_like(bh), np.zeros_like(by)
    dhnext = np.zeros_like(hs[0])
    for t in reversed(range(len(inputs))):
        dy = np.copy(ps[t])
        dy[targets[t]] -= 1
        dWhy += dy @ hs[t].T
        dby += dy
        dh = Why.T @ dy + dhnext
        dhraw = (1 - hs[t] * hs[t]) * dh
        dbh += dhraw
        dWxh += dhraw @ xs[t].T
        dWhh += dhraw @ hs[t - 1].T
        dhnext = Whh.T @ dhraw
    grads = {"dWxh": dWxh, "dWhh": dWhh, "dWhy": dWhy, "dbh": dbh, "dby": dby}
    if "bhh" in params:
        grads["dbhh"] = dbh.copy()
    for g in grads.values():
        np.clip(g, -5, 5, out=g)
    return loss, grads, hs[len(inputs) - 1]


def min_char_rnn_train(data_ids, params, seq_len=25, lr=0.1, steps=100):
    """The seed's training loop (without sampling and loss smoothing).

    Returns (per-step window losses, params after `steps` Adagrad updates). `params` is
    not modified.
    """
    params = {k: v.copy() for k, v in params.items()}
    mem = {k: np.zeros_like(v) for k, v in params.items()}
    hidden = params["Whh"].shape[0]
    p, hprev, losses = 0, np.zeros((hidden, 1)), []
    for n in range(steps):
        if p + seq_len + 1 >= len(data_ids) or n == 0:
            hprev, p = np.zeros((hidden, 1)), 0
        inputs = list(data_ids[p:p + seq_len])
        targets = list(data_ids[p + 1:p + seq_len + 1])
        loss, grads, hprev = min_char_rnn_loss(inputs, targets, hprev, params)
        losses.append(loss)
        for k in params:
            d = grads["d" + k]
            mem[k] += d * d
            params[k] += -lr * d / np.sqrt(mem[k] + 1e-8)
        p += seq_len
    return losses, params
