"""The demo's round-0 static preference set: base-model samples on training prompts,
mostly from the easy slices, labeled by the simulated panel.

This is the situation of a team with a fixed preference set: it covers what was
easy to collect (product questions, thanks, small talk, order status) and has
little on complaints and bad news, so round 0 leaves those slices for the
online rounds. Each pair gets votes from three annotators of the panel, drawn
at random, aggregated into a soft label (Dawid-Skene, as the loop does).

    python -m alignloop.demo.static        # rewrites loop/demo/data/demo_static_pairs.jsonl

(about two minutes on a 2-core CPU; `builtin:demo-static` names the file).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from alignloop.demo.prompts import EASY_SLICES

STATIC_PATH = Path(__file__).parent / "data" / "demo_static_pairs.jsonl"
MODEL = "builtin:smollm2-135m-instruct"
EASY_SHARE = 0.85


def build(n_prompts: int = 120, seed: int = 0, max_new_tokens: int = 48, votes: int = 3):
    from alignloop.demo.panel import Panel
    from alignloop.generation import SamplingParams, make_generator
    from alignloop.labeling.aggregate import Vote, aggregate_votes
    from alignloop.labeling.select import similarity
    from alignloop.prompt_pool import load_pool
    from alignloop.records import Pair

    rng = random.Random(seed)
    pool = load_pool("builtin:demo-prompts")
    easy = [it for it in pool.train if it.slice in EASY_SLICES]
    hard = [it for it in pool.train if it.slice not in EASY_SLICES]
    n_easy = round(EASY_SHARE * n_prompts)
    items = rng.sample(easy, n_easy) + rng.sample(hard, n_prompts - n_easy)
    gen = make_generator("hf", MODEL)
    # A 135M model sampled at temperature 1 over the full vocabulary drifts into nonsense
    # within a sentence; 0.7 / top-p 0.9 gives the replies a user of the base model would see.
    completions = gen.sample(items, SamplingParams(n=2, temperature=0.7, top_p=0.9,
                                                   max_new_tokens=max_new_tokens, seed=seed))
    by_prompt: dict[str, list[str]] = {}
    for c in completions:
        by_prompt.setdefault(c.prompt_id, []).append(c.text.strip())
    panel = Panel("demo")
    candidates, ballots = [], []
    for it in items:
        a, b = by_prompt[it.prompt_id]
        if not a or not b or similarity(a, b) >= 0.9:
            continue
        key = f"{it.prompt_id}"
        candidates.append((key, it, a, b))
        for annotator in rng.sample(panel.annotators, votes):
            ballots.append(Vote(key, annotator.name, panel.vote(it.prompt, a, b, annotator, rng)))
    post = aggregate_votes(ballots).posteriors
    pairs = []
    for key, it, a, b in candidates:
        p = post[key].p_a
        if p == 0.5:
            continue
        chosen, rejected, pc = (a, b, p) if p > 0.5 else (b, a, 1 - p)
        pairs.append(Pair(it.prompt, chosen, rejected, p_chosen=round(pc, 4),
                          n_votes=post[key].n_votes, source="static", slice=it.slice))
    return pairs


def write(path: Path = STATIC_PATH, **kw) -> Path:
    from alignloop.artifacts import write_jsonl

    rows = [{"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}], "p_chosen": p.p_chosen,
             "slice": p.slice} for p in build(**kw)]
    return write_jsonl(path, rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"wrote {write(n_prompts=args.prompts, seed=args.seed)}")
