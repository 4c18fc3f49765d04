import json
import math
import os
import signal

import numpy as np
import pytest
import torch

from charrnn_ext import reference
from charrnn_ext.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from charrnn_ext.errors import TrainingError
from charrnn_ext.train import TrainConfig, Trainer


def params_of(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def assert_same_params(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------ the seed's model

def test_matches_min_char_rnn_reference(tmp_path):
    """One-hot input, one tanh layer, batch 1, seq_len 25, Adagrad 0.1, elementwise clip 5,
    summed window loss, float64: the trainer is min-char-rnn, step for step."""
    text = ("so shaken as we are, so wan with care! " * 3)[:110]  # 4 windows an epoch, as the seed walks it
    path = tmp_path / "t.txt"
    path.write_text(text)
    H, steps = 20, 10                                           # 10 steps: two epoch wraps
    cfg = TrainConfig(data=str(path), val_frac=0.0, cell="rnn", embedding_size=0, hidden_size=H,
                      num_layers=1, dropout=0.0, batch_size=1, seq_len=25, optimizer="adagrad", lr=0.1,
                      lr_decay=1.0, clip_mode="value", grad_clip=5.0, loss_reduction="sum", dtype="float64",
                      max_steps=steps, time_limit=None, eval_every=0, plot=False, progress=False,
                      out=str(tmp_path / "run"), device="cpu")
    tr = Trainer(cfg)
    ids = tr.vocab.encode(text).tolist()
    p0 = reference.min_char_rnn_init(len(tr.vocab), H, seed=3)
    p0["bhh"] = np.zeros((H, 1))
    m = tr.model
    with torch.no_grad():
        m.rnn.weight_ih_l0.copy_(torch.from_numpy(p0["Wxh"]))
        m.rnn.weight_hh_l0.copy_(torch.from_numpy(p0["Whh"]))
        m.rnn.bias_ih_l0.copy_(torch.from_numpy(p0["bh"][:, 0]))
        m.rnn.bias_hh_l0.copy_(torch.from_numpy(p0["bhh"][:, 0]))
        m.head.weight.copy_(torch.from_numpy(p0["Why"]))
        m.head.bias.copy_(torch.from_numpy(p0["by"][:, 0]))
    losses = []
    tr.run(callback=lambda t, loss: losses.append(loss))
    ref_losses, ref = reference.min_char_rnn_train(ids, {k: v.copy() for k, v in p0.items()},
                                                   seq_len=25, lr=0.1, steps=steps)
    np.testing.assert_allclose(losses, ref_losses, rtol=0, atol=1e-8)
    got = {"Wxh": m.rnn.weight_ih_l0, "Whh": m.rnn.weight_hh_l0, "bh": m.rnn.bias_ih_l0[:, None],
           "bhh": m.rnn.bias_hh_l0[:, None], "Why": m.head.weight, "by": m.head.bias[:, None]}
    for k, v in got.items():
        np.testing.assert_allclose(v.detach().numpy(), ref[k], rtol=0, atol=1e-8, err_msg=k)


# ------------------------------------------------------------------ state carry and reset

def test_state_carried_across_windows_and_reset_each_epoch(tiny_config):
    tr = Trainer(tiny_config(batch_size=16, seq_len=20, max_steps=9, eval_every=0))
    per_epoch = len(tr.train_batches)
    assert per_epoch == 4
    seen = []  # (state in, state out) of every forward call in training
    forward = tr.model.forward

    def spy(idx, state=None):
        logits, out = forward(idx, state)
        if tr.model.training:
            seen.append((state, out))
        return logits, out
    tr.model.forward = spy
    tr.run()
    assert len(seen) == 9
    for k in range(1, 9):
        state_in, prev_out = seen[k][0], seen[k - 1][1]
        if k % per_epoch == 0:
            assert state_in is None                       # a new epoch starts from zeros
        else:
            assert torch.equal(state_in, prev_out.detach())  # carried...
            assert not state_in.requires_grad              # ...but cut from the graph


def test_evaluation_carries_state_like_one_long_pass(tiny_config):
    tr = Trainer(tiny_config())
    b = tr.val_batches
    got = tr.evaluate()
    tr.model.eval()
    with torch.no_grad():
        logits, _ = tr.model(b.x)  # each row as one uninterrupted sequence
        want = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), b.y.reshape(-1)).item()
    assert math.isclose(got, want, rel_tol=1e-5)


