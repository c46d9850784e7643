"""The packed batches' attention: the matmul path under bf16 on a CPU, PyTorch's fused
kernel elsewhere, the same answer either way, and a model config left as it was."""

import json

import pytest
import torch
import torch.nn.functional as F
from alignloop import attention
from alignloop.models import load_model
from alignloop.placement import Placement
from alignloop.training.logps import PairScorer, score_batch

from tests.tiny_hf import demo_pair_batch

TINY = "builtin:tiny-random"


def _fused(q, k, v, mask):
    g = q.shape[1] // k.shape[1]
    out = F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1),
                                         attn_mask=mask)
    return out.transpose(1, 2)


def _inputs(seed=0, B=3, H=6, KV=2, L=29, D=16):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, n, L, D, generator=g, requires_grad=True) for n in (H, KV, KV))
    mask = torch.ones(L, L, dtype=torch.bool).tril().expand(B, 1, L, L).clone()
    mask[1, 0, 15:, 4:9] = False      # a rejected response that may not see the chosen one
    return q, k, v, mask


def test_matmul_path_matches_fused_attention_and_its_gradients():
    q, k, v, mask = _inputs()
    ref = _fused(q, k, v, mask)
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention._matmul_attention(q, k, v, mask, q.shape[-1] ** -0.5)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    assert (out.float() - ref).abs().max() <= 0.05            # bf16 rounding, measured 0.02
    grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    for a, b in zip(ref_grads, grads, strict=True):
        assert F.cosine_similarity(a.flatten(), b.flatten(), dim=0) >= 0.99


def test_a_masked_key_gets_no_weight():
    q, k, v, mask = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        base = attention._matmul_attention(q, k, v, mask, 0.25)
        v2 = v.detach().clone()
        v2[1, :, 4:9] += 100.0        # keys row 1's late queries may not see
        moved = attention._matmul_attention(q, k, v2, mask, 0.25)
    assert torch.equal(base[1, 15:], moved[1, 15:])
    assert not torch.equal(base[1, 9:15], moved[1, 9:15])   # earlier queries do see them


@pytest.mark.parametrize("bf16,limit,expected", [
    (True, None, True),          # bf16 autocast on a CPU, a small batch: matmuls
    (False, None, False),        # float32: PyTorch's fused kernel
    (True, 0, False),            # a batch over the limit: the fused kernel
])
def test_path_choice(monkeypatch, bf16, limit, expected):
    q, _, _, mask = _inputs()
    if limit is not None:
        monkeypatch.setattr(attention, "MATMUL_SCORES", limit)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        assert attention.uses_matmul_path(q, mask) is expected
    assert not attention.uses_matmul_path(q, None)           # no packed mask: fused


@pytest.fixture(scope="module")
def batch():
    return demo_pair_batch(3, max_length=256)


def test_the_scorer_takes_the_matmul_path_in_bf16_mixed_and_restores_the_config(
        monkeypatch, batch, tmp_path):
    calls = []
    real = attention._matmul_attention
    monkeypatch.setattr(attention, "_matmul_attention", lambda *a: calls.append(1) or real(*a))
    model = load_model(TINY)
    layers = model.config.num_hidden_layers
    before = model.config._attn_implementation
    with torch.no_grad(), Placement("cpu", "bf16-mixed").autocast():
        mixed = score_batch(PairScorer(model), batch)
    assert len(calls) == layers
    assert model.config._attn_implementation == before
    with torch.no_grad():
        fp32 = score_batch(PairScorer(model), batch)
    assert len(calls) == layers                             # float32 never takes it
    for a, b in zip(mixed, fp32, strict=True):
        per_token = (a - b).abs() / torch.cat([batch.n_chosen, batch.n_rejected]).max()
        assert per_token.max() <= 0.05
    model.save_pretrained(tmp_path)
    assert attention.NAME not in json.dumps(json.loads((tmp_path / "config.json").read_text()))


