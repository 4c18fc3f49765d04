import io

import pytest
import torch

from charrnn_ext import reference
from charrnn_ext import sample as sample_mod
from charrnn_ext.data import Vocab
from charrnn_ext.model import CharRNN, ModelConfig
from charrnn_ext.sample import draw, generate

DECODE = torch.ops.charrnn.rnn_tanh_decode

TEXT = "to be, or not to be: that is the question. 🙂\n"


@pytest.fixture(scope="module")
def model_vocab():
    torch.manual_seed(0)
    vocab = Vocab.from_text(TEXT)
    model = CharRNN(ModelConfig(vocab_size=len(vocab), hidden_size=16, embedding_size=8, dropout=0.5))
    return model, vocab


def test_argmax_is_deterministic_and_top1_equals_argmax(model_vocab):
    m, v = model_vocab
    a = generate(m, v, prime="to be", length=40, temperature=0)
    b = generate(m, v, prime="to be", length=40, temperature=0, seed=123)
    c = generate(m, v, prime="to be", length=40, temperature=1.0, top_k=1, seed=7)
    assert a == b == c
    assert a[0].startswith("to be") and len(a[0]) == 45


def test_seed_reproduces_and_samples_vary(model_vocab):
    m, v = model_vocab
    a = generate(m, v, length=60, seed=5)
    assert a == generate(m, v, length=60, seed=5)
    assert a != generate(m, v, length=60, seed=6)
    torch.manual_seed(99)  # the global RNG is not what the seed controls
    assert a == generate(m, v, length=60, seed=5)


def test_several_samples_at_once(model_vocab):
    m, v = model_vocab
    out = generate(m, v, prime="🙂", length=30, num_samples=4, seed=1)
    assert len(out) == 4 and all(s.startswith("🙂") and len(s) == 31 for s in out)
    assert len(set(out)) > 1
    assert all(set(s) <= set(v.chars) for s in out)


def test_prime_outside_vocabulary_lists_the_characters(model_vocab):
    m, v = model_vocab
    with pytest.raises(ValueError, match=r"'Z'.*'ß'"):
        generate(m, v, prime="Zoo ß", length=5)


def test_streaming_matches_the_returned_text(model_vocab):
    m, v = model_vocab
    buf = io.StringIO()
    out = generate(m, v, prime="that", length=25, seed=3, stream=buf)
    assert buf.getvalue() == out[0] + "\n"


def test_top_k_only_samples_the_k_most_likely():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.5, -1.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    picked = set(draw(logits, 1.0, 2, g).tolist())
    assert picked == {1, 3}
    assert draw(logits[:1], 0.0, None, g).item() == 1
    low = draw(logits, 0.05, None, g)  # a low temperature is nearly argmax
    assert (low == 1).float().mean() > 0.99


def test_bad_arguments(model_vocab):
    m, v = model_vocab
    for kw in ({"temperature": -1}, {"top_k": 0}, {"num_samples": 0}, {"length": -1}):
        with pytest.raises(ValueError):
            generate(m, v, **kw)


# --------------------------------------------------------------------------- the fused decode

devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def random_model(vocab, cell="rnn", hidden=11, layers=2, embedding=5, dtype=torch.float32, seed=0,
                 device="cpu"):
    """A random CharRNN with weights large enough that its distributions are far from uniform."""
    torch.manual_seed(seed)
    model = CharRNN(ModelConfig(vocab_size=len(vocab), cell=cell, hidden_size=hidden, num_layers=layers,
                                embedding_size=embedding, dropout=0.0))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.5)
    return model.to(device=device, dtype=dtype)


def vocab_of(size):
    return Vocab.from_text("".join(chr(ord("a") + i) if i < 26 else chr(0x3b1 + i - 26) for i in range(size)))


