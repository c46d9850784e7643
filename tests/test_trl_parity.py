"""Parity with TRL 1.16's DPOTrainer on the same batch (TRL is the oracle, see tests/trl_oracle.py).

Same tiny model, same token ids: our prefix-shared per-pair log-probs and the
sigmoid, ipo, hinge, rdpo (TRL: "robust") and dpo_norm (TRL: "sigmoid_norm") losses equal
TRL's DPOTrainer within 1e-4; simpo equals TRL's CPOTrainer with loss_type="simpo" and
cpo_alpha=0 (CPO's default cpo_alpha=1 adds an NLL term: "CPO-SimPO", not SimPO), scored
on the token ids CPO itself produced (its tokenisation differs from DPO's).
"""

import pytest
import torch
from alignloop.config import TrainConfig
from alignloop.models import load_model, load_tokenizer
from alignloop.training.batching import EncodedPair, collate, encode_pair
from alignloop.training.logps import PairScorer, score_batch
from alignloop.training.trainer import dpo_objective

from .trl_oracle import trl_cpo_simpo_outputs, trl_dpo_outputs

TINY = "builtin:tiny-random"
ROWS = [
    {"prompt": [{"role": "user", "content": "My order arrived broken. What now?"}],
     "chosen": [{"role": "assistant", "content": "So sorry! We'll send a new one today."}],
     "rejected": [{"role": "assistant", "content": "Not our problem."}]},
    {"prompt": [{"role": "system", "content": "You are a shop assistant."},
                {"role": "user", "content": "Do you ship to Norway?"},
                {"role": "assistant", "content": "Yes, we do."},
                {"role": "user", "content": "How long does it take, roughly, and is it tracked?"}],
     "chosen": [{"role": "assistant", "content": "About five days, with tracking."}],
     "rejected": [{"role": "assistant", "content": "Shipping is a complex topic with many facets. " * 3}]},
    {"prompt": [{"role": "user", "content": "Thanks for the help!"}],
     "chosen": [{"role": "assistant", "content": "You're welcome, have a lovely day!"}],
     "rejected": [{"role": "assistant", "content": "Whatever."}]},
]
BETA = 0.3
EPS = 0.2  # rDPO flip rate = TRL's label_smoothing for "robust"


@pytest.fixture(scope="module")
def models():
    tok = load_tokenizer(TINY)
    ref = load_model(TINY)
    policy = load_model(TINY)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # move the policy away from the reference so the log-ratios are not 0
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return tok, policy, ref


@pytest.fixture(scope="module")
def trl_outputs(models):
    tok, policy, ref = models
    return {loss: trl_dpo_outputs(policy, tok, ROWS, loss, BETA,
                                  label_smoothing=EPS if loss == "robust" else 0.0, ref_model=ref)
            for loss in ("sigmoid", "ipo", "hinge", "robust", "sigmoid_norm")}


@pytest.fixture(scope="module")
def ours(models, trl_outputs):
    tok, policy, ref = models
    trl = trl_outputs["sigmoid"]
    pairs = [EncodedPair(i, str(i), tuple(p), tuple(c), tuple(r), 1.0, 1.0) for i, (p, c, r) in
             enumerate(zip(trl["prompt_ids"], trl["chosen_ids"], trl["rejected_ids"], strict=True))]
    batch = collate(pairs, pad_id=tok.pad_token_id)
    with torch.no_grad():
        pc, pr = score_batch(PairScorer(policy.eval()), batch)
        rc, rr = score_batch(PairScorer(ref.eval()), batch)
    return batch, pc, pr, rc, rr


def test_same_token_ids_as_trl(models, trl_outputs):
    """Our tokenisation of these chat rows gives TRL's ids exactly (so the batch really is the same)."""
    from alignloop.pair_rows import parse_row  # the reader's row parser

    tok = models[0]
    trl = trl_outputs["sigmoid"]
    for i, row in enumerate(ROWS):
        pair = parse_row(row, "auto", {})
        prompt, chosen, rejected = encode_pair(pair, tok, max_length=1024, max_prompt_length=1000,
                                               truncation="error")
        assert list(prompt) == trl["prompt_ids"][i]
        assert list(chosen) == trl["chosen_ids"][i]
        assert list(rejected) == trl["rejected_ids"][i]


def test_logps_equal_trl(trl_outputs, ours):
    _, pc, pr, rc, rr = ours
    trl = trl_outputs["sigmoid"]
    torch.testing.assert_close(pc, trl["chosen_logps"], atol=1e-4, rtol=0)
    torch.testing.assert_close(pr, trl["rejected_logps"], atol=1e-4, rtol=0)
    torch.testing.assert_close(rc, trl["ref_chosen_logps"], atol=1e-4, rtol=0)
    torch.testing.assert_close(rr, trl["ref_rejected_logps"], atol=1e-4, rtol=0)
    assert (pc - rc).abs().max() > 0.1  # the comparison is not between zeros


@pytest.mark.parametrize("ours_name, trl_name", [
    ("sigmoid", "sigmoid"), ("ipo", "ipo"), ("hinge", "hinge"), ("rdpo", "robust"),
    ("dpo_norm", "sigmoid_norm")])
def test_losses_equal_trl(trl_outputs, ours, ours_name, trl_name):
    batch, pc, pr, rc, rr = ours
    cfg = TrainConfig(loss=ours_name, beta=BETA, flip_rate=EPS)
    losses, _ = dpo_objective(pc, pr, rc, rr, batch, cfg)
    trl = trl_outputs[trl_name]
    torch.testing.assert_close(losses, trl["losses"], atol=1e-4, rtol=0)
    assert losses.mean().item() == pytest.approx(trl["loss"].item(), abs=1e-4)


SIMPO_BETA, SIMPO_GAMMA = 2.0, 1.2


def test_simpo_equals_trl_cpo_simpo(models):
    """TRL's CPO (simpo, cpo_alpha 0) on its own token ids; ours scores the same ids with
    the policy alone (no reference) and must give the same average log-probs and losses."""
    tok, policy, _ = models
    trl = trl_cpo_simpo_outputs(policy, tok, ROWS, SIMPO_BETA, SIMPO_GAMMA)
    pairs = [EncodedPair(i, str(i), tuple(p), tuple(c), tuple(r), 1.0, 1.0) for i, (p, c, r) in
             enumerate(zip(trl["prompt_ids"], trl["chosen_ids"], trl["rejected_ids"], strict=True))]
    batch = collate(pairs, pad_id=tok.pad_token_id)
    with torch.no_grad():
        pc, pr = score_batch(PairScorer(policy.eval()), batch)
    torch.testing.assert_close(pc / batch.n_chosen, trl["chosen_logps"], atol=1e-5, rtol=0)
    torch.testing.assert_close(pr / batch.n_rejected, trl["rejected_logps"], atol=1e-5, rtol=0)
    cfg = TrainConfig(loss="simpo", beta=SIMPO_BETA, simpo_gamma=SIMPO_GAMMA)
    nan = torch.full_like(pc, float("nan"))  # reference-free: the reference is never read
    losses, _ = dpo_objective(pc, pr, nan, nan, batch, cfg)
    torch.testing.assert_close(losses, trl["losses"], atol=1e-4, rtol=0)
    assert losses.mean().item() == pytest.approx(trl["loss"].item(), abs=1e-4)
    assert losses.std() > 1e-3  # the pairs differ: not one number compared three times
