"""The Llama decode step of the `hf` backend (generation/hf_decode.py) against the
transformers forward it replaces: the fused norm, one step's logits over rows of different
lengths, whole sample calls (greedy tokens equal, log-probs within 1e-5), weights changed
between calls, and which models take the step."""

import copy
import types

import pytest
import torch
from alignloop.generation import PromptItem, SamplingParams, make_generator
from alignloop.generation.hf_decode import LlamaStep, linear, rms_norm, supports
from alignloop.generation.hf_slots import SlotCache
from alignloop.models import prompt_token_ids

from tests.tiny_hf import spread_generator

TINY = "builtin:tiny-random"
PROMPTS = [PromptItem("a", [{"role": "user", "content": "Hello there, how are you today?"}]),
           PromptItem("b", "Write one word:"),
           PromptItem("c", [{"role": "user", "content": "My parcel is late again."}]),
           PromptItem("d", "Tell me about the weather in spring, briefly.")]


@pytest.fixture(scope="module")
def gen():
    return spread_generator(norms=True)   # the norms too: the fused norm must use its weight


def _as(gen, decoder: str):
    other = copy.copy(gen)
    other.decoder = decoder
    return other


def test_fused_norm_equals_the_models_own():
    g = make_generator("hf", TINY, progress=False)
    norm = g.model.model.layers[0].input_layernorm
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        x = torch.randn(7, norm.weight.shape[0]) * 3
        assert (rms_norm(x, norm.weight, norm.variance_epsilon) - norm(x)).abs().max() <= 1e-5
        xb, nb = x.bfloat16(), copy.deepcopy(norm).bfloat16()
        assert torch.equal(rms_norm(xb, nb.weight, nb.variance_epsilon), nb(xb))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_linear_equals_f_linear(dtype):
    """The oneDNN-packed matmul (float32; bfloat16 where oneDNN has bf16 kernels) computes
    what `F.linear` does, bias included, for any number of rows."""
    torch.manual_seed(0)
    w, b = (torch.randn(96, 64) * 0.1).to(dtype), torch.randn(96).to(dtype)
    for rows in (1, 7, 64):
        x = torch.randn(rows, 64).to(dtype)
        ours, theirs = linear(w, b)(x), torch.nn.functional.linear(x, w, b)
        assert ours.dtype == dtype
        tol = 1e-5 if dtype == torch.float32 else 2e-2   # bf16: a few units in the last place
        assert (ours.float() - theirs.float()).abs().max() <= tol


def test_bf16_weights_are_packed_where_onednn_has_bf16_kernels():
    """A bf16 step's matmuls go through oneDNN wherever it has bf16 kernels (the probe torch
    itself uses), else through `F.linear`: the choice follows the machine, not a guess."""
    w = torch.randn(32, 16).bfloat16()
    packed = "_linear_pointwise" in linear(w).__code__.co_names
    assert packed == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _cache_after_prefill(gen, n: int):
    """A slot cache holding PROMPTS x n rows (prompt lengths differ), as `sample` builds it."""
    encoded = [prompt_token_ids(gen.tokenizer, p.prompt) for p in PROMPTS]
    new = [(i, k) for i in range(len(PROMPTS)) for k in range(n)]
    cache = SlotCache(gen.model.config.num_hidden_layers, len(new), max(map(len, encoded)) + 4, "cpu")
    with torch.inference_mode():
        logits = gen._admit(cache, [encoded[i] for i, _ in new], gen._prefill)
    return cache, logits


def test_one_step_equals_the_transformers_forward_on_rows_of_different_lengths(gen):
    cache, logits = _cache_after_prefill(gen, 2)
    assert len(set(cache.lengths)) >= 3
    with torch.inference_mode():
        tokens = logits.argmax(-1)
        tokens[1::2] = torch.arange(4) * 17 + 5                # rows of one prompt differ
        theirs_cache = copy.deepcopy(cache)
        ours = LlamaStep(gen.model, cache.max_len)(cache, tokens)
        theirs = gen._forward(theirs_cache, tokens)
        assert (ours - theirs).abs().max() <= 1e-5
        for layer in range(cache.n_layers):                     # the new keys/values written
            assert (cache.keys[layer] - theirs_cache.keys[layer]).abs().max() <= 1e-5
            assert (cache.values[layer] - theirs_cache.values[layer]).abs().max() <= 1e-5
        assert cache.lengths == theirs_cache.lengths
        again = LlamaStep(gen.model, cache.max_len)(cache, tokens)   # a second step on top
        assert (again - gen._forward(theirs_cache, tokens)).abs().max() <= 1e-5


