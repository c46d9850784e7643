"""`token_logps` against autograd's cross-entropy: the same values and gradients, in
float32 and in bf16, across row blocks, without touching the logits it was given."""

import pytest
import torch
import torch.nn.functional as F
from alignloop import token_logps as module
from alignloop.token_logps import token_logps


def _case(n: int, v: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = (4.0 * torch.randn(n, v, generator=g)).to(dtype).requires_grad_(True)
    targets = torch.randint(0, v, (n,), generator=g)
    weights = torch.randn(n, generator=g)      # a downstream loss's per-token gradient
    return logits, targets, weights


def _autograd(logits, targets, weights):
    x = logits.detach().clone().requires_grad_(True)
    out = -F.cross_entropy(x.float(), targets, reduction="none")
    (out * weights).sum().backward()
    return out.detach(), x.grad


@pytest.fixture(params=[1 << 19, 3 * 50], ids=["one-block", "many-blocks"])
def block(request, monkeypatch):
    """The default block, and one of three rows of 50 so a batch spans uneven blocks."""
    monkeypatch.setattr(module, "BLOCK_ELEMENTS", request.param)
    return request.param


def test_float32_matches_autograd(block):
    logits, targets, weights = _case(37, 50, torch.float32)
    kept = logits.detach().clone()
    want, want_grad = _autograd(logits, targets, weights)
    got = token_logps(logits, targets)
    (got * weights).sum().backward()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits.grad, want_grad, rtol=0, atol=1e-6)
    assert torch.equal(logits.detach(), kept)           # the backward never writes into it


def test_bf16_logits_give_float32_logps_and_bf16_gradients(block):
    logits, targets, weights = _case(37, 50, torch.bfloat16)
    want, want_grad = _autograd(logits, targets, weights)
    got = token_logps(logits, targets)
    (got * weights).sum().backward()
    assert got.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)   # both sum in float32
    # autograd rounds its float32 gradient to bf16 once; so does token_logps
    torch.testing.assert_close(logits.grad.float(), want_grad.float(), rtol=1e-2, atol=1e-3)


def test_gradient_is_onehot_minus_softmax():
    logits, targets, _ = _case(5, 7, torch.float32, seed=3)
    token_logps(logits, targets).sum().backward()
    expected = F.one_hot(targets, 7).float() - logits.detach().softmax(-1)
    torch.testing.assert_close(logits.grad, expected)
    torch.testing.assert_close(logits.grad.sum(-1), torch.zeros(5), atol=1e-6, rtol=0)


def test_runs_under_inference_mode():
    logits, targets, _ = _case(4, 9, torch.float32)
    with torch.inference_mode():
        got = token_logps(logits.detach(), targets)
    torch.testing.assert_close(got, logits.detach().log_softmax(-1).gather(1, targets[:, None])[:, 0])


def test_shapes_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match=r"logits \(3, 4\) and targets \(2,\)"):
        token_logps(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))