# ------------------------------------------------------------------ resume and interrupt

@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_stopped_and_resumed_equals_uninterrupted(tiny_config, tmp_path, cell):
    kw = dict(cell=cell, batch_size=16, seq_len=20, dropout=0.3, num_layers=2, eval_every=3,
              lr_decay=0.9)  # dropout needs the RNG state, 4 windows/epoch crosses epochs and decays
    whole = Trainer(tiny_config(max_steps=10, out=str(tmp_path / "a"), **kw))
    whole.run()
    first = Trainer(tiny_config(max_steps=5, out=str(tmp_path / "b"), **kw))
    first.run()
    second = Trainer(None, resume=tmp_path / "b" / "last.pt", overrides={"max_steps": 10})
    assert (second.step, second.epoch, second.window) == (5, 1, 1)
    second.run()
    assert_same_params(params_of(whole), params_of(second))
    assert second.optimizer.param_groups[0]["lr"] == whole.optimizer.param_groups[0]["lr"]


def test_ctrl_c_writes_a_checkpoint_that_resumes_exactly(tiny_config, tmp_path):
    kw = dict(batch_size=16, seq_len=20, dropout=0.2, eval_every=0)
    whole = Trainer(tiny_config(max_steps=7, out=str(tmp_path / "a"), **kw))
    whole.run()

    def interrupt(trainer, loss):
        if trainer.step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the real signal, through the real handler
    first = Trainer(tiny_config(max_steps=7, out=str(tmp_path / "b"), **kw))
    handler = signal.getsignal(signal.SIGINT)
    summary = first.run(callback=interrupt)
    assert summary["stop"] == "interrupted" and summary["step"] == 3
    assert signal.getsignal(signal.SIGINT) is handler  # restored after the run
    second = Trainer(None, resume=tmp_path / "b" / "last.pt")
    assert second.step == 3
    second.run()
    assert_same_params(params_of(whole), params_of(second))


def test_resume_refuses_model_changes_and_other_data(tiny_config, tmp_path, small_text):
    tr = Trainer(tiny_config(max_steps=2))
    tr.run()
    ck = tmp_path / "run" / "last.pt"
    with pytest.raises(TrainingError, match="hidden_size"):
        Trainer(None, resume=ck, overrides={"hidden_size": 32})
    other = tmp_path / "other.txt"
    other.write_text(small_text.read_text() + "more")
    with pytest.raises(TrainingError, match="same data"):
        Trainer(None, resume=ck, overrides={"data": str(other)})


# ------------------------------------------------------------------ checkpoints and outputs

def test_checkpoint_is_plain_cpu_loadable_and_complete(tiny_config, tmp_path):
    tr = Trainer(tiny_config(max_steps=6, plot=True))
    summary = tr.run()
    run = tmp_path / "run"
    ck = torch.load(run / "last.pt", map_location="cpu", weights_only=True)  # no code runs on load
    for key in ("model", "optimizer", "scheduler", "step", "epoch", "window", "hidden", "rng", "vocab",
                "config", "model_config"):
        assert key in ck, key
    assert isinstance(ck["config"], dict) and isinstance(ck["vocab"], list) and "🙂" in ck["vocab"]
    assert all(t.device.type == "cpu" for t in ck["model"].values())
    assert ck["step"] == 6 and (run / "best.pt").is_file() and (run / "loss.png").stat().st_size > 0
    model, vocab = model_from_checkpoint(load_checkpoint(run / "best.pt"))
    assert vocab.chars == tr.vocab.chars
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in r for r in lines) and any("train_loss" in r for r in lines)
    assert lines[-1]["final"] and lines[-1]["step"] == 6 and summary["val_loss"] == lines[-1]["val_loss"]


def test_checkpoint_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint({"format": 1, "x": torch.ones(3)}, path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"format": 1, "x": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(3))  # old one intact
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temporary left behind


