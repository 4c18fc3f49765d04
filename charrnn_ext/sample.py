"""Generation from a trained CharRNN: prime text, temperature, top-k, argmax, seed.

Each model takes one path:
  the rnn cell (FusedRNN)  one fused op call (ops.rnn_tanh_decode) on the CPU, a CUDA graph of its
                           steps (CUDAGraphSteps) on a GPU;
  gru, lstm, rnn-torch     on the CPU in float32/float64, the Python loop through PackedCellStep
                           (weights packed once per text, not laid out again per character);
  everything else          the Python loop (python_steps) through the torch module, one call
                           per character: any cell on a device or dtype that the two above do
                           not cover (gru/lstm/rnn-torch on a GPU, bfloat16, ...).
All of them draw with draw(), torch.multinomial's draw, so the same seed gives the same text on
every path (the rnn cell's Python loop is the reference the fused decode's text equals; the
tests reach it through python_steps and model_step)."""

from __future__ import annotations

import warnings

import torch

from .data import Vocab
from .errors import CharRNNError
from .model import CharRNN, resolve_device
from .nn import FusedRNN
from .ops import PackedLinear, rnn_tanh_decode

# Streamed text comes in chunks that grow from FIRST_CHUNK characters (so that the first ones
# show at once) to LAST_CHUNK (so that the op's per-call overhead stays negligible).
FIRST_CHUNK, LAST_CHUNK = 16, 1024


@torch.no_grad()
def generate(model: CharRNN, vocab: Vocab, prime: str = "", length: int = 500,
             temperature: float = 1.0, top_k: int | None = None, num_samples: int = 1,
             seed: int | None = None, stream=None) -> list[str]:
    """Return num_samples strings, each the prime followed by `length` generated characters.

    temperature 0 means argmax (deterministic). top_k keeps the k most likely characters.
    With a stream (e.g. sys.stdout), the first sample is written as it comes, in chunks.
    """
    if length < 0:
        raise CharRNNError("length must be >= 0")
    if temperature < 0:
        raise CharRNNError("temperature must be >= 0 (0 means argmax)")
    if top_k is not None and top_k < 1:
        raise CharRNNError("top_k must be >= 1")
    if num_samples < 1:
        raise CharRNNError("num_samples must be >= 1")
    missing = vocab.unknown(prime)
    if missing:
        raise CharRNNError("prime text has characters not in the model's vocabulary: "
                         + ", ".join(repr(c) for c in missing))
    device = next(model.parameters()).device
    if fused_decode_available(model):
        steps = CUDAGraphSteps() if device.type == "cuda" else fused_steps
    else:
        step = PackedCellStep(model) if PackedCellStep.supports(model) else model_step(model)
        steps = lambda model, *args: python_steps(step, *args)  # noqa: E731
    # A private generator: sampling reproduces from its seed whatever else used torch's RNG.
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    model.eval()

    if not prime:
        # The seed model starts from one character; newline starts a fresh "line" of text.
        if "\n" in vocab.index:
            prime_ids = [vocab.index["\n"]]
        else:
            prime_ids = [int(torch.randint(len(vocab), (1,), generator=gen, device=device))]
        shown_prime = ""
    else:
        prime_ids = vocab.encode(prime).tolist()
        shown_prime = prime
    idx = torch.tensor(prime_ids, device=device).unsqueeze(0).expand(num_samples, -1).contiguous()
    logits, state = model(idx, None)  # the whole prime in one call
    logits = logits[:, -1]

    if stream is not None:
        stream.write(shown_prime)
        stream.flush()
    pieces = [torch.empty(num_samples, 0, dtype=torch.long, device=device)]
    for n in chunk_sizes(length, streaming=stream is not None):
        ids, state, logits = steps(model, logits, state, n, temperature, top_k, gen)
        pieces.append(ids)
        if stream is not None:
            stream.write(vocab.decode(ids[0].tolist()))
            stream.flush()
    if stream is not None:
        stream.write("\n")
        stream.flush()
    return [shown_prime + vocab.decode(row) for row in torch.cat(pieces, 1).tolist()]


def chunk_sizes(length: int, streaming: bool):
    """Steps per call: all at once, or (streaming) growing chunks."""
    chunk = FIRST_CHUNK if streaming else length
    while length > 0:
        yield min(chunk, length)
        length -= chunk
        chunk = min(2 * chunk, LAST_CHUNK)


def fused_decode_available(model: CharRNN) -> bool:
    """Whether the fused decode op runs this model: one-directional tanh FusedRNN layers in float32
    or float64 on a device it has a kernel for."""
    rnn, weight = model.rnn, model.head.weight
    return (isinstance(rnn, FusedRNN) and rnn.nonlinearity == "tanh" and not rnn.bidirectional
            and weight.dtype in (torch.float32, torch.float64) and weight.device.type in ("cpu", "cuda")
            and torch._C._dispatch_has_kernel_for_dispatch_key(
                "charrnn::rnn_tanh_decode", "CUDA" if weight.device.type == "cuda" else "CPU"))


