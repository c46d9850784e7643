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


def test_dpo_norm_hand_value_through_the_trainer():
    from types import SimpleNamespace

    from alignloop.config import TrainConfig
    from alignloop.training.trainer import dpo_objective

    # summed log-ratios: chosen 2 over 2 tokens -> 1 per token, rejected -4 over 4 -> -1;
    # beta 0.5: -log sigmoid(0.5 * (1 - (-1))) = -log sigmoid(1) = 0.31326168751822286
    batch = SimpleNamespace(n_chosen=torch.tensor([2.0]), n_rejected=torch.tensor([4.0]),
                            p_chosen=torch.tensor([1.0]))
    loss, stats = dpo_objective(torch.tensor([-3.0]), torch.tensor([-9.0]), torch.tensor([-5.0]),
                                torch.tensor([-5.0]), batch, TrainConfig(loss="dpo_norm", beta=0.5))
    assert loss.item() == pytest.approx(0.31326168751822286, abs=1e-7)
    # the logged rewards stay DPO's summed implicit rewards: 0.5 * 2 and 0.5 * -4
    assert stats["rewards/chosen"].item() == pytest.approx(1.0)
    assert stats["rewards/rejected"].item() == pytest.approx(-2.0)
    # the pure function on per-token log-ratios: the same value as sigmoid DPO on them
    assert losses.dpo_norm_loss(C, R, 0.5).item() == pytest.approx(0.31326168751822286, abs=1e-7)


def test_simpo_hand_value_and_limits():
    # avg log-probs -1 and -2, beta 2, gamma 1: z = 2 * (-1 - (-2)) - 1 = 1 -> -log sigmoid(1)
    c, r = torch.tensor([-1.0]), torch.tensor([-2.0])
    assert losses.simpo_loss(c, r, 2.0, 1.0).item() == pytest.approx(0.31326168751822286, abs=1e-7)
    # equal average log-probs: -log sigmoid(-gamma) = log(1 + e^gamma); gamma 1 -> 1.3132616875
    assert losses.simpo_loss(c, c, 2.0, 1.0).item() == pytest.approx(1.3132616875182228, abs=1e-7)
    # gamma 0 is sigmoid DPO on average log-probs with no reference
    assert losses.simpo_loss(c, r, 2.0, 0.0).item() == pytest.approx(
        losses.sigmoid_loss(c, r, 2.0).item(), abs=1e-7)


def test_simpo_through_the_trainer_ignores_the_reference():
    from types import SimpleNamespace

    from alignloop.config import TrainConfig
    from alignloop.training.trainer import dpo_objective

    # summed log-probs -3 over 3 tokens (avg -1) and -8 over 4 (avg -2); beta 2, gamma 1:
    # -log sigmoid(2 * 1 - 1) = 0.31326168751822286, whatever the reference log-probs are
    batch = SimpleNamespace(n_chosen=torch.tensor([3.0]), n_rejected=torch.tensor([4.0]),
                            p_chosen=torch.tensor([1.0]))
    cfg = TrainConfig(loss="simpo", beta=2.0, simpo_gamma=1.0)
    for ref in (0.0, 100.0):
        loss, stats = dpo_objective(torch.tensor([-3.0]), torch.tensor([-8.0]), torch.tensor([ref]),
                                    torch.tensor([-ref]), batch, cfg)
        assert loss.item() == pytest.approx(0.31326168751822286, abs=1e-7)
    # SimPO's own reward: beta * average log-prob = 2 * -1 and 2 * -2
    assert stats["rewards/chosen"].item() == pytest.approx(-2.0)
    assert stats["rewards/rejected"].item() == pytest.approx(-4.0)
    assert stats["rewards/accuracy"].item() == 1.0


def test_weighted_mean_hand_value():
    # losses 1, 2, 3 with weights 0, 2, 1: (0 * 1 + 2 * 2 + 1 * 3) / (0 + 2 + 1) = 7 / 3
    per_pair, w = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 2.0, 1.0])
    assert losses.weighted_mean(per_pair, w, 3.0).item() == pytest.approx(7 / 3)
    # a weight-0 pair adds nothing even when its loss is not finite
    bad = torch.tensor([float("nan"), 2.0, 3.0])
    assert losses.weighted_mean(bad, w, 3.0).item() == pytest.approx(7 / 3)
    # a step whose weights are all zero has loss 0 (no division by zero)
    assert losses.weighted_mean(per_pair, torch.zeros(3), 0.0).item() == 0.0


def _three_pairs():
    """Summed policy/reference log-probs and token counts of three pairs (fixed numbers)."""
    from types import SimpleNamespace

    pc = torch.tensor([-12.0, -30.0, -7.0], requires_grad=True)
    pr = torch.tensor([-15.0, -22.0, -9.5], requires_grad=True)
    rc, rr = torch.tensor([-13.0, -28.0, -8.0]), torch.tensor([-14.0, -23.0, -9.0])
    batch = SimpleNamespace(n_chosen=torch.tensor([4.0, 9.0, 3.0]),
                            n_rejected=torch.tensor([5.0, 7.0, 4.0]),
                            p_chosen=torch.tensor([0.9, 0.7, 1.0]))
    return pc, pr, rc, rr, batch


def _select(batch, idx):
    from types import SimpleNamespace

    return SimpleNamespace(**{k: v[idx] for k, v in vars(batch).items()})


@pytest.mark.parametrize("loss", sorted(losses.LOSSES))
@pytest.mark.parametrize("rpo_alpha", [0.0, 0.5])
def test_every_loss_honours_pair_weights(loss, rpo_alpha):
    """Weights [0, 3, 1] == the pairs [1, 1, 1, 2] with weight 1: same loss, same gradient; the
    weight-0 pair gets no gradient at all. Through `dpo_objective` + `weighted_mean`, the
    trainer's own reduction."""
    from alignloop.config import TrainConfig
    from alignloop.training.trainer import dpo_objective

    cfg = TrainConfig(loss=loss, beta=0.5, rpo_alpha=rpo_alpha, flip_rate=0.2)
    pc, pr, rc, rr, batch = _three_pairs()
    w = torch.tensor([0.0, 3.0, 1.0])
    per_pair, _ = dpo_objective(pc, pr, rc, rr, batch, cfg)
    weighted = losses.weighted_mean(per_pair, w, float(w.sum()))
    g_c, g_r = torch.autograd.grad(weighted, (pc, pr))

    idx = torch.tensor([1, 1, 1, 2])
    dc, dr = pc.detach()[idx].requires_grad_(), pr.detach()[idx].requires_grad_()
    dup, _ = dpo_objective(dc, dr, rc[idx], rr[idx], _select(batch, idx), cfg)
    dup_mean = losses.weighted_mean(dup, torch.ones(4), 4.0)
    d_c, d_r = torch.autograd.grad(dup_mean, (dc, dr))

    assert weighted.item() == pytest.approx(dup_mean.item(), abs=1e-6)
    assert g_c[0].item() == 0.0 and g_r[0].item() == 0.0       # weight 0: no gradient
    assert g_c[1].item() == pytest.approx((d_c[0] + d_c[1] + d_c[2]).item(), abs=1e-6)
    assert g_r[2].item() == pytest.approx(d_r[3].item(), abs=1e-6)
    assert abs(g_c[1].item()) > 1e-4                              # the comparison is not 0 == 0
