"""The `hf` generation backend on the tiny model: shapes, determinism, exact log-probs, bad input."""

import pytest
import torch
from alignloop.generation import GenerationError, PromptItem, SamplingParams, make_generator

TINY = "builtin:tiny-random"
PROMPTS = [PromptItem("a", [{"role": "user", "content": "Hello there, how are you today?"}]),
           PromptItem("b", "Write one word:"),
           PromptItem("c", [{"role": "user", "content": "My parcel is late again."}])]


@pytest.fixture(scope="module")
def gen():
    return make_generator("hf", TINY, progress=False)


def test_n_samples_per_prompt_in_order(gen):
    out = gen.sample(PROMPTS, SamplingParams(n=3, max_new_tokens=6, seed=1))
    assert [(c.prompt_id, c.sample_index) for c in out] == [(p.prompt_id, k) for p in PROMPTS for k in range(3)]
    for c in out:
        assert len(c.token_ids) == len(c.token_logprobs) <= 6
        assert c.finish_reason in ("stop", "length")
        assert c.logprob_sum == pytest.approx(sum(c.token_logprobs))


def test_same_seed_same_texts_independent_of_batching(gen):
    p = SamplingParams(n=2, max_new_tokens=6, seed=5)
    a = gen.sample(PROMPTS, p)
    b = make_generator("hf", TINY, progress=False, max_batch_sequences=2).sample(PROMPTS[::-1], p)
    by_key = {(c.prompt_id, c.sample_index): c.token_ids for c in b}
    assert all(by_key[(c.prompt_id, c.sample_index)] == c.token_ids for c in a)
    c = gen.sample(PROMPTS, SamplingParams(n=2, max_new_tokens=6, seed=6))
    assert [x.token_ids for x in a] != [x.token_ids for x in c]


def test_logprobs_equal_a_separate_forward_pass(gen):
    from alignloop.models import render_prompt

    out = gen.sample(PROMPTS[:2], SamplingParams(n=2, max_new_tokens=5, seed=3, temperature=0.8, top_k=50))
    for c in out:
        item = next(p for p in PROMPTS if p.prompt_id == c.prompt_id)
        prompt_ids = gen.tokenizer(render_prompt(gen.tokenizer, item.prompt),
                                   add_special_tokens=not isinstance(item.prompt, list))["input_ids"]
        ids = torch.tensor([prompt_ids + list(c.token_ids)])
        with torch.no_grad():
            logp = gen.model(ids).logits.float().log_softmax(-1)[0]
        P = len(prompt_ids)
        expected = [logp[P - 1 + t, tok].item() for t, tok in enumerate(c.token_ids)]
        assert list(c.token_logprobs) == pytest.approx(expected, abs=1e-4)


def test_bad_input(gen):
    with pytest.raises(GenerationError, match="no prompts"):
        gen.sample([], SamplingParams())
    with pytest.raises(GenerationError, match="n must be"):
        SamplingParams(n=0)
    long = PromptItem("long", "word " * 3000)
    with pytest.raises(GenerationError, match="long.*tokens"):
        gen.sample([long], SamplingParams(n=1, max_new_tokens=4))
    with pytest.raises(GenerationError, match="unknown generation backend 'nope'"):
        make_generator("nope", TINY)