def fused_steps(model: CharRNN, logits, state, n: int, temperature: float, top_k: int | None,
                gen: torch.Generator):
    """n draws through the fused op: (ids [N, n], state, logits after the last draw)."""
    rnn = model.rnn
    layers = range(rnn.num_layers)
    weights = {name: [getattr(rnn, f"{name}_l{l}") if rnn.bias or name.startswith("weight") else None
                      for l in layers] for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    return rnn_tanh_decode(logits, state, None if model.embed is None else model.embed.weight,
                           weights["weight_ih"], weights["weight_hh"], weights["bias_ih"], weights["bias_hh"],
                           model.head.weight, model.head.bias, n, float(temperature), top_k, gen)


def python_steps(step, logits, state, n: int, temperature: float, top_k: int | None,
                 gen: torch.Generator):
    """n draws, one step(ids [N], state) -> (logits [N, V], state) call per character.
    Non-finite logits raise before their draw, as torch.multinomial's checks (read from the
    device) and the fused op do."""
    out = []
    for _ in range(n):
        if temperature > 0 and not bool(torch.isfinite(logits).all()):
            raise RuntimeError(NOT_FINITE)
        nxt = draw(logits, temperature, top_k, gen)  # [N]
        out.append(nxt)
        logits, state = step(nxt, state)
    return torch.stack(out, 1), state, logits


def model_step(model: CharRNN):
    """One character through the model's forward: for the rnn cell, the reference that the fused
    decode equals; for the other cells the step wherever PackedCellStep does not apply."""
    def step(ids, state):
        logits, state = model(ids.unsqueeze(1), state)
        return logits[:, -1], state
    return step


class PackedCellStep:
    """One character of a gru, lstm or rnn-torch CharRNN in eval mode on the CPU: the math of
    torch's cells (gate order, biases, nonlinearities) on weights packed once (ops.PackedLinear).

    Why: each per-character call of torch's modules multiplies through a GEMM call that, at one
    row, spends more on its own overhead than on the multiply-adds, and nn.LSTM's oneDNN kernel
    also lays its weights out anew on every call (bench/bench_sample.py measures each cell's
    path against its torch module). The floats differ from the module's in the last bits
    (other summation order), like any two GEMMs.
    """

    @staticmethod
    def supports(model: CharRNN) -> bool:
        rnn = model.rnn
        # FusedRNN (an nn.RNN) has the fused decode, and its Python loop is that decode's reference.
        return (isinstance(rnn, (torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN)) and not isinstance(rnn, FusedRNN)
                and model.head.weight.device.type == "cpu"
                and model.head.weight.dtype in (torch.float32, torch.float64) and not rnn.bidirectional
                and getattr(rnn, "proj_size", 0) == 0 and getattr(rnn, "nonlinearity", "tanh") == "tanh")

    def __init__(self, model: CharRNN):
        rnn = model.rnn
        self.cell = "lstm" if isinstance(rnn, torch.nn.LSTM) else "gru" if isinstance(rnn, torch.nn.GRU) else "rnn"
        self.embed = None if model.embed is None else model.embed.weight.detach()
        self.vocab_size = model.config.vocab_size
        self.dtype = model.head.weight.dtype
        param = lambda name, l: getattr(rnn, f"{name}_l{l}") if rnn.bias or name.startswith("weight") else None  # noqa: E731
        self.ih = [PackedLinear(param("weight_ih", l), param("bias_ih", l)) for l in range(rnn.num_layers)]
        self.hh = [PackedLinear(param("weight_hh", l), param("bias_hh", l)) for l in range(rnn.num_layers)]
        self.head = PackedLinear(model.head.weight, model.head.bias)

    def __call__(self, ids: torch.Tensor, state):
        x = (torch.nn.functional.one_hot(ids, self.vocab_size).to(self.dtype) if self.embed is None
             else self.embed.index_select(0, ids))
        lstm = self.cell == "lstm"
        hs, cs = [], []
        for l, (ih, hh) in enumerate(zip(self.ih, self.hh)):
            h = (state[0] if lstm else state)[l]
            if lstm:
                gates = ih(x).add_(hh(h))
                i, f, g, o = gates.sigmoid().chunk(4, 1)
                c = f * state[1][l] + i * gates.chunk(4, 1)[2].tanh()
                x = o * c.tanh()
                cs.append(c)
            elif self.cell == "gru":
                gi, gh = ih(x).chunk(3, 1), hh(h).chunk(3, 1)
                r = (gi[0] + gh[0]).sigmoid_()
                z = (gi[1] + gh[1]).sigmoid_()
                n = (gi[2] + r * gh[2]).tanh_()
                x = (h - n).mul_(z).add_(n)
            else:
                x = ih(x).add_(hh(h)).tanh_()
            hs.append(x)
        h_n = torch.stack(hs)
        return self.head(x), ((h_n, torch.stack(cs)) if lstm else h_n)


def probabilities(logits: torch.Tensor, temperature: float, top_k: int | None) -> torch.Tensor:
    """The distribution [N, V] of the next ids after temperature (> 0) and top-k."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.softmax(logits, dim=-1)


# The fused op's words and type for logits that no character can be drawn from.
NOT_FINITE = "charrnn: decode: the logits are not finite, so no character can be drawn"


def draw(logits: torch.Tensor, temperature: float, top_k: int | None, gen: torch.Generator) -> torch.Tensor:
    """Next ids [N] from logits [N, V]: argmax at temperature 0, else one draw from
    probabilities(), the one draw of every Python path (the loop and the CUDA graph).

    It is torch.multinomial's draw of one sample, the argmax of p / q with q ~ Exp(1) from the
    generator, without multinomial's checks, which read the device from the host (a CUDA graph
    cannot hold that; the callers check the logits themselves). So the ids and the generator's
    state after it are torch.multinomial's (a test holds them equal), and the text is the fused
    op's and torch's sampling's for the same seed."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = probabilities(logits.detach(), temperature, top_k)  # a draw, not a function to differentiate
    q = torch.empty_like(probs).exponential_(1, generator=gen)
    return torch.div(probs, q, out=q).argmax(-1)