def test_the_transformers_forward_is_right_with_a_models_own_eager_attention(gen):
    """A model whose attention is `eager` adds the mask to its scores: the decode step by
    the transformers forward must hand it an additive mask (a boolean one reads as 0/1)."""
    cache, logits = _cache_after_prefill(gen, 2)
    tokens = logits.argmax(-1)
    eager = copy.copy(gen)
    eager.model = copy.deepcopy(gen.model)
    eager.model.config._attn_implementation = "eager"
    with torch.inference_mode():
        ours = LlamaStep(gen.model, cache.max_len)(copy.deepcopy(cache), tokens)
        theirs = eager._forward(cache, tokens)
    assert (ours - theirs).abs().max() <= 1e-5


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_sample_calls_equal_the_transformers_forwards(gen, temperature):
    assert gen.decoder == "llama"
    p = SamplingParams(n=3, temperature=temperature, max_new_tokens=10, seed=3)
    ours = _as(gen, "llama").sample(PROMPTS, p)
    theirs = _as(gen, "model").sample(PROMPTS, p)
    assert len({c.token_ids for c in ours}) > 3
    assert [c.token_ids for c in ours] == [c.token_ids for c in theirs]
    for a, b in zip(ours, theirs, strict=True):
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-5)


def test_weights_changed_between_calls_are_used(gen):
    g = make_generator("hf", TINY, progress=False)
    g.model.load_state_dict(gen.model.state_dict())
    p = SamplingParams(n=1, temperature=0, max_new_tokens=6)
    before = g.sample(PROMPTS, p)
    with torch.no_grad():
        for lay in g.model.model.layers:
            lay.mlp.up_proj.weight.mul_(-1)
            lay.self_attn.k_proj.weight.mul_(1.7)
    after = g.sample(PROMPTS, p)
    assert [c.token_ids for c in after] != [c.token_ids for c in before]
    assert [c.token_ids for c in after] == [c.token_ids for c in _as(g, "model").sample(PROMPTS, p)]


def test_the_step_is_kept_across_calls_until_a_weight_changes():
    g = make_generator("hf", TINY, progress=False)
    step = g._llama_step(20)
    assert g._llama_step(20) is step and g._llama_step(12) is step   # packed once
    longer = g._llama_step(30)
    assert longer is not step and longer.max_len == 30               # a longer rotary table
    with torch.no_grad():
        g.model.model.layers[1].mlp.down_proj.weight.mul_(2)          # edited in place
    assert g._llama_step(20) is not longer
    edited = g._llama_step(20)
    g.model.lm_head.weight = torch.nn.Parameter(g.model.lm_head.weight.clone())  # replaced
    assert g._llama_step(20) is not edited


def test_which_models_take_the_llama_step(gen):
    assert supports(gen.model)
    for change in ({"model_type": "qwen2"}, {"attention_bias": True}, {"hidden_act": "gelu"},
                   {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}},
                   {"sliding_window": 256}):
        cfg = types.SimpleNamespace(**{**gen.model.config.to_dict(), **change})
        assert not supports(types.SimpleNamespace(config=cfg)), change


def test_real_smollm2_step_equals_the_transformers_forward():
    """SmolLM2-135M fp32 (30 layers): one step's logits within 1e-4 of the transformers
    forward, and a sampled call's tokens equal."""
    smol = make_generator("hf", "builtin:smollm2-135m-instruct", progress=False,
                          max_batch_sequences=8)
    cache, logits = _cache_after_prefill(smol, 2)
    with torch.inference_mode():
        tokens = logits.argmax(-1)
        theirs_cache = copy.deepcopy(cache)
        ours = LlamaStep(smol.model, cache.max_len)(cache, tokens)
        theirs = smol._forward(theirs_cache, tokens)
    assert (ours - theirs).abs().max() <= 1e-4
    p = SamplingParams(n=2, max_new_tokens=8, seed=1)
    sampled = smol.sample(PROMPTS, p)
    assert [c.token_ids for c in sampled] == [c.token_ids for c in _as(smol, "model").sample(PROMPTS, p)]
