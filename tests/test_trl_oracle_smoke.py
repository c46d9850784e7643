"""Smoke test: the TRL oracle runs on a tiny random Llama and returns sane shapes/values."""

import math

import pytest
import torch

pytest.importorskip("trl")

from .trl_oracle import load_smollm2_tokenizer, tiny_llama, trl_dpo_outputs  # noqa: E402

ROWS = [
    {"prompt": "What colour is the sky?", "chosen": " Blue.", "rejected": " Green, mostly."},
    {"prompt": "2 + 2 =", "chosen": " 4", "rejected": " 5"},
    {"prompt": "Name a fruit.", "chosen": " An apple is a fruit.", "rejected": " Carrot"},
]


@pytest.fixture(scope="module")
def tok():
    return load_smollm2_tokenizer()


@pytest.mark.parametrize("loss_type,ls", [("sigmoid", 0.0), ("ipo", 0.0), ("hinge", 0.0), ("robust", 0.1)])
def test_oracle_shapes_and_values(tok, loss_type, ls):
    policy = tiny_llama(tok, seed=0)
    ref = tiny_llama(tok, seed=1)  # different weights so the log-ratios are non-zero
    out = trl_dpo_outputs(policy, tok, ROWS, loss_type, beta=0.1, label_smoothing=ls, ref_model=ref)
    B = len(ROWS)
    for k in ("chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps", "losses"):
        assert out[k].shape == (B,), k
        assert torch.isfinite(out[k]).all(), k
        assert (out[k] != 0).all(), k
    assert out["loss"].shape == () and torch.isfinite(out["loss"])
    assert torch.allclose(out["losses"].mean(), out["loss"], rtol=1e-4, atol=1e-6)
    # Random init: about -log(vocab) per response token (incl. the EOS TRL appends).
    eos = tok.eos_token_id
    for i in range(B):
        assert out["chosen_ids"][i][-1] == eos and out["rejected_ids"][i][-1] == eos
        assert eos not in out["prompt_ids"][i]
        n = len(out["chosen_ids"][i])
        assert abs(out["chosen_logps"][i].item() / n + math.log(len(tok))) < 1.0
    L = out["input_ids"].shape[1]
    assert out["input_ids"].shape == (2 * B, L) == out["completion_mask"].shape
    n_completion = [len(c) for c in out["chosen_ids"]] + [len(r) for r in out["rejected_ids"]]
    assert out["completion_mask"].sum(1).tolist() == n_completion


def test_oracle_default_reference_is_policy_copy(tok):
    """ref_model=None: the reference is the initial policy, so log-ratios are 0 and sigmoid loss is log 2."""
    policy = tiny_llama(tok, seed=0)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    out = trl_dpo_outputs(policy, tok, ROWS, "sigmoid", beta=0.1)
    assert torch.allclose(out["chosen_logps"], out["ref_chosen_logps"])
    assert torch.allclose(out["loss"], torch.tensor(math.log(2.0)), atol=1e-6)
    assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items())
    assert "fused_lm_head" not in repr(getattr(policy.forward, "__wrapped__", policy.forward))