def test_loading_garbage_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot load"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_cpu_only_machine_loads_and_cuda_request_fails_clearly(tiny_config, tmp_path, monkeypatch):
    Trainer(tiny_config(max_steps=2)).run()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model, _ = model_from_checkpoint(load_checkpoint(tmp_path / "run" / "last.pt"))
    assert next(model.parameters()).device.type == "cpu"
    assert Trainer(tiny_config(device="auto")).device.type == "cpu"
    with pytest.raises(TrainingError, match="CUDA is not available"):
        Trainer(tiny_config(device="cuda"))


# ------------------------------------------------------------------ non-finite guard

def test_non_finite_loss_skips_the_step(tiny_config):
    tr = Trainer(tiny_config(max_steps=5, eval_every=0))
    forward, calls, snaps = tr.model.forward, [0], {}

    def flaky(idx, state=None):
        logits, out = forward(idx, state)
        if tr.model.training:
            calls[0] += 1
            if calls[0] == 3:
                snaps["before"] = params_of(tr)
                return logits * float("nan"), out
        return logits, out
    tr.model.forward = flaky

    def after(trainer, loss):
        if trainer.step == 3:
            assert math.isnan(loss)
            assert_same_params(snaps["before"], params_of(trainer))
    summary = tr.run(callback=after)
    assert summary["skipped_steps"] == 1 and summary["step"] == 5
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())


def test_too_many_non_finite_steps_stop_with_last_good_checkpoint(tiny_config, tmp_path):
    tr = Trainer(tiny_config(max_steps=20, eval_every=2, max_nonfinite=3))
    forward = tr.model.forward

    def poisoned(idx, state=None):
        logits, out = forward(idx, state)
        return (logits * float("inf") if tr.step >= 4 and tr.model.training else logits), out
    tr.model.forward = poisoned
    with pytest.raises(TrainingError, match="not finite for 3 steps in a row.*last good checkpoint"):
        tr.run()
    ck = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ck["step"] == 4 and all(torch.isfinite(v).all() for v in ck["model"].values())


# ------------------------------------------------------------------ optimisers and limits

@pytest.mark.parametrize("opt", ["adam", "adagrad", "rmsprop", "sgd"])
def test_optimizers_reduce_loss(tiny_config, opt):
    lr = {"adam": 1e-2, "adagrad": 0.1, "rmsprop": 3e-3, "sgd": 0.5}[opt]
    tr = Trainer(tiny_config(optimizer=opt, lr=lr, max_steps=12, eval_every=0))
    before = tr.evaluate()
    tr.run()
    assert tr.evaluate() < before


def test_lr_decays_per_epoch_and_limits_stop(tiny_config):
    tr = Trainer(tiny_config(batch_size=16, seq_len=20, lr=1e-2, lr_decay=0.5, max_steps=None, max_epochs=2,
                             eval_every=0))
    s = tr.run()
    assert s["stop"] == "max_epochs" and s["step"] == 8
    assert math.isclose(tr.optimizer.param_groups[0]["lr"], 1e-2 * 0.5 ** 2)
    s = Trainer(tiny_config(max_steps=None, time_limit=0.0)).run()
    assert s["stop"] == "time_limit" and s["step"] == 0


def test_bad_config_values_are_rejected():
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(ValueError, match="clip_mode"):
        TrainConfig(clip_mode="both")


# ------------------------------------------------------------------ progress

class _Terminal:
    """A stderr that says it is a terminal, keeping what is written to it."""

    def __init__(self):
        self.parts = []

    def write(self, text):
        self.parts.append(text)
        return len(text)

    def flush(self):
        pass

    def isatty(self):
        return True


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere(tiny_config, monkeypatch, capsys):
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    Trainer(tiny_config(progress=True, max_steps=4)).run()
    shown = "".join(terminal.parts)
    assert "\r" in shown and "step" in shown and "| step " not in shown  # tqdm's frames, no lines
    monkeypatch.undo()

    Trainer(tiny_config(progress=True, max_steps=4, out=str(tiny_config().out) + "2")).run()
    err = capsys.readouterr().err  # captured: not a terminal
    assert "\r" not in err
    lines = err.splitlines()
    assert [line.split(" | ")[1] for line in lines] == ["step 2/4", "step 4/4", "step 4/4"]
    assert "eval: val " in lines[-1] and "saved last.pt, best.pt" in lines[-1]

    Trainer(tiny_config(progress=False, max_steps=4, out=str(tiny_config().out) + "3")).run()
    assert capsys.readouterr().err == ""
