"""Each loss against a value derived by hand (the derivation sits next to the assertion)."""

import math

import pytest
import torch
from alignloop.training import losses

# chosen log-ratio 1, rejected log-ratio -1 -> h = 2; with beta = 0.5, beta*h = 1.
C, R = torch.tensor([1.0]), torch.tensor([-1.0])
LOG_SIG_1 = math.log(1 / (1 + math.exp(-1)))    # log sigmoid(1)  = -0.3132616875
LOG_SIG_M1 = math.log(1 / (1 + math.exp(1)))    # log sigmoid(-1) = -1.3132616875


def test_sigmoid_hand_value():
    # -log sigmoid(1) = log(1 + e^-1) = 0.31326168751822286
    assert losses.sigmoid_loss(C, R, 0.5).item() == pytest.approx(0.31326168751822286, abs=1e-7)
    # at h = 0 the loss is log 2 whatever beta is
    assert losses.sigmoid_loss(C, C, 3.0).item() == pytest.approx(math.log(2), abs=1e-7)


def test_ipo_hand_value():
    # (h - 1/(2 beta))^2 = (2 - 1)^2 = 1 ; with beta = 0.25: (2 - 2)^2 = 0
    assert losses.ipo_loss(C, R, 0.5).item() == pytest.approx(1.0, abs=1e-7)
    assert losses.ipo_loss(C, R, 0.25).item() == pytest.approx(0.0, abs=1e-7)


def test_hinge_hand_value():
    # max(0, 1 - beta h): beta 0.5 -> 0 ; beta 0.25 -> 0.5 ; reversed pair, beta 0.5 -> 2
    assert losses.hinge_loss(C, R, 0.5).item() == pytest.approx(0.0, abs=1e-7)
    assert losses.hinge_loss(C, R, 0.25).item() == pytest.approx(0.5, abs=1e-7)
    assert losses.hinge_loss(R, C, 0.5).item() == pytest.approx(2.0, abs=1e-7)


def test_soft_hand_value_and_limits():
    # p = 0.75: -0.75 log sig(1) - 0.25 log sig(-1) = 0.75*0.3132617 + 0.25*1.3132617 = 0.5632617
    p = torch.tensor([0.75])
    assert losses.soft_loss(C, R, 0.5, p).item() == pytest.approx(0.5632616875182228, abs=1e-7)
    # p = 1 is DPO
    one = torch.tensor([1.0])
    assert losses.soft_loss(C, R, 0.5, one).item() == pytest.approx(losses.sigmoid_loss(C, R, 0.5).item())
    # the minimum over h sits where sigmoid(beta h) = p: h* = logit(0.75) / beta
    h = torch.tensor([0.0], requires_grad=True)
    for _ in range(500):
        loss = losses.soft_loss(h, torch.zeros(1), 0.5, p)
        (g,) = torch.autograd.grad(loss.sum(), h)
        h = (h - 2.0 * g).detach().requires_grad_(True)
    assert h.item() == pytest.approx(math.log(3) / 0.5, abs=1e-3)


def test_rdpo_hand_value_and_limits():
    # eps = 0.2: [(0.8)(0.3132617) - 0.2(1.3132617)] / 0.6 = -0.0200716458
    expected = (0.8 * -LOG_SIG_1 - 0.2 * -LOG_SIG_M1) / 0.6
    assert expected == pytest.approx(-0.0200716458, abs=1e-9)
    assert losses.rdpo_loss(C, R, 0.5, 0.2).item() == pytest.approx(expected, abs=1e-7)
    assert losses.rdpo_loss(C, R, 0.5, 0.0).item() == pytest.approx(losses.sigmoid_loss(C, R, 0.5).item())
    # per-pair flip rates
    per_pair = losses.rdpo_loss(torch.tensor([1.0, 1.0]), torch.tensor([-1.0, -1.0]), 0.5,
                                torch.tensor([0.0, 0.2]))
    assert per_pair.tolist() == pytest.approx([-LOG_SIG_1, expected], abs=1e-7)


def test_rdpo_is_unbiased_under_flips():
    # E over flips of the rDPO loss equals the clean DPO loss (Chowdhury et al. 2024, Lemma 3.1):
    # (1-eps) * l_rdpo(h) + eps * l_rdpo(-h) = l(h)
    h, eps, beta = torch.tensor([0.7]), 0.3, 1.0
    clean = losses.sigmoid_loss(h, torch.zeros(1), beta)
    mix = (1 - eps) * losses.rdpo_loss(h, torch.zeros(1), beta, eps) + \
        eps * losses.rdpo_loss(-h, torch.zeros(1), beta, eps)
    assert mix.item() == pytest.approx(clean.item(), abs=1e-6)


def test_nll_per_token():
    # a summed NLL of 6 over 3 tokens is 2 per token
    assert losses.nll_loss(torch.tensor([6.0]), torch.tensor([3])).item() == pytest.approx(2.0)


def test_unknown_loss_names_valid_ones():
    with pytest.raises(ValueError, match="sigmoid"):
        losses.preference_loss("nope", C, R, beta=0.1, p_chosen=C, flip_rate=0.1)
