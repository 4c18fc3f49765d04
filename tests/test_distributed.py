"""Data-parallel training under torchrun: 2 CPU processes, gloo, loopback.

Each launch is `python -m torch.distributed.run --nproc_per_node=2 -m charrnn_ext train ...` as a
subprocess with a timeout, compared with a single-process Trainer run in this process on the
same config (the CLI flags are derived from the TrainConfig, so the two cannot drift).
"""

import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import charrnn_ext
from charrnn_ext.checkpoint import load_checkpoint
from charrnn_ext.cli import flag_name
from charrnn_ext.data import Batches
from charrnn_ext.errors import TrainingError
from charrnn_ext.train import TrainConfig, Trainer

# Where the charrnn_ext under test was imported from (a checkout, or site-packages for an
# installed wheel): the ranks import the same one, whatever their working directory holds.
IMPORTED_FROM = Path(charrnn_ext.__file__).resolve().parents[1]

needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


def cli_flags(cfg: TrainConfig) -> list[str]:
    """`charrnn train` flags that give cfg (every field that differs from the defaults)."""
    default, flags = TrainConfig(), []
    for f in fields(TrainConfig):
        value = getattr(cfg, f.name)
        if value == getattr(default, f.name):
            continue
        if isinstance(value, bool):
            flags.append(flag_name(f.name) if value else flag_name("no_" + f.name))
        else:
            flags += [flag_name(f.name), "0" if f.name == "time_limit" and value is None else str(value)]
    return flags


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], env: dict | None = None, timeout: float = 90,
             program=("-m", "charrnn_ext", "train")) -> subprocess.CompletedProcess:
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "CHARRNN_FAIL_RANK")
    e = {k: v for k, v in os.environ.items() if k not in launcher}
    e.update(OMP_NUM_THREADS="1",
             PYTHONPATH=os.pathsep.join(filter(None, [str(IMPORTED_FROM), e.get("PYTHONPATH")])))
    if sys.platform.startswith("linux"):
        e.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback, whatever the host name resolves to
    e.update(env or {})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), *program, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=e, cwd=tempfile.gettempdir(),
                          timeout=timeout)