# (vocabulary, hidden, layers, embedding (0: one-hot), dtype, samples): odd sizes, both inputs,
# both dtypes, and column splits of the recurrent step over the thread pool (B * H * H >= 2^17).
CASES = [
    (2, 1, 1, 3, torch.float32, 1),
    (7, 13, 2, 0, torch.float32, 3),
    (30, 9, 3, 4, torch.float64, 2),
    (65, 130, 2, 16, torch.float32, 8),
    (40, 33, 1, 0, torch.float64, 5),
    (11, 9, 3, 4, torch.float32, 3),  # layer slices of the state off 64-byte boundaries
]
DRAWS = [(0.0, None), (1.0, None), (0.7, 3), (1.6, 1), (1.0, 100)]


@pytest.mark.parametrize("vocab_size, hidden, layers, embedding, dtype, samples", CASES)
@pytest.mark.parametrize("device", devices)
def test_fused_decode_draws_the_python_loops_text(vocab_size, hidden, layers, embedding, dtype, samples, device):
    # generate() takes the fused path; its text is the Python loop's (the reference) from the
    # same prime and seed.
    vocab = vocab_of(vocab_size)
    model = random_model(vocab, hidden=hidden, layers=layers, embedding=embedding, dtype=dtype, device=device)
    assert sample_mod.fused_decode_available(model)
    for temperature, top_k in DRAWS:
        kw = dict(length=60, temperature=temperature, top_k=top_k, num_samples=samples, seed=11)
        fused = generate(model, vocab, prime=vocab.chars[0], **kw)
        assert fused == python_loop_text(model, vocab, vocab.chars[0], **kw), (temperature, top_k)
    assert len(set(fused)) > 1 or samples == 1 or vocab_size < 3


def python_loop_text(model, vocab, prime, length, temperature, top_k, num_samples, seed):
    """generate()'s text from a prime through the Python loop of model_step."""
    device = model.head.weight.device
    with torch.no_grad():
        logits, state = model(vocab.encode(prime).to(device).unsqueeze(0).expand(num_samples, -1).contiguous())
        gen = torch.Generator(device=device).manual_seed(seed)
        ids = python_loop(model, logits[:, -1], state, length, temperature, top_k, gen)[0]
    return [prime + vocab.decode(row) for row in ids.tolist()]


@pytest.mark.parametrize("device", devices)
def test_fused_decode_state_and_logits_are_the_python_loops_floats(device):
    # The same floats, not only the same text: state and logits after the last draw.
    vocab = vocab_of(65)
    for model in (random_model(vocab, hidden=512, layers=2, embedding=64, device=device),  # the default model
                  random_model(vocab, hidden=130, layers=2, embedding=0, device=device)):
        for samples in (1, 8):
            logits, state = model(torch.zeros(samples, 1, dtype=torch.long, device=device))
            runs = []
            for steps in (sample_mod.fused_steps, python_loop):
                g = torch.Generator(device=device).manual_seed(3)
                runs.append(steps(model, logits[:, -1], state, 40, 0.9, 20, g))
            for fused, python in zip(*runs):
                assert torch.equal(fused, python)


def python_loop(model, *args):
    return sample_mod.python_steps(sample_mod.model_step(model), *args)


@pytest.mark.parametrize("device", devices)
def test_draw_is_multinomials_draw(device):
    # The one draw (no host-side checks, so a CUDA graph can hold it) takes torch.multinomial's
    # ids and random numbers: what makes the text the fused op's and torch's sampling's.
    for dtype, vocab_size, samples in ((torch.float32, 65, 8), (torch.float64, 3, 1), (torch.float32, 200, 33)):
        for temperature, top_k in DRAWS:
            for seed in range(4):
                logits = 3 * torch.randn(samples, vocab_size, dtype=dtype, device=device,
                                         generator=torch.Generator(device=device).manual_seed(seed))
                gens = [torch.Generator(device=device).manual_seed(seed) for _ in range(2)]
                want = (logits.argmax(-1) if temperature == 0 else torch.multinomial(
                    sample_mod.probabilities(logits, temperature, top_k), 1, generator=gens[0]).squeeze(1))
                assert torch.equal(want, sample_mod.draw(logits, temperature, top_k, gens[1]))
                assert torch.equal(gens[0].get_state(), gens[1].get_state())


