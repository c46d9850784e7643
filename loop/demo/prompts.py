"""The demo prompt pool: customer messages in six tagged slices, split into
training prompts (what the loop may generate on) and held-out evaluation prompts
(what reports measure on; never generated on or trained on).

Built from the templates in `pairs.py` plus an `order_status` slice, each
prompt a short chat (an optional system message, at most one earlier turn).
`python -m alignloop.demo.prompts` rewrites `loop/demo/data/demo_prompts.jsonl`;
`builtin:demo-prompts` names that file.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from alignloop.demo.pairs import (
    CONTEXTS,
    EXTRAS,
    GREETINGS,
    HISTORY,
    PRODUCTS,
    SYSTEM_PROMPTS,
    _fill,
    _join,
    _scenario,
)
from alignloop.records import Message

SLICES = ("product_question", "thanks", "small_talk", "order_status", "complaint", "bad_news")
EASY_SLICES = ("product_question", "thanks", "small_talk", "order_status")
HARD_SLICES = ("complaint", "bad_news")
POOL_PATH = Path(__file__).parent / "data" / "demo_prompts.jsonl"
EVAL_SHARE = 0.25

ORDER_STATUS = (
    "Where is my order? I bought the {product} on Monday and haven't heard anything since.",
    "Could you tell me when the {product} will ship? I'd like to plan to be home for the delivery.",
    "My tracking number for the {product} isn't working on the courier's site. Is that normal?",
    "Did my order for the {product} go through? I didn't get a confirmation email.",
    "Can I still change the delivery address for the {product}? I ordered it an hour ago.",
    "How long does delivery usually take for the {product}? I'm ordering it as a present.",
)


def _order_status(rng: random.Random) -> str:
    product = rng.choice(PRODUCTS)
    return _fill(_join(rng.choice(GREETINGS), rng.choice(ORDER_STATUS)), product)


def _user_message(rng: random.Random, slice_: str) -> str:
    if slice_ == "order_status":
        return _order_status(rng)
    if slice_ == "product_question":
        product = rng.choice(PRODUCTS)
        question, _ = rng.choice(product[2])
        return _fill(_join(rng.choice(GREETINGS), rng.choice(CONTEXTS), question,
                           rng.choice(EXTRAS)), product)
    return _scenario(rng, slice_)[0]


def _chat(rng: random.Random, user: str) -> list[Message]:
    messages: list[Message] = []
    if rng.random() < 0.4:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    if rng.random() < 0.25:
        u, a = rng.choice(HISTORY)
        messages += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    messages.append({"role": "user", "content": user})
    return messages


def prompt_id(prompt) -> str:
    return hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).hexdigest()[:16]


def prompt_pool(per_slice: int = 70, seed: int = 0) -> list[dict]:
    """`per_slice` distinct prompts per slice: rows {prompt_id, prompt, slice, split}. The split
    is a function of the prompt's id, so it never changes when the pool grows."""
    rng = random.Random(seed)
    rows, seen = [], set()
    for slice_ in SLICES:
        made, tries = 0, 0
        while made < per_slice:
            tries += 1
            if tries > 200 * per_slice:
                raise ValueError(f"cannot make {per_slice} distinct '{slice_}' prompts")
            prompt = _chat(rng, _user_message(rng, slice_))
            pid = prompt_id(prompt)
            if pid in seen:
                continue
            seen.add(pid)
            split = "eval" if int(pid[:8], 16) / 0xFFFFFFFF < EVAL_SHARE else "train"
            rows.append({"prompt_id": pid, "prompt": prompt, "slice": slice_, "split": split})
            made += 1
    return rows


def write_prompt_pool(path: str | Path = POOL_PATH, per_slice: int = 70, seed: int = 0) -> Path:
    from alignloop.artifacts import write_jsonl

    return write_jsonl(Path(path), prompt_pool(per_slice, seed))


if __name__ == "__main__":
    print(f"wrote {write_prompt_pool()}")