def test_a_model_with_its_own_attention_keeps_it(monkeypatch, batch):
    calls = []
    monkeypatch.setattr(attention, "_matmul_attention", lambda *a: calls.append(1))
    model = load_model(TINY)
    model.config._attn_implementation = "eager"
    with torch.no_grad(), Placement("cpu", "bf16-mixed").autocast():
        with attention.scoring_attention(model):
            assert model.config._attn_implementation == "eager"
    assert not calls


def test_evaluation_log_probs_take_the_matmul_path_in_bf16_mixed(monkeypatch):
    from alignloop.labeling.logprobs import score_token_sequences

    calls = []
    real = attention._matmul_attention
    monkeypatch.setattr(attention, "_matmul_attention", lambda *a: calls.append(1) or real(*a))
    model = load_model(TINY)
    seqs = [([5, 6, 7, 8], [9, 10, 11]), ([5, 6], [12, 13, 14, 15, 16]), ([7], [8])]
    fp32 = score_token_sequences(model, seqs, pad_id=0, progress=False)
    assert not calls
    mixed = score_token_sequences(model, seqs, pad_id=0, progress=False,
                                  placement=Placement("cpu", "bf16-mixed"))
    assert len(calls) == model.config.num_hidden_layers          # one padded batch of three
    tokens = [len(r) for _, r in seqs]
    assert max(abs(a - b) / n for a, b, n in zip(fp32, mixed, tokens, strict=True)) <= 0.05


@pytest.mark.parametrize("extra", [{}, {"softcap": 30.0}, {"s_aux": torch.zeros(6)}])
def test_arguments_the_matmul_path_does_not_compute_go_to_the_fused_path(monkeypatch, extra):
    import transformers.integrations.sdpa_attention as sdpa

    fused = []
    monkeypatch.setattr(sdpa, "sdpa_attention_forward", lambda *a, **k: fused.append(k) or ("fused", None))
    q, k, v, mask = _inputs()
    module = torch.nn.Module()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = attention.packed_attention(module, q, k, v, mask, scaling=0.25, **extra)
    assert isinstance(out, str) is bool(extra)     # "fused": the fused path answered
    assert len(fused) == (1 if extra else 0)


def test_the_additive_mask_gives_the_bool_masks_answer_on_both_paths(monkeypatch):
    q, k, v, mask = _inputs()
    model = torch.nn.Linear(2, 2)                      # fp32 parameters on the CPU
    with torch.autocast("cpu", dtype=torch.bfloat16):
        additive = attention.additive_mask(model, mask)
        assert additive.dtype == torch.bfloat16
        assert torch.equal(attention._matmul_attention(q, k, v, additive, 0.25),
                           attention._matmul_attention(q, k, v, mask, 0.25))
        monkeypatch.setattr(attention, "MATMUL_SCORES", 0)       # the fused kernel
        module = torch.nn.Module()
        module.training, module.num_key_value_groups = False, 3
        fused_add, _ = attention.packed_attention(module, q, k, v, additive, scaling=0.25)
        fused_bool, _ = attention.packed_attention(module, q, k, v, mask, scaling=0.25)
    assert torch.equal(fused_add, fused_bool)
    assert attention.additive_mask(model, mask).dtype == torch.float32   # no autocast: fp32
    assert torch.equal(attention.additive_mask(model, mask) == 0, mask)


@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed"])
def test_a_model_with_eager_attention_scores_a_packed_batch_as_sdpa_does(batch, precision):
    model = load_model(TINY)
    with torch.no_grad(), Placement("cpu", precision).autocast():
        ours = score_batch(PairScorer(model), batch)
        model.config._attn_implementation = "eager"    # the model's own attention adds the mask
        eager = score_batch(PairScorer(model), batch)
    tokens = torch.cat([batch.n_chosen, batch.n_rejected]).max()
    for a, b in zip(ours, eager, strict=True):
        assert ((a - b).abs() / tokens).max() <= (1e-5 if precision == "fp32" else 0.05)
