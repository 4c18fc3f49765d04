"""Generation from a trained CharRNN: prime text, temperature, top-k, argmax, seed."""

from __future__ import annotations

import torch

from .data import Vocab
from .errors import CharRNNError
from .model import CharRNN, resolve_device


@torch.no_grad()
def generate(model: CharRNN, vocab: Vocab, prime: str = "", length: int = 500,
             temperature: float = 1.0, top_k: int | None = None, num_samples: int = 1,
             seed: int | None = None, stream=None) -> list[str]:
    """Return num_samples strings, each the prime followed by `length` generated characters.

    temperature 0 means argmax (deterministic). top_k keeps the k most likely characters.
    With one sample and a stream (e.g. sys.stdout), characters are written as they come.
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

    live = stream is not None and num_samples == 1
    if live:
        stream.write(shown_prime)
        stream.flush()
    out = []
    for _ in range(length):
        nxt = pick(logits, temperature, top_k, gen)  # [N]
        out.append(nxt)
        if live:
            stream.write(vocab.chars[int(nxt[0])])
            stream.flush()
        logits, state = model(nxt.unsqueeze(1), state)
        logits = logits[:, -1]
    if live:
        stream.write("\n")
        stream.flush()
    gen_ids = torch.stack(out, 1).tolist() if out else [[] for _ in range(num_samples)]
    return [shown_prime + vocab.decode(row) for row in gen_ids]


def pick(logits: torch.Tensor, temperature: float, top_k: int | None, gen: torch.Generator) -> torch.Tensor:
    """Next ids [N] from logits [N, V]."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(1)


def sample_checkpoint(path, device="cpu", stream=None, **kw) -> list[str]:
    from .checkpoint import load_checkpoint, model_from_checkpoint
    model, vocab = model_from_checkpoint(load_checkpoint(path), resolve_device(device))
    return generate(model, vocab, stream=stream, **kw)

