"""The package at its boundaries: its metadata, and the torch it was built against."""
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

import charrnn_ext


def test_metadata_matches_the_package():
    dist = metadata.distribution("charrnn_ext")
    assert dist.version == charrnn_ext.__version__
    assert dist.metadata["License-Expression"] == "MIT"
    torch_req = [r for r in dist.requires if r.startswith("torch")]
    assert torch_req and "<" in torch_req[0] and ">=" in torch_req[0], dist.requires
    scripts = {e.name: e.value for e in dist.entry_points if e.group == "console_scripts"}
    assert scripts == {"charrnn": "charrnn_ext.cli:program"}


def test_build_records_the_torch_it_was_compiled_against():
    from charrnn_ext import _build_config
    assert _build_config.TORCH_VERSION == torch.__version__


def test_another_torch_is_refused_before_the_extension_loads(tmp_path):
    """A _C built for another torch fails to load with an undefined symbol; the package names
    both versions and how to rebuild instead, and never reaches _C."""
    code = ("import sys, torch\n"
            "torch.__version__ = '2.99.0'  # as if another torch were installed\n"
            "try:\n"
            "    import charrnn_ext\n"
            "except ImportError as e:\n"
            "    print(e)\n"
            "print('_C loaded:', 'charrnn_ext._C' in sys.modules)\n")
    imported_from = str(Path(charrnn_ext.__file__).resolve().parents[1])  # a checkout or site-packages
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": imported_from}, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"built against torch {torch.__version__}, but torch 2.99.0 is installed" in r.stdout
    assert "pip install --no-build-isolation" in r.stdout
    assert r.stdout.rstrip().endswith("_C loaded: False")