def assert_params_close(state: dict, model: torch.nn.Module) -> None:
    want = model.state_dict()
    assert state.keys() == want.keys()
    for k, v in want.items():
        torch.testing.assert_close(state[k], v, rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")


# ------------------------------------------------------------------ in-process parts

def test_shards_are_whole_contiguous_columns():
    ids = torch.arange(1000)
    full = Batches(ids, 6, 10)
    parts = [full.shard(r, 3) for r in range(3)]
    assert [p.batch_size for p in parts] == [2, 2, 2] and all(len(p) == len(full) for p in parts)
    for k in (0, len(full) - 1):
        x, y = full.window(k)
        assert torch.equal(torch.cat([p.window(k)[0] for p in parts]), x)
        assert torch.equal(torch.cat([p.window(k)[1] for p in parts]), y)
    assert [full.shard(r, 4).batch_size for r in range(4)] == [1, 2, 1, 2]  # evaluation: uneven is fine
    assert full.shard(0, 1) is full


def test_batch_size_must_split_evenly(tiny_config, monkeypatch):
    for k, v in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(TrainingError, match="--batch-size 5 does not split evenly over 2 processes"):
        Trainer(tiny_config(batch_size=5))  # refused before any process group is started


# ------------------------------------------------------------------ 2 processes (torchrun)

@needs_gloo
def test_two_ranks_equal_one_process_and_resume_in_one(tiny_config, tmp_path):
    """Adam, mean loss, global-norm clipping (active), rnn: 3 steps on 2 ranks give one process's
    parameters, validation loss and carried state; the checkpoint resumes in one process."""
    kw = dict(optimizer="adam", lr=1e-2, grad_clip=0.5, eval_every=2, log_every=1)
    one = Trainer(tiny_config(max_steps=3, out=str(tmp_path / "one"), **kw))
    one.run()
    two_out = tmp_path / "two"
    r = torchrun(cli_flags(tiny_config(max_steps=3, out=str(two_out), **kw)))
    assert r.returncode == 0, r.stderr[-4000:]

    ck = load_checkpoint(two_out / "last.pt")
    assert (ck["step"], ck["window"], ck["world_size"], len(ck["rng_ranks"])) == (3, 3, 2, 2)
    assert_params_close(ck["model"], one.model)
    torch.testing.assert_close(ck["hidden"][0], one.hidden, rtol=1e-5, atol=1e-6)  # gathered, in column order
    assert math.isclose(ck["val_loss"], one.val_loss, rel_tol=1e-5)                # all-reduced over ranks
    # rank 0 alone reports and writes
    assert r.stderr.count("x 2 processes (DDP, 2 columns each)") == 1
    assert r.stderr.count("stopped (max_steps) at step 3") == 1
    lines = [json.loads(line) for line in (two_out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "train_loss" in x and "final" not in x] == [1, 2, 3]
    assert sum("final" in x for x in lines) == 1
    assert {p.name for p in two_out.iterdir()} == {"last.pt", "best.pt", "metrics.jsonl"}

    whole = Trainer(tiny_config(max_steps=6, out=str(tmp_path / "whole"), **kw))
    whole.run()
    resumed = Trainer(None, resume=two_out / "last.pt", overrides={"max_steps": 6, "out": str(tmp_path / "res")})
    assert (resumed.world, resumed.step, resumed.train_batches.batch_size) == (1, 3, 4)
    resumed.run()
    assert_params_close(resumed.model.state_dict(), whole.model)


@needs_gloo
def test_one_process_checkpoint_resumes_on_two_ranks(tiny_config, tmp_path):
    """SGD, summed loss (scaled by the world size), elementwise clipping, a 2-layer lstm (tuple
    state): a 1-process checkpoint continued on 2 ranks ends where one process ends."""
    kw = dict(cell="lstm", num_layers=2, optimizer="sgd", lr=0.01, loss_reduction="sum", clip_mode="value",
              grad_clip=0.05, eval_every=0)
    Trainer(tiny_config(max_steps=3, out=str(tmp_path / "one"), **kw)).run()
    whole = Trainer(tiny_config(max_steps=6, out=str(tmp_path / "whole"), **kw))
    whole.run()
    r = torchrun(["--resume", str(tmp_path / "one" / "last.pt"), "--max-steps", "6",
                  "--out", str(tmp_path / "two"), "--no-progress"])
    assert r.returncode == 0, r.stderr[-4000:]
    assert "resuming" in r.stderr
    ck = load_checkpoint(tmp_path / "two" / "last.pt")
    assert ck["step"] == 6 and ck["world_size"] == 2
    assert_params_close(ck["model"], whole.model)
    for got, want in zip(ck["hidden"], whole.hidden):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert math.isclose(ck["train_loss"], whole.train_loss, rel_tol=1e-5)


@needs_gloo
def test_a_failing_rank_stops_the_other_and_the_run_resumes(tiny_config, tmp_path):
    """Rank 1 raises after step 5 (the CHARRNN_FAIL_RANK test hook); rank 0, waiting for it in a
    collective, must not hang: the launch ends, non-zero, with rank 1's message. The checkpoint of
    step 4 then resumes on 2 ranks exactly as an unbroken 2-rank run, dropout included."""
    kw = dict(dropout=0.3, eval_every=2)
    run = tmp_path / "run"
    t0 = time.monotonic()
    r = torchrun(cli_flags(tiny_config(max_steps=None, time_limit=120.0, out=str(run), **kw)),
                 env={"CHARRNN_FAIL_RANK": "1", "CHARRNN_FAIL_STEP": "5"}, timeout=90,
                 program=(str(Path(__file__).with_name("failing_rank.py")),))
    elapsed = time.monotonic() - t0
    assert r.returncode != 0
    assert "charrnn: error (rank 1 of 2): rank 1 fails at step 5 (CHARRNN_FAIL_RANK test hook)" in r.stderr
    assert "stopped (" not in r.stderr  # rank 0 did not train on alone
    assert elapsed < 60, elapsed
    assert load_checkpoint(run / "last.pt")["step"] == 4

    r = torchrun(["--resume", str(run), "--max-steps", "6", "--no-progress"])
    assert r.returncode == 0, r.stderr[-4000:]
    r = torchrun(cli_flags(tiny_config(max_steps=6, out=str(tmp_path / "whole"), **kw)))
    assert r.returncode == 0, r.stderr[-4000:]
    got, want = load_checkpoint(run / "last.pt"), load_checkpoint(tmp_path / "whole" / "last.pt")
    assert got["step"] == want["step"] == 6
    for k, v in want["model"].items():
        assert torch.equal(got["model"][k], v), k
    assert torch.equal(got["hidden"][0], want["hidden"][0])


def test_a_failed_collective_is_a_lost_peer_and_nothing_else_is():
    from charrnn_ext.distributed import ProcessGroup, SingleProcess
    from charrnn_ext.errors import CharRNNError, PeerLostError
    group = object.__new__(ProcessGroup)  # its communicating() needs no live group
    with pytest.raises(PeerLostError, match=r"lost contact .*\(Connection closed by peer \[127.0.0.1\]:1234\); another") as e:
        with group.communicating():
            raise RuntimeError("Connection closed by peer [127.0.0.1]:1234\nmore detail")
    assert isinstance(e.value.__cause__, RuntimeError)  # the original stays attached
    with pytest.raises(CharRNNError):  # a user's error inside is still the user's error
        with group.communicating():
            raise CharRNNError("bad setting")
    with pytest.raises(RuntimeError, match="boom") as e:  # one process has no peers to lose
        with SingleProcess(torch.device("cpu")).communicating():
            raise RuntimeError("boom")
    assert not isinstance(e.value, PeerLostError)
