import hashlib
import io
import os
import urllib.error
from pathlib import Path

import pytest
import torch

from charrnn_ext import data
from charrnn_ext.data import Batches, CorpusError, Vocab, corpus_path, fit_batches, read_text, split

TS_NAME, TS_URL, TS_SHA, TS_SIZE = data.CORPORA["tinyshakespeare"]
# A local copy of tiny shakespeare, for the tests that need the real text: $CHARRNN_DATA_DIR
# names its directory (CI sets it); without one those tests are skipped.
LOCAL_COPY = Path(os.environ.get(data.DATA_DIR_ENV) or "/nonexistent") / TS_NAME
needs_local_copy = pytest.mark.skipif(not LOCAL_COPY.is_file(),
                                      reason=f"set {data.DATA_DIR_ENV} to a directory holding {TS_NAME}")


# ------------------------------------------------------------------ vocabulary and text

def test_vocab_is_code_points_and_round_trips():
    text = "naïve café 🙂👍🏽 Ω\n"
    v = Vocab.from_text(text)
    assert "🙂" in v.index and "é" in v.index and "🏽" in v.index  # one symbol per code point
    assert len(v) == len(set(text))
    assert v.chars == sorted(v.chars)
    ids = v.encode(text)
    assert ids.dtype == torch.long and len(ids) == len(text)
    assert v.decode(ids) == text
    assert Vocab(v.chars) == v


def test_vocab_unknown_characters_are_listed():
    v = Vocab.from_text("abc")
    with pytest.raises(ValueError, match=r"'x'.*'z'"):
        v.encode("abxcz")


def test_vocab_rejects_bad_input():
    with pytest.raises(ValueError):
        Vocab.from_text("")
    with pytest.raises(ValueError):
        Vocab(["a", "a"])


