"""bf16-mixed against fp32 on the same inputs: the numbers we train on and report stay honest.

The test model is `builtin:tiny-random` with its (tied) embeddings scaled up 30x, so its
logits spread like a trained model's (a random init's are nearly uniform, which would hide
bf16 rounding). Tolerances, with what was measured:

    per-response summed log-prob   |delta| <= 0.05 nat per token   (0.021 here; 0.015 on
                                                                     SmolLM2-135M)
    DPO loss                       |delta| <= 0.03                  (0.016, of 0.77)
    gradient direction             cosine >= 0.99                   (0.9999)
    KL estimates on a tiny eval    bf16-mixed inside fp32's 95% bootstrap interval

TRL parity (tests/test_trl_parity.py) stays fp32. bf16 matmuls are slow on a CPU without
bf16 units, so these batches are small.
"""

import copy
import math

import pyarrow.parquet as pq
import pytest
import torch
from alignloop.config import DataConfig, GenerationConfig, ModelConfig, TrainConfig
from alignloop.data import read_pairs
from alignloop.generation import PromptItem, SamplingParams, generator_for
from alignloop.models import load_model, load_tokenizer
from alignloop.placement import Placement
from alignloop.report.metrics import kl_estimate
from alignloop.stages.evaluate import score_sequences
from alignloop.training.logps import PairScorer, score_batch
from alignloop.training.trainer import dpo_objective, train_dpo

from tests.tiny_hf import demo_pair_batch

TINY = "builtin:tiny-random"
FP32, MIXED = Placement("cpu", "fp32"), Placement("cpu", "bf16-mixed")
PER_TOKEN_TOL, LOSS_TOL = 0.05, 0.03


