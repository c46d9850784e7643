"""Prefix-shared packing: same log-probs as separate sequences; data order plans."""

import pytest
import torch
from alignloop.training.batching import EncodedPair, collate, plan_steps
from alignloop.training.logps import PairScorer, score_batch
from transformers import LlamaConfig, LlamaForCausalLM


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def _pairs(shapes, seed=1):
    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return tuple(torch.randint(5, 512, (n,), generator=g).tolist())

    return [EncodedPair(i, f"p{i}", ids(P), ids(C), ids(R), 1.0, 1.0)
            for i, (P, C, R) in enumerate(shapes)]


def _unshared_logp(model, prompt, response):
    """The plain computation: prompt+response as its own sequence, full logits, log-softmax."""
    ids = torch.tensor([list(prompt) + list(response)])
    logp = model(ids).logits.float().log_softmax(-1)[0]
    P = len(prompt)
    return sum(logp[P - 1 + t, tok].item() for t, tok in enumerate(response))


@torch.no_grad()
def test_prefix_shared_equals_unshared(model):
    # different prompt/response lengths in one padded batch, incl. a 1-token response
    pairs = _pairs([(7, 3, 5), (20, 9, 2), (4, 1, 12), (1, 6, 6)])
    chosen, rejected = score_batch(PairScorer(model), collate(pairs, pad_id=0))
    for i, p in enumerate(pairs):
        assert chosen[i].item() == pytest.approx(_unshared_logp(model, p.prompt_ids, p.chosen_ids), abs=1e-5)
        assert rejected[i].item() == pytest.approx(_unshared_logp(model, p.prompt_ids, p.rejected_ids), abs=1e-5)


def _tiny(kind: str):
    """A tiny random model of another architecture (attention implementation after ':')."""
    import transformers as T

    name, _, impl = kind.partition(":")
    common = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=128)
    cfg = {
        "llama": lambda: T.LlamaConfig(num_key_value_heads=2, tie_word_embeddings=True, **common),
        "qwen2": lambda: T.Qwen2Config(num_key_value_heads=2, **common),
        "gpt2": lambda: T.GPT2Config(vocab_size=512, n_embd=64, n_layer=2, n_head=4),
        "phi3": lambda: T.Phi3Config(num_key_value_heads=2, pad_token_id=0, **common),
        "gemma2": lambda: T.Gemma2Config(num_key_value_heads=2, head_dim=16, **common),
        # sliding windows shorter than the pairs: every layer (Mistral), one of two (Gemma 3),
        # the layers from max_window_layers on (Qwen2)
        "mistral-window": lambda: T.MistralConfig(num_key_value_heads=2, sliding_window=4, **common),
        "gemma3-window": lambda: T.Gemma3TextConfig(
            num_key_value_heads=2, head_dim=16, sliding_window=5,
            layer_types=["sliding_attention", "full_attention"], **common),
        "qwen2-window": lambda: T.Qwen2Config(num_key_value_heads=2, use_sliding_window=True,
                                              sliding_window=6, max_window_layers=1, **common),
    }[name]()
    cfg._attn_implementation = impl or "sdpa"
    torch.manual_seed(0)
    return T.AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("kind", ["llama:eager", "qwen2", "gpt2", "phi3", "gemma2:eager",
                                  "mistral-window", "gemma3-window", "gemma3-window:eager",
                                  "qwen2-window"])
@torch.no_grad()
def test_prefix_shared_equals_unshared_across_architectures(kind):
    """Packed scoring hands every model the mask it reads right: additive (a model's own
    eager attention adds it to its scores) and cut to each sliding layer's window."""
    model = _tiny(kind)
    pairs = _pairs([(7, 3, 5), (20, 9, 2), (4, 1, 12), (1, 6, 6)])
    chosen, rejected = score_batch(PairScorer(model), collate(pairs, pad_id=0))
    for i, p in enumerate(pairs):
        assert chosen[i].item() == pytest.approx(_unshared_logp(model, p.prompt_ids, p.chosen_ids), abs=1e-4)
        assert rejected[i].item() == pytest.approx(_unshared_logp(model, p.prompt_ids, p.rejected_ids), abs=1e-4)


def test_prefix_shared_gradients_match_unshared(model):
    pairs = _pairs([(9, 4, 6), (3, 7, 2)])
    model.zero_grad()
    c, r = score_batch(PairScorer(model), collate(pairs, pad_id=0))
    (c - r).sum().backward()
    shared = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    total = 0
    for p in pairs:
        for resp, sign in ((p.chosen_ids, 1), (p.rejected_ids, -1)):
            ids = torch.tensor([list(p.prompt_ids) + list(resp)])
            logp = model(ids).logits.log_softmax(-1)[0]
            P = len(p.prompt_ids)
            total = total + sign * sum(logp[P - 1 + t, tok] for t, tok in enumerate(resp))
    total.backward()
    for a, b in zip(shared, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    model.zero_grad()


def test_collate_layout():
    (p,) = _pairs([(3, 2, 2)])
    b = collate([p], pad_id=0)
    assert b.position_ids[0].tolist() == [0, 1, 2, 3, 4, 3, 4]
    m = b.attention_mask[0, 0]
    assert not m[5, 3] and not m[6, 4]     # rejected cannot see chosen
    assert m[5, 2] and m[6, 5]             # but sees the prompt and itself
    assert b.gather_index.tolist() == [2, 3, 2, 5]   # both responses start from the last prompt token
    assert b.segment.tolist() == [0, 0, 1, 1]


def test_plan_steps_is_deterministic_and_complete():
    lengths = [10 + (i * 37) % 200 for i in range(50)]
    a = plan_steps(lengths, batch_size=4, grad_accum=2, epochs=2, seed=3)
    assert a == plan_steps(lengths, batch_size=4, grad_accum=2, epochs=2, seed=3)
    assert a != plan_steps(lengths, batch_size=4, grad_accum=2, epochs=2, seed=4)
    for epoch in (a[:7], a[7:]):
        seen = sorted(i for step in epoch for micro in step for i in micro)
        assert seen == list(range(50))  # every pair once per epoch
    # the same pairs land in each step whatever the micro-batch split
    b = plan_steps(lengths, batch_size=8, grad_accum=1, epochs=2, seed=3)
    assert [sorted(sum(s, [])) for s in a] == [sorted(sum(s, [])) for s in b]


def test_group_by_length_cuts_padding():
    lengths = [10 + (i * 37) % 300 for i in range(256)]

    def padded(steps):
        return sum(len(m) * max(lengths[i] for i in m) for s in steps for m in s)

    grouped = plan_steps(lengths, batch_size=4, grad_accum=2, seed=0, group_by_length=True)
    plain = plan_steps(lengths, batch_size=4, grad_accum=2, seed=0, group_by_length=False)
    assert padded(grouped) < 0.8 * padded(plain)


def test_several_processes_drop_partial_step():
    steps = plan_steps([5] * 10, batch_size=2, grad_accum=1, world_size=2, seed=0)
    assert all(len(s) == 2 for s in steps) and len(steps) == 2