# CUDAGraphSteps with a real capture on a GPU, and "emulated": the capture replaced by running the
# captured characters eagerly, which checks its buffers, replays and remainders on the CPU (the
# capture itself, the generator's registration and the warm-up need a GPU).
GRAPH_MODES = ["emulated"] + (["cuda"] if torch.cuda.is_available() else [])


def graph_device(mode, monkeypatch):
    if mode == "emulated":
        monkeypatch.setattr(sample_mod.CUDAGraphSteps, "_record", staticmethod(lambda chars, gen, device: chars))
        return "cpu"
    return "cuda"


@pytest.mark.parametrize("vocab_size, hidden, layers, embedding, dtype, samples", CASES)
@pytest.mark.parametrize("mode", GRAPH_MODES)
def test_cuda_graph_steps_are_the_python_loops_steps(vocab_size, hidden, layers, embedding, dtype, samples,
                                                      mode, monkeypatch):
    device = graph_device(mode, monkeypatch)
    vocab = vocab_of(vocab_size)
    model = random_model(vocab, hidden=hidden, layers=layers, embedding=embedding, dtype=dtype, device=device)
    logits, state = model(torch.zeros(samples, 1, dtype=torch.long, device=device))
    for temperature, top_k in DRAWS:
        # shorter than a replay, one replay, then replays and a remainder; each call continues
        # where the one before stopped, as generate()'s streamed chunks do
        for lengths in ((5, 16), (16, 16), (40, 33)):
            graphed = sample_mod.CUDAGraphSteps()
            g = [torch.Generator(device=device).manual_seed(7) for _ in range(2)]
            runs = [(logits[:, -1], state), (logits[:, -1], state)]
            for n in lengths:
                a = graphed(model, runs[0][0], runs[0][1], n, temperature, top_k, g[0])
                b = python_loop(model, runs[1][0], runs[1][1], n, temperature, top_k, g[1])
                for got, want in zip(a, b):  # ids, state, logits
                    assert torch.equal(got, want), (temperature, top_k, lengths)
                runs = [(a[2], a[1]), (b[2], b[1])]
            assert torch.equal(g[0].get_state(), g[1].get_state())
            assert not graphed.failed and (graphed.replay is not None) == (max(lengths) >= graphed.CHARS)


def test_cuda_graph_steps_fall_back_to_the_fused_loop_when_the_capture_fails(monkeypatch):
    def refuse(chars, gen, device):
        chars()  # the warm-up ran (and drew) before the capture failed
        raise RuntimeError("operation not permitted when stream is capturing")
    monkeypatch.setattr(sample_mod.CUDAGraphSteps, "_record", staticmethod(refuse))
    vocab = vocab_of(9)
    model = random_model(vocab, hidden=13)
    logits, state = model(torch.zeros(3, 1, dtype=torch.long))
    g = [torch.Generator().manual_seed(5) for _ in range(2)]
    graphed = sample_mod.CUDAGraphSteps()
    with pytest.warns(RuntimeWarning, match="could not be captured.*fused op's loop"):
        a = graphed(model, logits[:, -1], state, 40, 1.0, None, g[0])
    b = python_loop(model, logits[:, -1], state, 40, 1.0, None, g[1])
    assert graphed.failed and all(torch.equal(x, y) for x, y in zip(a, b))


def test_cuda_graph_steps_refuse_non_finite_logits(monkeypatch):
    device = graph_device("emulated", monkeypatch)
    vocab = vocab_of(9)
    model = random_model(vocab, hidden=13, device=device)
    with torch.no_grad():
        model.head.bias[2] = float("nan")
    logits, state = model(torch.zeros(2, 1, dtype=torch.long, device=device))
    gen = torch.Generator(device=device).manual_seed(0)
    with pytest.raises(RuntimeError, match="logits are not finite"):
        sample_mod.CUDAGraphSteps()(model, logits[:, -1], state, 32, 1.0, None, gen)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_python_loop_refuses_non_finite_logits_as_the_fused_op_does(cell):
    vocab = vocab_of(9)
    model = random_model(vocab, cell=cell, hidden=13)
    with torch.no_grad():
        model.head.bias[2] = float("nan")
    logits, state = model(torch.zeros(2, 1, dtype=torch.long))
    for steps in (python_loop, sample_mod.fused_steps) if cell == "rnn" else (python_loop,):
        with pytest.raises(RuntimeError, match="logits are not finite"):
            steps(model, logits[:, -1], state, 3, 1.0, None, torch.Generator().manual_seed(0))
    # argmax draws nothing from a distribution: NaN logits are the model's to answer for
    assert python_loop(model, logits[:, -1], state, 3, 0.0, None, None)[0].shape == (2, 3)