def test_read_text_invalid_utf8_names_byte_offset(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes("héllo ".encode() + b"\xff\xfe" + b" world")
    with pytest.raises(CorpusError, match=r"byte offset 7"):
        read_text(p)
    assert read_text(p, errors="replace") == "héllo \ufffd\ufffd world"
    assert read_text(p, errors="ignore") == "héllo  world"


def test_read_text_strips_bom_and_reports_missing_file(tmp_path):
    p = tmp_path / "bom.txt"
    p.write_bytes(b"\xef\xbb\xbfabc")
    assert read_text(p) == "abc"
    with pytest.raises(CorpusError, match="no such file"):
        read_text(tmp_path / "nope.txt")


# ----------------------------------------------------------------------------- splits

def test_split_is_contiguous_and_sized():
    ids = torch.arange(1000)
    tr, va, te = split(ids, 0.1, 0.05)
    assert (len(tr), len(va), len(te)) == (850, 100, 50)
    assert torch.equal(torch.cat([tr, va, te]), ids)
    tr, va, te = split(ids)
    assert (len(tr), len(va), len(te)) == (900, 100, 0)
    with pytest.raises(ValueError):
        split(ids, 0.6, 0.5)


# --------------------------------------------------------------------------- batching

def test_windows_continue_each_row_and_targets_shift_by_one():
    ids = torch.arange(1003)
    b = Batches(ids, batch_size=4, seq_len=7)
    n = (1003 - 1) // 4 // 7 * 7  # columns kept per row: the remainder is dropped
    assert len(b) == n // 7 and b.chars_per_window == 28
    xs, ys = zip(*b)
    for k in range(len(b) - 1):
        # row r of window k+1 starts right where row r of window k ended
        assert torch.equal(xs[k + 1][:, 0], xs[k][:, -1] + 1)
    rows = torch.cat(xs, 1)
    for r in range(4):
        assert torch.equal(rows[r], ids[r * n:(r + 1) * n])  # each row one contiguous stream
    assert torch.equal(torch.cat(ys, 1), rows + 1)
    x, y = b.window(0)
    assert x.shape == y.shape == (4, 7) and x.is_contiguous()


def test_batches_too_small_is_a_clear_error():
    with pytest.raises(ValueError, match="too few"):
        Batches(torch.arange(50), batch_size=8, seq_len=10)


def test_fit_batches_shrinks_for_small_splits():
    b = fit_batches(torch.arange(30), batch_size=64, seq_len=10)
    assert (b.batch_size, b.seq_len) == (2, 10)
    b = fit_batches(torch.arange(5), batch_size=64, seq_len=10)
    assert (b.batch_size, b.seq_len, len(b)) == (1, 4, 1)


# ---------------------------------------------------------------------------- corpora

@pytest.fixture
def no_env(monkeypatch, tmp_path):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_corpus_found_through_env_var(no_env, monkeypatch, tmp_path):
    d = tmp_path / "datadir"
    d.mkdir()
    (d / TS_NAME).write_bytes(b"x" * TS_SIZE)  # only the size is checked when found locally
    monkeypatch.setenv(data.DATA_DIR_ENV, str(d))
    assert corpus_path("tinyshakespeare") == d / TS_NAME


def test_corpus_wrong_size_copy_is_refused(no_env, tmp_path):
    (tmp_path / TS_NAME).write_text("too short")
    with pytest.raises(CorpusError, match="expected 1115394"):
        corpus_path("tinyshakespeare", data_dir=tmp_path)


@needs_local_copy
def test_local_copy_has_the_documented_checksum():
    p = corpus_path("tinyshakespeare", download=False)
    assert p == LOCAL_COPY and hashlib.sha256(p.read_bytes()).hexdigest() == TS_SHA


def offline(*a, **k):
    raise urllib.error.URLError("network is unreachable")


def test_no_network_and_no_copy_says_how_to_provide_it(no_env, monkeypatch, tmp_path):
    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(CorpusError) as e:
        corpus_path("tinyshakespeare")
    msg = str(e.value)
    assert msg.startswith(f"could not download tinyshakespeare from {TS_URL} (<urlopen error network is unreachable>)")
    assert "To train on a local copy, which needs no network access" in msg
    assert "--data FILE" in msg and f"{data.DATA_DIR_ENV}=DIR" in msg and "--data-dir DIR" in msg
    assert str(tmp_path / "cache" / "charrnn" / TS_NAME) in msg


def test_without_network_the_trainer_runs_on_a_local_copy_or_says_how(no_env, monkeypatch, tmp_path, capsys):
    """`charrnn train` (what run.sh runs) without network: a clear error naming both ways to a
    local copy, and each of them then trains without touching the network."""
    from charrnn_ext import cli
    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    tiny = ["--hidden-size", "8", "--embedding-size", "4", "--batch-size", "2", "--seq-len", "8", "--max-steps", "1",
            "--eval-windows", "1", "--no-progress", "--no-plot"]
    assert cli.main(["train", "--out", str(tmp_path / "none"), *tiny]) == 2
    err = capsys.readouterr().err
    assert "could not download tinyshakespeare" in err and "--data FILE" in err and f"{data.DATA_DIR_ENV}=DIR" in err

    copy = tmp_path / "copy" / TS_NAME
    copy.parent.mkdir()
    line = "To be, or not to be\n"
    copy.write_text((line * (TS_SIZE // len(line) + 1))[:TS_SIZE])  # a local copy gets a size check only
    runs = {"--data": tmp_path / "by-file", data.DATA_DIR_ENV: tmp_path / "by-env"}
    assert cli.main(["train", "--data", str(copy), "--out", str(runs["--data"]), *tiny]) == 0
    monkeypatch.setenv(data.DATA_DIR_ENV, str(copy.parent))
    assert cli.main(["train", "--out", str(runs[data.DATA_DIR_ENV]), *tiny]) == 0
    for run in runs.values():
        assert torch.load(run / "last.pt", weights_only=True)["vocab"] == sorted(set(line))


def _serve(payload):
    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.close()
    return lambda *a, **k: Response(payload)


def test_download_with_bad_checksum_is_rejected(no_env, monkeypatch, tmp_path):
    monkeypatch.setattr(data.urllib.request, "urlopen", _serve(b"not shakespeare"))
    with pytest.raises(CorpusError, match="sha256"):
        corpus_path("tinyshakespeare")
    assert not any((tmp_path / "cache" / "charrnn").iterdir())  # nothing half-written left


@needs_local_copy
def test_download_lands_in_cache(no_env, monkeypatch, tmp_path):
    monkeypatch.setattr(data.urllib.request, "urlopen", _serve(LOCAL_COPY.read_bytes()))
    p = corpus_path("tinyshakespeare")
    assert p == tmp_path / "cache" / "charrnn" / TS_NAME and p.stat().st_size == TS_SIZE
    monkeypatch.setattr(data.urllib.request, "urlopen", None)  # found in the cache now
    assert corpus_path("tinyshakespeare") == p


def test_unknown_corpus_name():
    with pytest.raises(CorpusError, match="unknown corpus"):
        corpus_path("war-and-peace")
