"""bench/stock.py, the side-by-side of charrnn's training step and stock PyTorch's, on a tiny model:
both train, and the profile charges each part of a step where it belongs."""
import sys
from pathlib import Path

import pytest

bench = Path(__file__).resolve().parents[1] / "bench"
if not (bench / "stock.py").is_file():
    pytest.skip("bench/ is not beside the tests (an installed package)", allow_module_level=True)
sys.path.insert(0, str(bench))
import stock  # noqa: E402

from charrnn_ext.train import Trainer  # noqa: E402


def test_side_by_side_trains_both_and_profiles_every_part(tiny_config):
    trainer = Trainer(tiny_config(dropout=0.25, num_layers=2, hidden_size=32, seq_len=20))
    result = stock.compare(trainer, seconds=0.2, profile_steps_each=2)
    assert result["blocks"] >= 1 and result["ratio"] > 0
    assert all(rate > 0 for rate in result["chars_per_s"].values())
    for name, parts in result["profile_ms_per_step"].items():
        assert set(parts) == set(stock.PARTS)
        for part in ("op forward", "op backward", "dropout", "head and loss", "optimizer"):
            assert parts[part] > 0, (name, part)
    assert "stock PyTorch" in stock.tables(result)
    import torch
    assert torch.nn.utils.clip_grad_norm_.__name__ == "clip_grad_norm_"  # the profiling wrapper is gone