class CUDAGraphSteps:
    """The rnn cell's decode on a GPU: CHARS characters of the Python loop (draw, then the
    model's one-character forward) captured once as a CUDA graph and replayed, so a character
    costs a share of one graph launch instead of a dozen kernel launches and their host work.

    The text is the loop's: the generator is registered with the graph, so each replay draws
    from it where the eager steps would have (CUDA graphs advance a registered generator's
    offset by the captured steps' increments), and the warm-up before the capture puts the
    generator's state back. A text shorter than CHARS, and the remainder of a call, run eagerly.
    Non-finite logits raise once the replays of a call are done, as the eager loop would have.
    If the capture fails (a torch or driver that refuses it), this falls back to the fused
    op's loop with a warning.
    """

    CHARS = 16

    def __init__(self):
        self.replay = None  # the captured graph's replay
        self.failed = False

    @torch.no_grad()
    def __call__(self, model, logits, state, n: int, temperature: float, top_k: int | None,
                 gen: torch.Generator):
        whole = n // self.CHARS
        if whole and self.replay is None and not self.failed:
            self._capture(model, logits, state, temperature, top_k, gen)
        if self.failed:
            return fused_steps(model, logits, state, n, temperature, top_k, gen)
        pieces = []
        if whole:
            self.logits.copy_(logits)
            self.state.copy_(state)
            for _ in range(whole):
                self.replay()
                pieces.append(self.ids.clone())
            if temperature > 0 and bool(self.nonfinite):
                raise RuntimeError(NOT_FINITE)
            logits, state = self.logits.clone(), self.state.clone()
        if n % self.CHARS:
            ids, state, logits = python_steps(model_step(model), logits, state, n % self.CHARS,
                                              temperature, top_k, gen)
            pieces.append(ids)
        return torch.cat(pieces, 1), state, logits

    def _capture(self, model, logits, state, temperature, top_k, gen):
        step, device = model_step(model), logits.device
        self.logits, self.state = logits.clone(), state.clone()  # the graph's inputs and outputs
        self.ids = torch.empty(logits.size(0), self.CHARS, dtype=torch.long, device=device)
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=device)

        def chars():
            logits, state = self.logits, self.state
            for k in range(self.CHARS):
                if temperature > 0:
                    self.nonfinite.logical_or_(~torch.isfinite(logits).all())
                nxt = draw(logits, temperature, top_k, gen)
                self.ids[:, k].copy_(nxt)
                logits, state = step(nxt, state)
            self.logits.copy_(logits)
            self.state.copy_(state)

        rng = gen.get_state()
        try:
            self.replay = self._record(chars, gen, device)
        except RuntimeError as e:
            warnings.warn(f"charrnn: the CUDA graph of the decode step could not be captured ({e}); "
                          "generating through the fused op's loop instead", RuntimeWarning, stacklevel=3)
            self.failed = True
        gen.set_state(rng)  # the warm-up's draws are not the text's
        self.nonfinite.zero_()

    @staticmethod
    def _record(chars, gen: torch.Generator, device) -> callable:
        """chars() warmed up on a side stream (lazy initialisation must not happen inside a
        capture), then captured; returns the graph's replay."""
        entry_stream = torch.cuda.current_stream(device)
        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(entry_stream)
            with torch.cuda.stream(side):
                chars()
            entry_stream.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            graph.register_generator_state(gen)  # before the capture begins
            with torch.cuda.graph(graph):
                chars()
        finally:
            torch.cuda.set_stream(entry_stream)  # a failed capture can leave its stream current
        return graph.replay


def sample_checkpoint(path, device="cpu", stream=None, **kw) -> list[str]:
    from .checkpoint import load_checkpoint, model_from_checkpoint
    model, vocab = model_from_checkpoint(load_checkpoint(path), resolve_device(device))
    return generate(model, vocab, stream=stream, **kw)