def _perturbed(model, seed: int, scale: float = 0.02):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(reference dir, policy dir): the spread-logit test model and a perturbed copy."""
    tok = load_tokenizer(TINY)
    ref = load_model(TINY)
    with torch.no_grad():
        ref.get_input_embeddings().weight.mul_(30.0)
    policy = _perturbed(copy.deepcopy(ref), seed=2)
    dirs = []
    for name, m in (("reference", ref), ("policy", policy)):
        out = tmp_path_factory.mktemp(name)
        m.save_pretrained(out)
        tok.save_pretrained(out)
        dirs.append(str(out))
    return dirs


@pytest.fixture(scope="module")
def batch():
    return demo_pair_batch(4, max_length=512)


def _dpo(policy, ref_logps, batch, placement):
    """(chosen, rejected) log-probs, the mean DPO loss and its gradient, in `placement`."""
    policy.zero_grad()
    with placement.autocast():
        chosen, rejected = score_batch(PairScorer(policy), batch)
        loss_vec, _ = dpo_objective(chosen, rejected, *ref_logps, batch, TrainConfig(beta=0.1))
        loss = loss_vec.mean()
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in policy.parameters()])
    return chosen.detach(), rejected.detach(), float(loss.detach()), grad


def test_logprobs_loss_gradient_and_a_step_match_fp32(models, batch):
    ref, policy = (load_model(m) for m in models)
    out = {}
    for placed in (FP32, MIXED):
        with torch.no_grad(), placed.autocast():   # the reference pass, as the trainer runs it
            ref_logps = score_batch(PairScorer(ref), batch)
        assert all(x.dtype == torch.float32 for x in ref_logps)  # summed in fp32 under autocast
        model = copy.deepcopy(policy)
        chosen, rejected, loss, grad = _dpo(model, ref_logps, batch, placed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        optimizer.step()
        with torch.no_grad(), placed.autocast():
            c, r = score_batch(PairScorer(model), batch)
            after = float(dpo_objective(c, r, *ref_logps, batch, TrainConfig(beta=0.1))[0].mean())
        out[placed.precision] = (chosen, rejected, loss, grad, after - loss)

    (c32, r32, loss32, g32, step32), (c16, r16, loss16, g16, step16) = out.values()
    tokens = batch.n_chosen, batch.n_rejected
    for a, b, n in ((c32, c16, tokens[0]), (r32, r16, tokens[1])):
        assert ((a - b).abs() / n).max() <= PER_TOKEN_TOL
    assert abs(loss32 - loss16) <= LOSS_TOL
    assert torch.nn.functional.cosine_similarity(g32, g16, dim=0) >= 0.99
    assert step32 < 0 and step16 < 0          # one optimizer step lowers the loss in both


def test_kl_estimates_on_a_tiny_eval_agree(models):
    reference, policy = models
    items = [PromptItem(f"p{i}", [{"role": "user", "content": f"Tell me about item {i}."}])
             for i in range(6)]
    gen = generator_for(GenerationConfig(backend="hf"), policy, placement=FP32)
    completions = gen.sample(items, SamplingParams(n=4, max_new_tokens=10, seed=3))
    tok = load_tokenizer(policy)
    from alignloop.models import prompt_token_ids

    prompt_ids = {it.prompt_id: prompt_token_ids(tok, it.prompt) for it in items}
    seqs = [(prompt_ids[c.prompt_id], list(c.token_ids)) for c in completions]
    groups = [c.prompt_id for c in completions]
    tokens = [len(c.token_ids) for c in completions]
    kl = {}
    for placed in (FP32, MIXED):
        scores, = score_sequences({"policy": policy, "reference": reference}, seqs, placement=placed)
        kl[placed.precision] = kl_estimate(scores["policy"], scores["reference"], tokens,
                                           groups=groups)
    for estimator in ("k1", "k3"):
        for unit in ("sequence", "per_token"):
            ref32, mixed = kl["fp32"][estimator][unit], kl["bf16-mixed"][estimator][unit]
            assert ref32["lo"] <= mixed["value"] <= ref32["hi"], (estimator, unit, ref32, mixed)


def test_hf_samples_with_bf16_weights_and_records_fp32_logprobs():
    items = [PromptItem("a", "Write one word:"), PromptItem("b", "Hello")]
    fp32 = generator_for(GenerationConfig(backend="hf"), TINY, placement=FP32)
    mixed = generator_for(GenerationConfig(backend="hf"), TINY, placement=MIXED)
    assert fp32.model.dtype == torch.float32 and mixed.model.dtype == torch.bfloat16
    out = mixed.sample(items, SamplingParams(n=2, max_new_tokens=6, seed=0))
    logps = [x for c in out for x in c.token_logprobs]
    assert all(math.isfinite(x) and x <= 0 for x in logps)
    # a log-softmax taken in bf16 would leave every value on bf16's coarse grid
    on_grid = [x == float(torch.tensor(x).bfloat16()) for x in logps]
    assert not all(on_grid)


def test_reference_cache_is_keyed_by_precision(models, tmp_path):
    reference, policy = models
    pairs = read_pairs("builtin:demo-pairs")[0][:4]
    kw = dict(out_dir=tmp_path, policy=policy, reference=reference, model_cfg=ModelConfig(name=policy),
              data_cfg=DataConfig(max_length=512, max_prompt_length=384),
              train_cfg=TrainConfig(batch_size=2, grad_accum=1, max_steps=1), progress=False)
    mixed = train_dpo(pairs, placement=MIXED, **kw)
    cache = tmp_path / "reference_logps.parquet"
    keys = set(pq.read_table(cache).column("reference_hash").to_pylist())
    assert keys == {mixed.reference_hash + "+bf16-mixed"}
    assert mixed.placement["precision"] == "bf16-mixed" and not mixed.reference_reused
    assert math.isfinite(mixed.metrics["loss"])
    again = train_dpo(pairs, placement=MIXED, **kw)
    assert again.reference_reused
    fp32 = train_dpo(pairs, placement=FP32, **kw)   # same weights, other precision: recomputed
    assert not fp32.reference_reused and fp32.reference_hash == mixed.reference_hash
    assert set(pq.read_table(cache).column("reference_hash").to_pylist()) == {fp32.reference_hash}
