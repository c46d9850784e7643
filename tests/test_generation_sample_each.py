"""Several sample calls decoded as one batch (`generation.sample_each`): the evaluation
draws a policy's tempered and temperature-1 samples this way. Each call must get what it
alone gets: its own settings, seeds and lengths, whatever else shares its steps."""

import dataclasses

import pytest
from alignloop.generation import GenerationError, PromptItem, SamplingParams, sample_each

from tests.test_generation_hf_refill import PROMPTS, _with, ending_gen, gen  # noqa: F401

CALLS = [(PROMPTS, SamplingParams(n=2, temperature=0.3, top_p=0.9, max_new_tokens=9, seed=1)),
         (PROMPTS[1:4], SamplingParams(n=1, temperature=1.0, max_new_tokens=5, seed=3)),
         (PROMPTS, SamplingParams(n=1, temperature=0, top_k=5, max_new_tokens=7, seed=5))]


@pytest.mark.parametrize("slots", [3, 64])
def test_each_call_gets_what_it_alone_gets(ending_gen, slots):  # noqa: F811
    """Same tokens, end reasons, seeds and texts as separate calls (the log-probs up to
    float rounding: other batch shapes), with refills mid-call (3 slots) or all at once;
    the calls differ in n, prompts, temperature, top-p/top-k and length."""
    g = _with(ending_gen, slots)
    together = sample_each(g, CALLS)
    alone = [g.sample(prompts, params) for prompts, params in CALLS]
    assert [len(x) for x in together] == [len(p) * s.n for p, s in CALLS]
    for got, want in zip(together, alone, strict=True):
        strip = lambda cs: [dataclasses.replace(c, logprob_sum=0.0, token_logprobs=())  # noqa: E731
                            for c in cs]
        assert strip(got) == strip(want)
        for a, b in zip(got, want, strict=True):
            assert a.logprob_sum == pytest.approx(b.logprob_sum, abs=1e-4)
    # the settings really differ per row: the greedy call is its argmax path, the others not
    lengths = {len(c.token_ids) for c in together[1]}
    assert max(lengths) <= 5 and max(len(c.token_ids) for c in together[2]) <= 7
    assert any(c.finish_reason == "length" and len(c.token_ids) == 9 for c in together[0])
    assert together == sample_each(g, CALLS)        # same seeds: the same records


def test_a_prompt_shared_by_calls_is_prefilled_once(ending_gen, monkeypatch):  # noqa: F811
    g = _with(ending_gen, 64)
    seen = []
    original = type(g)._admit

    def admit(self, cache, prompts, prefill):
        seen.append((len(prompts), len({tuple(p) for p in prompts})))
        return original(self, cache, prompts, prefill)

    monkeypatch.setattr(type(g), "_admit", admit)
    sample_each(g, [(PROMPTS, SamplingParams(n=1, max_new_tokens=3, seed=s)) for s in (1, 2)])
    assert seen == [(2 * len(PROMPTS), len(PROMPTS))]


def test_no_calls_or_a_call_without_prompts_is_refused(gen):  # noqa: F811
    with pytest.raises(GenerationError, match="no prompts"):
        sample_each(gen, [])
    with pytest.raises(GenerationError, match="no prompts"):
        sample_each(gen, [(PROMPTS, SamplingParams(n=1)), ([], SamplingParams(n=1))])


class _OneAtATime:
    """A backend with `sample` only (our protocol boundary): calls run in turn."""

    name = "fake"

    def __init__(self):
        self.calls = []

    def sample(self, prompts, params):
        self.calls.append((len(prompts), params.seed))
        return [f"{p.prompt_id}/{params.seed}" for p in prompts]


def test_a_backend_without_batching_runs_the_calls_in_turn():
    fake = _OneAtATime()
    items = [PromptItem("x", "hi"), PromptItem("y", "yo")]
    out = sample_each(fake, [(items, SamplingParams(seed=1)), (items[:1], SamplingParams(seed=2))])
    assert out == [["x/1", "y/1"], ["x/2"]]
    assert fake.calls == [(2, 1), (1, 2)]


def test_the_draw_uses_each_rows_own_settings(ending_gen):  # noqa: F811
    """Rows of a greedy call and a sampled call in one step: the greedy rows take the argmax
    (what a greedy call alone takes), the sampled rows do not all do so."""
    g = _with(ending_gen, 64)
    greedy = SamplingParams(n=1, temperature=0, max_new_tokens=6)
    hot = SamplingParams(n=4, temperature=1.0, max_new_tokens=6, seed=9)
    both = sample_each(g, [(PROMPTS, greedy), (PROMPTS, hot)])
    assert both[0] == g.sample(PROMPTS, greedy)
    first = {c.prompt_id: c.token_ids[0] for c in both[0]}
    assert any(c.token_ids[0] != first[c.prompt_id] for c in both[1])
