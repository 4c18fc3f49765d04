"""What every benchmark records beside its figures, and where it writes them.

Every benchmark writes one JSON document of the same layout:

    {"benchmark": NAME, "command": the command line, "env": environment(),
     "config": {what was measured: sizes, rounds, ...}, "rows": [one dict per measurement]}

to bench/out/NAME.json (ignored by git), or with --publish to bench/results/NAME.json, the
current result of that benchmark, which bench/report.py turns into the tables and plots of
README.md and docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"  # published: the current result of each benchmark
SCRATCH = HERE / "out"      # everything else


def git_commit() -> str | None:
    """The short hash of the checked-out commit, or None outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                              capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str = "cpu") -> dict:
    """The machine and software a result was measured with."""
    import torch
    env = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "commit": git_commit(),
           "cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "cuda": torch.version.cuda, "gpu": None}
    try:
        import charrnn_ext
        env["build"] = charrnn_ext.build_info()
    except ImportError:
        pass
    if device == "cuda" and torch.cuda.is_available():
        env.update(gpu=torch.cuda.get_device_name(),
                   capability=".".join(map(str, torch.cuda.get_device_capability())),
                   cudnn=torch.backends.cudnn.version())
    return env


def card() -> str:
    """A short name for the GPU in result names: 'h200' for 'NVIDIA H200'."""
    import torch
    name = torch.cuda.get_device_name()
    words = [w for w in name.lower().replace("nvidia", "").split() if any(c.isdigit() for c in w)]
    return words[0] if words else re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--publish", action="store_true",
                        help="write the result to bench/results/ (the current result, which "
                             "bench/report.py publishes) instead of bench/out/")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the result JSON to this file, or as NAME.json into this directory")


def result_path(args: argparse.Namespace, name: str) -> Path:
    path = args.out or (RESULTS if args.publish else SCRATCH)
    if path.is_dir() or path.suffix != ".json":
        path = path / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def save(args: argparse.Namespace, name: str, config: dict, rows: list, device: str = "cpu",
         env: dict | None = None, **extra) -> Path:
    """Writes the result (again: a long run calls this after every row, so a run cut short keeps
    what it measured) and returns its path."""
    path = result_path(args, name)
    doc = {"benchmark": name, "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
           "env": env or environment(device), "config": config, "rows": rows, **extra}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)
    return path
