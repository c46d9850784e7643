"""The Llama prefill of the `hf` backend (`LlamaStep.prefill`, generation/hf_decode.py)
against the transformers forward it replaces (`HFGenerator._prefill`): each prompt's K/V
per layer and its next-token logits for prompts of mixed lengths, and whole sample calls
with refills (tokens equal, log-probs within 1e-5) whichever prefill filled the cache."""

import pytest
import torch
from alignloop.generation import PromptItem, SamplingParams, make_generator
from alignloop.generation.hf_decode import LlamaStep
from alignloop.models import prompt_token_ids

from tests.tiny_hf import spread_generator

PROMPTS = [PromptItem("a", "Write one word:"),
           PromptItem("b", [{"role": "user", "content": "Hello there, how are you today?"}]),
           PromptItem("c", "Hi"),
           PromptItem("d", "Tell me about the weather in spring, briefly."),
           PromptItem("e", [{"role": "user", "content": "My parcel is late again."}])]


@pytest.fixture(scope="module")
def gen():
    return spread_generator(norms=True)


def _encoded(gen, extra: tuple[list[int], ...] = ()) -> list[list[int]]:
    return [prompt_token_ids(gen.tokenizer, p.prompt) for p in PROMPTS] + list(extra)


def _assert_prefills_equal(gen, prompts: list[list[int]], tol: float) -> None:
    with torch.inference_mode():
        ours_logits, ours_kv = LlamaStep(gen.model, max(map(len, prompts))).prefill(prompts)
        theirs_logits, theirs_kv = gen._prefill(prompts)
    assert ours_logits.dtype == torch.float32
    assert ours_logits.shape == theirs_logits.shape == (len(prompts), gen.model.config.vocab_size)
    assert (ours_logits - theirs_logits).abs().max() <= tol
    for p, ours, theirs in zip(prompts, ours_kv, theirs_kv, strict=True):
        assert len(ours) == len(theirs) == gen.model.config.num_hidden_layers
        for (k, v), (tk, tv) in zip(ours, theirs, strict=True):
            assert k.shape == tk.shape == v.shape == tv.shape
            assert k.shape[1] == len(p)
            assert (k - tk).abs().max() <= tol and (v - tv).abs().max() <= tol


def test_prefill_equals_the_transformers_forward_on_mixed_lengths(gen):
    prompts = _encoded(gen, ([7],))                       # a one-token prompt too, last
    assert len(set(map(len, prompts))) == len(prompts)    # every length differs
    assert max(map(len, prompts)) != len(prompts[0])      # the longest is not first
    _assert_prefills_equal(gen, prompts, 1e-5)


def test_a_prompts_prefill_does_not_depend_on_the_others(gen):
    prompts = _encoded(gen)
    step = LlamaStep(gen.model, max(map(len, prompts)))
    with torch.inference_mode():
        batch_logits, batch_kv = step.prefill(prompts)
        alone_logits, alone_kv = step.prefill(prompts[1:2])
    assert (batch_logits[1] - alone_logits[0]).abs().max() <= 1e-5
    for (k, v), (ak, av) in zip(batch_kv[1], alone_kv[0], strict=True):
        assert (k - ak).abs().max() <= 1e-5 and (v - av).abs().max() <= 1e-5


@pytest.mark.parametrize(("temperature", "top_k"), [(0.0, 0), (0.8, 20)])
def test_sample_calls_equal_the_transformers_prefill(gen, monkeypatch, temperature, top_k):
    """4 slots for 5 prompts x 2 samples: the cache is refilled during the call; only the
    prefill differs between the two calls (both decode by `LlamaStep`). Sampled with top-k:
    over the tiny model's near-flat 49k-token distribution a draw can land within 1e-8 of a
    CDF boundary (seen: 7e-9), where float rounding of the logits may pick the neighbour."""
    import copy

    small = copy.copy(gen)
    small.max_batch_sequences = 4
    p = SamplingParams(n=2, temperature=temperature, top_k=top_k, max_new_tokens=8, seed=5)
    ours = small.sample(PROMPTS, p)
    monkeypatch.setattr(LlamaStep, "prefill", lambda self, prompts: gen._prefill(prompts))
    theirs = small.sample(PROMPTS, p)
    assert len({c.token_ids for c in ours}) > 3
    assert [c.token_ids for c in ours] == [c.token_ids for c in theirs]
    for a, b in zip(ours, theirs, strict=True):
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-5)


def test_real_smollm2_prefill_equals_the_transformers_forward():
    """SmolLM2-135M fp32 (30 layers, 9 query heads on 3 KV heads): K/V and logits within 1e-4."""
    smol = make_generator("hf", "builtin:smollm2-135m-instruct", progress=False)
    _assert_prefills_equal(smol, _encoded(smol), 1e-4)
