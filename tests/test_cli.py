import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from charrnn_ext import cli
from charrnn_ext.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# Where the charrnn_ext under test was imported from: the checkout, or site-packages for an
# installed wheel. Child pythons import the same one, whatever their working directory holds.
IMPORTED_FROM = Path(cli.__file__).resolve().parents[1]
TINY = ["--hidden-size", "16", "--embedding-size", "8", "--batch-size", "4", "--seq-len", "10",
        "--eval-every", "3", "--log-every", "2", "--no-progress", "--seed", "0"]


def subprocess_env(drop=(), **set_vars) -> dict:
    """This environment for a child python, importing the charrnn_ext under test."""
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(IMPORTED_FROM), env.get("PYTHONPATH")]))
    return {**env, **set_vars}


def test_train_sample_info_end_to_end(small_text, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--data", str(small_text), "--out", str(out), "--max-steps", "5", *TINY]) == 0
    err = capsys.readouterr().err
    assert "vocab 36" in err and "stopped (max_steps) at step 5" in err
    assert {"last.pt", "best.pt", "metrics.jsonl", "loss.png"} <= {p.name for p in out.iterdir()}

    assert cli.main(["sample", str(out), "--prime", "Café", "--length", "30", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("Café") and len(first) == len("Café") + 30 + 1
    assert cli.main(["sample", str(out / "last.pt"), "--prime", "Café", "--length", "30", "--seed", "1"]) == 0
    assert capsys.readouterr().out == first  # best.pt == last.pt here, and the seed reproduces

    assert cli.main(["sample", str(out), "--length", "10", "--num-samples", "3", "--temperature", "0.5",
                     "--top-k", "5"]) == 0
    assert capsys.readouterr().out.count("----- sample") == 3

    assert cli.main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["step"] == 5 and info["config"]["hidden_size"] == 16 and "🙂" in info["vocab"]
    assert cli.main(["info", str(out / "last.pt")]) == 0
    text = capsys.readouterr().out
    assert "step         5" in text and "hidden_size" in text

    # --resume without a value continues --out's last.pt
    assert cli.main(["train", "--resume", "--out", str(out), "--max-steps", "7", "--no-progress"]) == 0
    assert load_checkpoint(out / "last.pt")["step"] == 7
    assert "resuming" in capsys.readouterr().err


def test_clear_errors(small_text, tmp_path, capsys):
    assert cli.main(["train", "--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "r")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli.main(["train", "--data", str(small_text), "--batch-size", "500", "--seq-len", "100",
                     "--out", str(tmp_path / "r")]) == 2
    assert "too few" in capsys.readouterr().err
    assert cli.main(["sample", str(tmp_path / "nothing")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--cell", "transformer"])
    assert "invalid choice" in capsys.readouterr().err

    out = tmp_path / "run"
    assert cli.main(["train", "--data", str(small_text), "--out", str(out), "--max-steps", "1", *TINY]) == 0
    assert cli.main(["sample", str(out), "--prime", "QXZ"]) == 2
    assert "'Q', 'X', 'Z'" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(out), "--hidden-size", "32"]) == 2
    assert "cannot change hidden_size" in capsys.readouterr().err


def test_out_that_is_a_file_is_a_one_line_error(small_text, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("not a run directory")
    for out in (taken, taken / "run"):
        assert cli.main(["train", "--data", str(small_text), "--out", str(out), "--max-steps", "1", *TINY]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"charrnn: error: --out {out} ") and "existing file" in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert taken.read_text() == "not a run directory"


def test_progress_without_a_terminal_is_one_plain_line_per_metrics_line(small_text, tmp_path, capsys):
    """With stderr not a terminal (here captured; a log file or CI alike) progress is plain
    lines, no bar's carriage-return frames: one per metrics line, one per evaluation."""
    out = tmp_path / "run"
    assert cli.main(["train", "--data", str(small_text), "--out", str(out), "--max-steps", "7", *TINY,
                     "--progress"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r["step"] for r in records if "train_loss" in r and not r.get("final")]
    evaluated = [r["step"] for r in records if "val_loss" in r and not r.get("final")]
    lines = [line for line in err.splitlines() if line.startswith("train rnn | step ")]
    progress = [line for line in lines if "| loss " in line]
    evals = [line for line in lines if "| eval: " in line]
    assert len(progress) + len(evals) == len(lines)
    assert [int(line.split()[4].split("/")[0]) for line in progress] == logged == [2, 3, 4, 6, 7]
    assert [int(line.split()[4].split("/")[0]) for line in evals] == evaluated == [3, 6, 7]
    first = progress[0]
    for part in ("step 2/7", "epoch 0", "loss ", "val -", "lr 0.002", "chars/s", " s"):
        assert part in first, first
    assert "val -" not in progress[2] and "saved last.pt" in evals[0]

    # --no-progress silences both the bar and the lines
    assert cli.main(["train", "--data", str(small_text), "--out", str(tmp_path / "quiet"), "--max-steps", "4",
                     *TINY]) == 0
    err = capsys.readouterr().err
    assert "| step " not in err and "\r" not in err


def test_bench_finds_the_checkout_or_says_why(monkeypatch, tmp_path, capsys):
    assert cli.main(["bench", "--help"]) == 0
    assert "bench_kernels.py" in capsys.readouterr().out
    monkeypatch.setattr(cli, "__file__", str(tmp_path / "site-packages" / "charrnn_ext" / "cli.py"))
    assert cli.main(["bench", "--quick"]) == 2
    assert "source checkout" in capsys.readouterr().err

    calls = []
    monkeypatch.setattr(cli, "__file__", str(ROOT / "charrnn_ext" / "cli.py"))
    monkeypatch.setattr(cli.subprocess, "call", lambda argv: calls.append(argv) or 0)
    if (ROOT / "bench" / "bench_kernels.py").is_file():
        assert cli.main(["bench", "--quick", "--out", "x.json"]) == 0
        assert calls[-1][1:] == [str(ROOT / "bench" / "bench_kernels.py"), "--quick", "--out", "x.json"]
    if (ROOT / "bench" / "bench_train.py").is_file():
        assert cli.main(["bench", "--train", "--time-limit", "5"]) == 0
        assert calls[-1][1:] == [str(ROOT / "bench" / "bench_train.py"), "--time-limit", "5"]


def test_a_torchrun_rank_leaves_without_finalizing(tiny_config, tmp_path):
    """Under torchrun (WORLD_SIZE > 1) the program skips interpreter finalization (where gloo's
    worker threads can abort the process), yet its exit code and buffered output still arrive."""
    from charrnn_ext.train import Trainer
    Trainer(tiny_config(max_steps=1, eval_every=0)).run()
    ckpt = tmp_path / "run" / "last.pt"
    code = ("import atexit, sys; atexit.register(lambda: print('finalized')); "
            "from charrnn_ext.cli import program; sys.argv[1:] = ['info', '--json', sys.argv[1]]; program()")

    def run_program(path, world):
        env = subprocess_env(drop=("WORLD_SIZE", "PYTHONUNBUFFERED"), **world)
        return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=120)

    alone, rank = run_program(ckpt, {}), run_program(ckpt, {"WORLD_SIZE": "2"})
    assert alone.returncode == 0 and alone.stdout.rstrip().endswith("finalized"), alone.stderr
    assert rank.returncode == 0 and "finalized" not in rank.stdout, rank.stderr
    assert json.loads(rank.stdout)["step"] == 1  # stdout is a pipe (block-buffered): flushed before leaving
    missing = run_program(tmp_path / "none.pt", {"WORLD_SIZE": "2"})
    assert missing.returncode == 2 and "none.pt" in missing.stderr and "finalized" not in missing.stdout


def test_python_dash_m_is_the_cli(tmp_path):
    r = subprocess.run([sys.executable, "-m", "charrnn_ext", "train", "--help"], capture_output=True, text=True,
                       env=subprocess_env(), cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    for flag in ("--data", "--corpus", "--cell", "--time-limit", "--resume", "--threads", "(default: rnn)"):
        assert flag in r.stdout


def test_every_train_config_field_has_a_flag_with_its_default_and_choices():
    from dataclasses import fields

    from charrnn_ext.train import TrainConfig
    train = next(a for a in cli.build_parser("train")._subparsers._group_actions[0].choices.items()
                 if a[0] == "train")[1]
    actions = {a.dest: a for a in train._actions}
    for f in fields(TrainConfig):
        assert f.name in actions, f"TrainConfig.{f.name} has no flag"
        assert f.metadata["help"] in actions[f.name].help
        assert actions[f.name].choices == f.metadata["choices"] or f.metadata["choices"] is None
    # a flag left out keeps the field's default; a given one is parsed with the field's type
    args = cli.build_parser("train").parse_args(["train", "--hidden-size", "7", "--no-plot"])
    assert vars(args)["hidden_size"] == 7 and vars(args)["plot"] is False and "lr" not in vars(args)


def test_sample_and_info_do_not_load_the_trainer(tiny_config, tmp_path):
    from charrnn_ext.train import Trainer
    Trainer(tiny_config(max_steps=1, eval_every=0)).run()
    code = ("import sys; from charrnn_ext import cli; "
            "assert cli.main(['info', sys.argv[1]]) == 0; "
            "assert cli.main(['sample', sys.argv[1], '--length', '5', '--seed', '0']) == 0; "
            "print(sorted(m for m in sys.modules if m.startswith('charrnn_ext')))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True,
                       env=subprocess_env(), cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    loaded = r.stdout.strip().splitlines()[-1]
    assert "charrnn_ext.checkpoint" in loaded and "charrnn_ext.train" not in loaded


def test_a_bug_keeps_its_traceback_and_a_lost_peer_is_one_line(monkeypatch, tmp_path, capsys):
    from charrnn_ext.errors import PeerLostError

    def buggy(args):
        raise ValueError("an internal slip, not the user's doing")
    monkeypatch.setattr(cli, "cmd_info", buggy)
    with pytest.raises(ValueError, match="internal slip"):  # not turned into `charrnn: error`
        cli.main(["info", str(tmp_path)])

    def lost(args):
        raise PeerLostError("lost contact with the other training processes (connection closed)")
    monkeypatch.setattr(cli, "cmd_info", lost)
    assert cli.main(["info", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip().endswith("lost contact with the other training processes "
                                                    "(connection closed)")
