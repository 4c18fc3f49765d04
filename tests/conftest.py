"""Fixtures for the trainer tests: a small multilingual text and tiny, fast configs."""

import pytest

SMALL_TEXT = ("First Citizen: we are accounted poor citizens, the patricians good. "
              "Café crème, naïve façade; 🙂 emoji count as one symbol.\n") * 12


@pytest.fixture
def small_text(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text(SMALL_TEXT, encoding="utf-8")
    return path


@pytest.fixture
def tiny_config(tmp_path, small_text):
    """TrainConfig factory: a model and budget small enough for a test to take well under a second."""
    from charrnn_ext.train import TrainConfig

    def make(**kw):
        base = dict(data=str(small_text), out=str(tmp_path / "run"), hidden_size=16, embedding_size=8,
                    batch_size=4, seq_len=10, max_steps=8, time_limit=None, eval_every=4, log_every=2,
                    dropout=0.0, progress=False, plot=False, seed=0, device="cpu")
        base.update(kw)
        return TrainConfig(**base)

    return make


@pytest.fixture(autouse=True)
def _restore_flush_denormal():
    """The Trainer turns on flush-to-zero for the process; keep it from leaking into other tests."""
    yield
    import torch
    torch.set_flush_denormal(False)


@pytest.fixture(autouse=True)
def _ieee_float32_on_gpu():
    """On a GPU, cuDNN and cuBLAS would compute float32 in TF32 where allowed (cuDNN allows it by
    default); every comparison here is against true float32 or float64."""
    import torch
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    # flags() rather than assignment: torch's test utilities (test_module_info.py imports them)
    # forbid assigning cuDNN flags outside it. flags() sets every flag, so pass the others on.
    with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                     allow_tf32=False):
        saved, matmul.allow_tf32 = matmul.allow_tf32, False
        try:
            yield
        finally:
            matmul.allow_tf32 = saved
