"""The `hf` backend's continuous batching (issue 15): a slot freed by a finished sample
is refilled with the next pending one, and that changes no sample.

References: the same call one sample at a time (`max_batch_sequences=1`), the previous
batch-at-a-time decoder (benchmarks/hf_batch_reference.py, greedy) and `model.generate`
(greedy, the real SmolLM2). Samples end at different steps (chosen end tokens) so rows
are refilled while others run."""

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from alignloop.generation import PromptItem, SamplingParams, make_generator
from alignloop.generation.hf_slots import draw_tokens
from alignloop.models import prompt_token_ids

from tests.tiny_hf import spread_generator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from hf_batch_reference import filter_logits, sample_batched  # noqa: E402

TINY = "builtin:tiny-random"
PROMPTS = [PromptItem("a", [{"role": "user", "content": "Hello there, how are you today?"}]),
           PromptItem("b", "Write one word:"),
           PromptItem("c", [{"role": "user", "content": "My parcel is late again."}]),
           PromptItem("d", "Tell me about the weather in spring, briefly."),
           PromptItem("e", [{"role": "user", "content": "Thanks!"}])]


@pytest.fixture(scope="module")
def gen():
    return spread_generator()


def _with(gen, slots: int):
    """`gen` with another slot count (same model object, so the same weights)."""
    import copy

    other = copy.copy(gen)
    other.max_batch_sequences = slots
    return other


@pytest.fixture(scope="module")
def ending_gen(gen):
    """`gen` whose end tokens are greedy picks at different steps of different prompts,
    so greedy samples end at several lengths and freed slots are refilled mid-call."""
    free = gen.sample(PROMPTS, SamplingParams(n=1, temperature=0, max_new_tokens=10))
    other = _with(gen, gen.max_batch_sequences)
    other.stop_ids = gen.stop_ids | {free[0].token_ids[2], free[1].token_ids[0], free[3].token_ids[6]}
    return other


def _spy_admissions(monkeypatch, g):
    """Rows already running at each admission of new samples (our own method, observed)."""
    seen = []
    original = type(g)._admit

    def admit(self, cache, new, *args):
        seen.append((cache.rows, len(new)))
        return original(self, cache, new, *args)

    monkeypatch.setattr(type(g), "_admit", admit)
    return seen


def test_greedy_refill_equals_one_at_a_time_and_the_batch_decoder(ending_gen, monkeypatch):
    p = SamplingParams(n=2, temperature=0, max_new_tokens=10)
    alone = _with(ending_gen, 1).sample(PROMPTS, p)
    batch = sample_batched(_with(ending_gen, 64), PROMPTS, p)
    seen = _spy_admissions(monkeypatch, ending_gen)
    refill = _with(ending_gen, 4).sample(PROMPTS, p)
    assert len({len(c.token_ids) for c in refill}) >= 3          # ends at several steps
    assert any(running > 0 for running, _ in seen[1:])            # admitted beside running rows
    for got in (alone, batch):
        assert [c.token_ids for c in refill] == [c.token_ids for c in got]
        assert [c.finish_reason for c in refill] == [c.finish_reason for c in got]
        assert [c.text for c in refill] == [c.text for c in got]
        for a, b in zip(refill, got, strict=True):
            assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-4)


def _rescored(gen, item, token_ids):
    ids = prompt_token_ids(gen.tokenizer, item.prompt)
    with torch.no_grad():
        logp = gen.model(torch.tensor([ids + list(token_ids)])).logits.float().log_softmax(-1)[0]
    return [logp[len(ids) - 1 + t, tok].item() for t, tok in enumerate(token_ids)]