def test_fused_decode_follows_the_float64_reference():
    # The state after the drawn ids is the reference recurrence over them (teacher forcing).
    vocab = vocab_of(12)
    model = random_model(vocab, hidden=7, layers=2, embedding=3, dtype=torch.float64).requires_grad_(False)
    logits, state = model(torch.tensor([[0, 1]]).expand(3, -1))
    g = torch.Generator().manual_seed(1)
    ids, h_n, logits_n = sample_mod.fused_steps(model, logits[:, -1], state, 25, 1.0, None, g)
    x = model.embed.weight[ids.t()]  # [T, B, E]
    h_ref = []
    for layer in range(2):
        w = [getattr(model.rnn, f"{n}_l{layer}").numpy() for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        x, h_last = map(torch.as_tensor, reference.rnn_tanh_forward(x, state[layer], *w))
        h_ref.append(h_last)
    torch.testing.assert_close(h_n, torch.stack(h_ref), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logits_n, model.head(x[-1]), rtol=1e-12, atol=1e-12)


def test_streaming_comes_in_growing_chunks_and_matches_one_call():
    vocab = vocab_of(20)
    model = random_model(vocab, hidden=16)

    class Writes(io.StringIO):
        def __init__(self):
            super().__init__()
            self.pieces = []

        def write(self, s):
            self.pieces.append(s)
            return super().write(s)

    # the fused decode (rnn) and the Python loop (lstm on the CPU: PackedCellStep; in bfloat16:
    # the module's step)
    for model in (model, random_model(vocab, cell="lstm", hidden=16),
                  random_model(vocab, cell="lstm", hidden=16, dtype=torch.bfloat16)):
        buf = Writes()
        streamed = generate(model, vocab, prime="ab", length=100, num_samples=3, seed=4, stream=buf)
        assert buf.getvalue() == streamed[0] + "\n"
        assert buf.pieces[:4] == ["ab", streamed[0][2:2 + sample_mod.FIRST_CHUNK],
                                  streamed[0][2 + sample_mod.FIRST_CHUNK:2 + 3 * sample_mod.FIRST_CHUNK],
                                  streamed[0][2 + 3 * sample_mod.FIRST_CHUNK:2 + 7 * sample_mod.FIRST_CHUNK]]
        assert streamed == generate(model, vocab, prime="ab", length=100, num_samples=3, seed=4)


def test_chunk_sizes():
    assert list(sample_mod.chunk_sizes(0, True)) == []
    assert list(sample_mod.chunk_sizes(5000, False)) == [5000]
    sizes = list(sample_mod.chunk_sizes(5000, True))
    assert sum(sizes) == 5000 and sizes[0] == sample_mod.FIRST_CHUNK and max(sizes) == sample_mod.LAST_CHUNK


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn-torch"])
def test_other_cells_run_the_python_loop(cell):
    vocab = vocab_of(9)
    model = random_model(vocab, cell=cell, hidden=12)
    assert not sample_mod.fused_decode_available(model)
    assert sample_mod.PackedCellStep.supports(model)
    out = generate(model, vocab, prime="a", length=30, num_samples=2, seed=2)
    assert out == generate(model, vocab, prime="a", length=30, num_samples=2, seed=2)
    assert all(len(s) == 31 for s in out)


# (cell, hidden, layers, embedding (0: one-hot), bias, samples)
CELL_CASES = [("lstm", 12, 2, 5, True, 1), ("lstm", 33, 3, 0, False, 4), ("gru", 12, 2, 5, True, 2),
              ("gru", 17, 1, 0, False, 1), ("rnn-torch", 20, 2, 3, True, 3), ("rnn-torch", 9, 1, 0, False, 1)]


def cell_model(vocab, cell, hidden, layers, embedding, bias, dtype):
    model = random_model(vocab, cell=cell, hidden=hidden, layers=layers, embedding=embedding, dtype=dtype).eval()
    if not bias:  # the same module without biases, the same weights
        rnn = model.rnn
        kw = {"nonlinearity": rnn.nonlinearity} if cell == "rnn-torch" else {}
        model.rnn = type(rnn)(rnn.input_size, hidden, layers, bias=False, **kw).to(dtype)
        model.rnn.load_state_dict({k: v for k, v in rnn.state_dict().items() if k.startswith("weight")})
    return model.requires_grad_(False)


@pytest.mark.parametrize("cell, hidden, layers, embedding, bias, samples", CELL_CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_packed_cell_step_computes_the_modules_step(cell, hidden, layers, embedding, bias, samples, dtype):
    # The packed step is torch's cell math: logits and state after each of a few characters.
    vocab = vocab_of(9)
    model = cell_model(vocab, cell, hidden, layers, embedding, bias, dtype)
    assert sample_mod.PackedCellStep.supports(model)
    steps = [sample_mod.PackedCellStep(model), sample_mod.model_step(model)]
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    logits, state = model(torch.tensor([[0, 3]]).expand(samples, -1))
    states = [state, state]
    for t in range(6):
        ids = torch.arange(samples) * 2 + t
        (got, states[0]), (want, states[1]) = (step(ids % 9, s) for step, s in zip(steps, states))
        torch.testing.assert_close(got, want, **tol)
        torch.testing.assert_close(states[0], states[1], **tol)


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn-torch"])
def test_packed_cell_steps_draw_the_module_loops_text(cell, monkeypatch):
    # In float64 the two differ by rounding far below any draw's margin: the same text.
    vocab = vocab_of(30)
    model = cell_model(vocab, cell, 24, 2, 6, True, torch.float64)
    for temperature, top_k in DRAWS:
        kw = dict(prime="ab", length=80, temperature=temperature, top_k=top_k, num_samples=3, seed=5)
        packed = generate(model, vocab, **kw)
        with monkeypatch.context() as m:
            m.setattr(sample_mod.PackedCellStep, "supports", staticmethod(lambda model: False))
            assert packed == generate(model, vocab, **kw), (temperature, top_k)
    assert len(set(packed)) > 1


def test_packed_cell_step_is_only_for_cpu_models_it_computes():
    vocab = vocab_of(5)
    assert not sample_mod.PackedCellStep.supports(random_model(vocab))  # the fused rnn: the decode op
    assert not sample_mod.PackedCellStep.supports(random_model(vocab, cell="lstm", dtype=torch.bfloat16))


def decode_args(dtype=torch.float32, device="cpu", samples=2, embedding=4, bias=True, seed=0):
    vocab = vocab_of(6)
    model = random_model(vocab, hidden=5, layers=2, embedding=embedding, dtype=dtype, seed=seed, device=device)
    if not bias:
        for layer in range(2):
            for name in ("bias_ih", "bias_hh"):
                setattr(model.rnn, f"{name}_l{layer}", None)
    logits, state = model(torch.zeros(samples, 1, dtype=torch.long, device=device))
    rnn = model.rnn
    ws = [[getattr(rnn, f"{n}_l{l}") for l in range(2)] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    return [logits[:, -1].detach(), state.detach(), None if model.embed is None else model.embed.weight.detach(),
            *[[None if w is None else w.detach() for w in ws_] for ws_ in ws],
            model.head.weight.detach(), model.head.bias.detach()]


@pytest.mark.parametrize("device", devices)
def test_opcheck_decode(device):
    for dtype, embedding, bias in ((torch.float32, 4, True), (torch.float64, 0, False)):
        args = decode_args(dtype, device, embedding=embedding, bias=bias)
        # Argmax draws nothing from a generator: every opcheck test, eager against traced.
        result = torch.library.opcheck(DECODE, (*args, 7, 0.0, None, None))
        assert set(result.values()) == {"SUCCESS"}, result
        # A sampled run advances its generator, so two runs differ by design: schema and fake only.
        g = torch.Generator(device=device).manual_seed(0)
        result = torch.library.opcheck(DECODE, (*args, 7, 1.0, 2, g),
                                       test_utils=("test_schema", "test_faketensor"))
        assert set(result.values()) == {"SUCCESS"}, result


def test_decode_continues_where_it_stopped():
    args = decode_args()
    g1, g2 = torch.Generator().manual_seed(8), torch.Generator().manual_seed(8)
    ids, h_n, logits_n = DECODE(*args, 30, 1.0, None, g1)
    first, h_mid, logits_mid = DECODE(*args, 12, 1.0, None, g2)
    rest = DECODE(args[0] * 0 + logits_mid, h_mid, *args[2:], 18, 1.0, None, g2)
    assert torch.equal(ids, torch.cat([first, rest[0]], 1))
    assert torch.equal(h_n, rest[1]) and torch.equal(logits_n, rest[2])
    none = DECODE(*args, 0, 1.0, None, g1)
    assert none[0].shape == (2, 0) and torch.equal(none[1], args[1]) and torch.equal(none[2], args[0])


def test_decode_bad_arguments_name_the_argument():
    args = decode_args()
    logits, h0, emb, w_ih, w_hh, b_ih, b_hh, head_w, head_b = args

    def call(*a, steps=3, temperature=1.0, top_k=None):
        return DECODE(*a, steps, temperature, top_k, None)

    cases = [
        ((logits[:1], *args[1:]), ValueError, r"logits must have shape \[B, V\]"),
        ((logits, h0[0], *args[2:]), ValueError, r"h0 must have shape \[L, B, H\]"),
        ((logits, h0, emb[:, :3], *args[3:]), ValueError, r"w_ih\[0\] must have shape \[H, E\]"),
        ((logits, h0, emb, w_ih[:1], *args[4:]), ValueError, "one w_ih, w_hh, b_ih and b_hh per layer"),
        ((logits, h0, emb, w_ih, [w_hh[0], w_hh[1][:, :4]], *args[5:]), ValueError, r"w_hh\[1\]"),
        ((logits, h0, emb, w_ih, w_hh, [b_ih[0], b_ih[1][:4]], b_hh, head_w, head_b), ValueError, r"b_ih\[1\]"),
        ((*args[:7], head_w[:, :4], head_b), ValueError, r"head_weight must have shape \[V, H\]"),
        ((*args[:8], head_b[:3]), ValueError, r"head_bias must have shape \[V\]"),
        ((logits.double(), *args[1:]), TypeError, "logits must have the dtype of h0"),
        ((logits, h0.long(), *args[2:]), TypeError, "h0 must be float32 or float64"),
    ]
    for a, error, message in cases:
        with pytest.raises(error, match=message):
            call(*a)
    with pytest.raises(RuntimeError, match="not finite"):  # as multinomial refuses NaN probabilities
        call(torch.full_like(logits, float("nan")), *args[1:])
    for kw, message in (({"steps": -1}, "steps must be >= 0"), ({"temperature": -0.5}, "temperature must be"),
                        ({"temperature": float("nan")}, "temperature must be"), ({"top_k": 0}, "top_k must be >= 1")):
        with pytest.raises(ValueError, match=message):
            call(*args, **kw)


def test_cli_sample_streams_and_batches(tiny_config, capsys):
    from charrnn_ext import cli
    from charrnn_ext.train import Trainer
    cfg = tiny_config()
    Trainer(cfg).run()
    base = ["sample", cfg.out, "--length", "40", "--seed", "3"]
    assert cli.main(base + ["--num-samples", "3"]) == 0
    batch = capsys.readouterr().out
    assert batch.count("----- sample") == 3
    assert cli.main(base + ["--num-samples", "3", "--stream"]) == 0
    assert capsys.readouterr().out == batch  # the first sample streamed, the same text
    threads = torch.get_num_threads()
    try:
        assert cli.main(base + ["--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert len(capsys.readouterr().out) == 41  # one sample streams: 40 characters and a newline
