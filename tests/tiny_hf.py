"""The tiny random Llama as an `hf` sampler whose outputs vary: at its own init (std 0.02)
every logit is near-equal and every greedy continuation one repeated token."""

import torch
from alignloop.generation import make_generator

TINY = "builtin:tiny-random"


def spread_generator(*, norms: bool = False):
    """`hf` generator on the tiny model with its matrices drawn at std 0.2 (seed 0), and
    with `norms` its norm weights drawn in [0.5, 1.5] instead of all ones."""
    g = make_generator("hf", TINY, progress=False)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in g.model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
            elif norms:
                p.uniform_(0.5, 1.5)
    return g


def demo_pair_batch(n: int, *, max_length: int = 512):
    """The first `n` bundled demo pairs packed into one micro-batch for the tiny model
    (prompts cut at three quarters of `max_length`)."""
    from alignloop.data import read_pairs
    from alignloop.models import load_tokenizer
    from alignloop.training.batching import collate, encode_pairs

    tok = load_tokenizer(TINY)
    pairs = read_pairs("builtin:demo-pairs")[0][:n]
    encoded, _ = encode_pairs(pairs, tok, max_length=max_length,
                              max_prompt_length=max_length * 3 // 4, progress=False)
    return collate(encoded, tok.pad_token_id)
