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
