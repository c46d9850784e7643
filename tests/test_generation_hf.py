"""The `hf` generation backend on the tiny model: shapes, determinism, exact log-probs, bad input."""

import dataclasses
import math

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


def _rescored(gen, item, token_ids):
    """Teacher-forced log-probs of `token_ids` after the prompt, one forward pass."""
    from alignloop.models import prompt_token_ids

    prompt_ids = prompt_token_ids(gen.tokenizer, item.prompt)
    with torch.no_grad():
        logp = gen.model(torch.tensor([prompt_ids + list(token_ids)])).logits.float().log_softmax(-1)[0]
    P = len(prompt_ids)
    return [logp[P - 1 + t, tok].item() for t, tok in enumerate(token_ids)]


def _first_logits(gen, item):
    from alignloop.models import prompt_token_ids

    with torch.no_grad():
        return gen.model(torch.tensor([prompt_token_ids(gen.tokenizer, item.prompt)])).logits[0, -1].float()


def _with_eos_bias(gen, bias: float):
    """`gen` with an output bias on EOS: the tiny model's near-uniform next-token
    distribution over 49k tokens rarely ends a sample by itself."""
    head = gen.model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        biased.bias[gen.tokenizer.eos_token_id] = bias
    gen.model.lm_head = biased
    return gen


@pytest.fixture(scope="module")
def eos_gen():
    return _with_eos_bias(make_generator("hf", TINY, progress=False), 10.0)


def test_an_eos_the_policy_chose_is_recorded_with_its_logprob(eos_gen):
    """The model chooses EOS first (greedy): an empty text, but a sample of one token
    whose log-prob the record keeps (issue 14 #6: it was dropped, logprob_sum 0.0)."""
    eos, item = eos_gen.tokenizer.eos_token_id, PROMPTS[0]
    expected = _first_logits(eos_gen, item).log_softmax(-1)[eos].item()
    assert math.isfinite(expected) and expected < -1e-3       # likely, not certain

    c, = eos_gen.sample([item], SamplingParams(n=1, temperature=0, max_new_tokens=4))
    assert (c.text, c.token_ids, c.finish_reason) == ("", (eos,), "stop")
    assert c.logprob_sum == pytest.approx(expected, abs=1e-4)
    assert list(c.token_logprobs) == pytest.approx(_rescored(eos_gen, item, c.token_ids), abs=1e-4)


def test_end_token_kept_for_any_stop_id_but_never_in_the_text():
    """A model whose generation config ends on an ordinary token (as Llama 3's ends on
    <|eot_id|>): the sample keeps it and its log-prob; the text is decoded without it."""
    gen = make_generator("hf", TINY, progress=False)
    item = PROMPTS[1]
    t0 = int(_first_logits(gen, item).argmax())            # what greedy picks first
    assert t0 not in gen.tokenizer.all_special_ids
    gen.stop_ids = gen.stop_ids | {t0}
    c, = gen.sample([item], SamplingParams(n=1, temperature=0, max_new_tokens=4))
    assert (c.text, c.token_ids, c.finish_reason) == ("", (t0,), "stop")
    assert c.logprob_sum < 0
    assert list(c.token_logprobs) == pytest.approx(_rescored(gen, item, c.token_ids), abs=1e-4)


def test_end_token_only_at_a_stop_by_eos(eos_gen):
    """"stop" by an end token: the last id is it; "length": no end token anywhere; the
    text never holds it. Every recorded log-prob is the rescored one."""
    out = eos_gen.sample(PROMPTS, SamplingParams(n=8, max_new_tokens=4, seed=11))
    assert {c.finish_reason for c in out} == {"stop", "length"}
    assert any(len(c.token_ids) > 1 and c.finish_reason == "stop" for c in out)
    for c in out:
        ends = [t in eos_gen.stop_ids for t in c.token_ids]
        assert not any(ends[:-1])
        assert ends[-1] == (c.finish_reason == "stop")
        assert len(c.token_ids) == 4 or c.finish_reason == "stop"
        body = c.token_ids[:-1] if ends[-1] else c.token_ids
        assert c.text == eos_gen.tokenizer.decode(body, skip_special_tokens=True)
        assert eos_gen.tokenizer.eos_token not in c.text
        assert c.logprob_sum == pytest.approx(sum(c.token_logprobs))
    item = {p.prompt_id: p for p in PROMPTS}
    for c in out[::3]:
        assert list(c.token_logprobs) == pytest.approx(
            _rescored(eos_gen, item[c.prompt_id], c.token_ids), abs=1e-4)


def test_a_stop_string_ends_without_an_end_token(gen):
    """A stop string is not an end token: the tokens up to the one completing it are
    kept (they are what the policy chose), the text is cut before it, no EOS is added."""
    p = SamplingParams(n=1, max_new_tokens=12, seed=4)
    free, = gen.sample(PROMPTS[:1], p)
    decode = lambda ids: gen.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    j = next(j for j in range(1, len(free.token_ids))
             if decode(free.token_ids[j:j + 1]).strip()
             and decode(free.token_ids[j:j + 1]) not in decode(free.token_ids[:j]))
    stop = decode(free.token_ids[j:j + 1])
    c, = gen.sample(PROMPTS[:1], dataclasses.replace(p, stop=(stop,)))
    assert c.finish_reason == "stop" and c.token_ids == free.token_ids[:j + 1]
    assert not set(c.token_ids) & gen.stop_ids
    assert c.text == decode(free.token_ids[:j]) and stop not in c.text
    assert c.token_logprobs == pytest.approx(free.token_logprobs[:j + 1], abs=1e-4)


@pytest.mark.parametrize("kind", ["mistral", "gemma3"])
def test_a_sliding_window_model_decodes_within_its_window(kind):
    """A model whose layers attend within a sliding window (here 6 tokens, shorter than the
    prompts) takes the transformers-forward decode step; each step's mask must be cut to the
    window, layer type by layer type, or the samples' log-probs differ from a forward pass."""
    import transformers as T

    gen = make_generator("hf", TINY, progress=False)
    common = dict(vocab_size=gen.model.config.vocab_size, hidden_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                  max_position_embeddings=256, sliding_window=6)
    cfg = (T.MistralConfig(**common) if kind == "mistral" else T.Gemma3TextConfig(
        head_dim=16, layer_types=["sliding_attention", "full_attention"], **common))
    torch.manual_seed(0)
    gen.model = T.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for p in gen.model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)                    # outputs that vary from token to token
    gen.decoder, gen.context = "model", 256
    out = gen.sample(PROMPTS[:2], SamplingParams(n=2, max_new_tokens=8, seed=3, temperature=0.8))
    assert max(len(c.token_ids) for c in out) == 8
    for c in out:
        item = next(p for p in PROMPTS if p.prompt_id == c.prompt_id)
        assert list(c.token_logprobs) == pytest.approx(_rescored(gen, item, c.token_ids), abs=1e-4)