def test_sampled_logprobs_equal_a_forward_pass_under_refill(ending_gen):
    p = SamplingParams(n=3, temperature=0.3, top_p=0.95, max_new_tokens=8, seed=2)
    out = _with(ending_gen, 4).sample(PROMPTS, p)
    assert {c.finish_reason for c in out} == {"stop", "length"}
    by_id = {x.prompt_id: x for x in PROMPTS}
    for c in out:
        assert list(c.token_logprobs) == pytest.approx(
            _rescored(ending_gen, by_id[c.prompt_id], c.token_ids), abs=1e-4)
        assert len(c.token_ids) == 8 or c.finish_reason == "stop"


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (1.0, 20, 1.0), (0.3, 0, 0.9)])
def test_a_sample_depends_on_its_own_seed_not_on_its_company(ending_gen, temperature, top_k, top_p):
    """Same config and seed: the same records twice; a sample keeps its tokens when other
    prompts join the call or the slot count changes. Its draws come from its own generator;
    its logits change by float rounding only (other batch shapes), which moves a token only
    when a draw falls within rounding of a CDF step or a top-p boundary has near-ties. At
    temperature 1 this tiny model spreads top-p 0.9 over ~40k near-equal tokens, where that
    happened (1 sample of 15 between 1 and 4 slots), hence top-p at temperature 0.3."""
    p = SamplingParams(n=3, max_new_tokens=8, seed=7, temperature=temperature, top_k=top_k, top_p=top_p)
    g = _with(ending_gen, 4)
    first, again = g.sample(PROMPTS, p), g.sample(PROMPTS, p)
    assert first == again
    alone = _with(ending_gen, 2).sample(PROMPTS[1:2], p)
    assert [c.token_ids for c in alone] == [c.token_ids for c in first if c.prompt_id == "b"]
    assert [c.token_ids for c in _with(ending_gen, 1).sample(PROMPTS, p)] == [c.token_ids for c in first]
    other_seed = g.sample(PROMPTS, dataclasses.replace(p, seed=8))
    assert [c.token_ids for c in other_seed] != [c.token_ids for c in first]


def test_stop_string_and_length_limit_under_refill(gen):
    p = SamplingParams(n=2, max_new_tokens=9, seed=4)
    free = _with(gen, 64).sample(PROMPTS, p)
    decode = lambda ids: gen.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    stop = decode(free[0].token_ids[3:4])
    assert stop.strip()
    out = _with(gen, 3).sample(PROMPTS, SamplingParams(n=2, max_new_tokens=9, seed=4, stop=(stop,)))
    for c, f in zip(out, free, strict=True):
        cut = next((j for j in range(1, len(f.token_ids) + 1) if stop in decode(f.token_ids[:j])), None)
        if cut is None:
            assert (c.token_ids, c.finish_reason) == (f.token_ids, f.finish_reason)
        else:
            assert (c.token_ids, c.finish_reason) == (f.token_ids[:cut], "stop")
            assert stop not in c.text
    assert any(c.finish_reason == "length" and len(c.token_ids) == 9 for c in out)
    assert out[0].token_ids == free[0].token_ids[:4] and out[0].finish_reason == "stop"


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 3, 1.0), (1.3, 0, 0.8),
                                                     (1.0, 4, 0.7)])
def test_draw_tokens_inverts_the_filtered_distribution(temperature, top_k, top_p):
    """On a grid of M uniforms, the share of each token is its probability under the
    previous filter (`filter_logits`) within 1/M; top-p alone is checked both where the
    most likely candidates hold the nucleus and where the full sort is needed."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 600, generator=g) * 3
    logits[1] *= 0.01                           # near flat: the 256 candidates hold < top_p
    M = 20000
    u = (torch.arange(M, dtype=torch.float64) + 0.5) / M
    for row in range(2):
        tokens = draw_tokens(logits[row:row + 1].expand(M, -1), u, temperature, top_k, top_p)
        share = torch.bincount(tokens, minlength=600).double() / M
        expected = filter_logits(logits[row:row + 1], temperature, top_k, top_p).softmax(-1)[0].double()
        assert (share - expected).abs().max() <= 1.5 / M
        assert set(tokens.tolist()) <= set(expected.nonzero()[:, 0].tolist())


def test_real_model_greedy_equals_generate_with_refill():
    """SmolLM2-135M (fp32): greedy samples with 3 slots for 4 prompts x 2 equal
    `model.generate` one prompt at a time, token for token."""
    smol = make_generator("hf", "builtin:smollm2-135m-instruct", progress=False,
                          max_batch_sequences=3)
    p = SamplingParams(n=2, temperature=0, max_new_tokens=12)
    out = smol.sample(PROMPTS[:4], p)
    for item in PROMPTS[:4]:
        ids = torch.tensor([prompt_token_ids(smol.tokenizer, item.prompt)])
        with torch.no_grad():
            ref = smol.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=12, pad_token_id=smol.tokenizer.pad_token_id)
        expected = tuple(ref[0, ids.shape[1]:].tolist())
        cut = next((i + 1 for i, t in enumerate(expected) if t in smol.stop_ids), len(expected))
        assert [c.token_ids for c in out if c.prompt_id == item.prompt_id] == [expected[:cut]] * 2
