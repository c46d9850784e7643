"""benchmarks/demo_eos.py's arithmetic: a shorter limit's samples as prefixes of one long run,
and the shares it reports (the sampling itself is the real `hf` backend in the benchmark)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import demo_eos  # noqa: E402


class WordsTokenizer:
    """Token id i decodes to the word "w<i>"; id 0 is the end token (skipped)."""

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(f"w{i}" for i in ids if i != 0 or not skip_special_tokens)


def _sample(set_, ids, stop, system="none"):
    return {"set": set_, "key": (str(ids), 0), "system": system, "token_ids": tuple(ids),
            "stop": stop}


SAMPLES = [
    _sample("heldout", [5, 6, 0], True),               # ended by EOS after 3 tokens
    _sample("heldout", list(range(1, 41)), False),     # cut at the 40-token limit of the run
    _sample("round", [*range(1, 35), 0], True, "sys2"),  # ended by EOS after 35 tokens
]


def test_a_shorter_limit_cuts_the_samples_and_only_counts_an_end_within_it():
    at3 = demo_eos.at_limit(SAMPLES, 3, WordsTokenizer())
    assert [r["stop"] for r in at3] == [True, False, False]
    assert [r["tokens"] for r in at3] == [3, 3, 3]
    at40 = demo_eos.at_limit(SAMPLES, 40, WordsTokenizer())
    assert [r["stop"] for r in at40] == [True, False, True]
    assert [r["words"] for r in at40] == [2, 40, 34]     # the end token is not a word
    row = demo_eos.summarise(at40, "pool", 40)
    assert row["ends_by_eos"]["all"] == pytest.approx(2 / 3)
    assert row["ends_by_eos"]["heldout"] == 0.5 and row["ends_by_eos"]["round"] == 1.0
    assert row["ends_by_eos"]["system=sys2"] == 1.0 and row["group_sizes"]["system=none"] == 2
    assert row["over_30_words"] == pytest.approx(2 / 3)
    assert row["median_tokens_if_eos"] == 35 and row["mean_tokens"] == pytest.approx(78 / 3)


def test_brief_system_replaces_the_system_message_and_keeps_the_id():
    from alignloop.demo.pairs import SYSTEM_PROMPTS
    from alignloop.generation import PromptItem

    items = [PromptItem("a", [{"role": "system", "content": SYSTEM_PROMPTS[0]},
                              {"role": "user", "content": "hi"}], "thanks"),
             PromptItem("b", "plain text", "thanks")]
    out = demo_eos.with_brief_system(items)
    assert [it.prompt_id for it in out] == ["a", "b"]
    assert [demo_eos.system_of(it.prompt) for it in out] == ["sys2", "sys2"]
    assert out[0].prompt[1:] == [{"role": "user", "content": "hi"}]
    assert out[1].prompt[1:] == [{"role": "user", "content": "plain text"}]
    assert demo_eos.system_of(items[0].prompt) == "sys0" and demo_eos.system_of("x") == "none"
