"""bench/report.py: the pages' generated blocks are what the current results give, and a result
that changes makes --check fail."""
import json
import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
if not (BENCH / "report.py").is_file():
    pytest.skip("bench/ is not beside the tests (an installed package)", allow_module_level=True)
sys.path.insert(0, str(BENCH))
import report  # noqa: E402

ENV = {"date": "2026-01-01T00:00:00", "commit": "abc1234", "cpu": "Test CPU", "cores": 2, "threads": 2,
       "torch": "2.13.0", "cuda": "13.0", "gpu": "NVIDIA X100", "cudnn": 91900}


def cuda_result(cudnn_ms):
    row = {"T": 100, "H": 512, "B": 32, "auto_plan": {"path": "grid"},
           "median_ms": {"fused": 9.0, "fused:grid": 1.0, "cuDNN": cudnn_ms, "cuDNN-tf32": 2.0, "step-loop": 10.0}}
    return {"benchmark": "cuda-kernels-x100", "command": "python bench/bench_kernels.py --device cuda",
            "env": ENV, "config": {}, "rows": [row]}


def test_a_block_is_rewritten_from_the_results_and_nothing_else():
    page = "before\n<!-- report: cuda-table -->\nstale 9.99x\n<!-- /report -->\nafter\n"
    out = report.render(page, {"cuda-kernels-x100": cuda_result(2.5)})
    assert out.startswith("before\n<!-- report: cuda-table -->\n") and out.endswith("<!-- /report -->\nafter\n")
    assert "9.99x" not in out
    # the ratio is cuDNN over the path auto picks (forced), not over the "fused" column
    assert "| 100 | 512 | 32 | grid | 1.00 | 2.50 | **2.50x** | 2.00x |" in out
    assert report.render(out, {"cuda-kernels-x100": cuda_result(2.5)}) == out


def test_a_missing_result_says_so_and_an_unknown_block_is_an_error():
    out = report.render("<!-- report: cpu-table -->\n<!-- /report -->", {})
    assert "bench/results/cpu-kernels.json` is missing" in out
    with pytest.raises(SystemExit, match="unknown block 'nope'"):
        report.render("<!-- report: nope -->\n<!-- /report -->", {})


def test_the_pages_match_the_current_results():
    assert report.main(["--check"]) == 0


def test_check_fails_when_a_result_changes(tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(BENCH / "results", results)
    path = next(results.glob("cuda-kernels-*.json"))
    doc = json.loads(path.read_text())
    for row in doc["rows"]:
        row["median_ms"] = {k: v * (1.5 if k == "cuDNN" else 1) for k, v in row["median_ms"].items()}
    path.write_text(json.dumps(doc))
    assert report.main(["--check", "--results", str(results)]) == 1
    assert "out of date" in capsys.readouterr().err
