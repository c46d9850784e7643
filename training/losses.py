"""Preference losses: one small pure function per objective.

Every loss takes the policy-vs-reference log-ratios of the chosen and rejected
responses, each of shape (B,):

    chosen_logratio   = log pi(y_w | x) - log pi_ref(y_w | x)
    rejected_logratio = log pi(y_l | x) - log pi_ref(y_l | x)

and returns the per-pair loss, shape (B,). With h = chosen_logratio -
rejected_logratio, beta * h is the difference of implicit rewards
r(x, y) = beta * log(pi / pi_ref) (the DPO reparameterisation of the
KL-regularised optimum pi* ∝ pi_ref exp(r / beta)). Objectives in
`LENGTH_AVERAGED` get these divided by the response's token count |y|; the
`REFERENCE_FREE` one (SimPO) gets log pi(y | x) / |y| with no reference at all.

The trainer reduces the per-pair losses l_i with the pairs' weights w_i >= 0 as a
weighted mean over the optimizer step's pairs, sum_i w_i l_i / sum_i w_i
(`weighted_mean`): a pair of weight 0 contributes nothing, a pair of weight 2
counts exactly as the same pair listed twice, and the loss scale (hence the
learning rate that suits it) does not change when all weights are scaled.
Nothing here knows about batches or models.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def sigmoid_loss(chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float) -> Tensor:
    """DPO (Rafailov et al. 2023, "Direct Preference Optimization", eq. 7).

        loss = -log sigmoid(beta * h)

    The negative Bradley-Terry log-likelihood of the label under the implicit reward.
    At h = 0 the loss is log 2.
    """
    return -F.logsigmoid(beta * (chosen_logratio - rejected_logratio))


def ipo_loss(chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float) -> Tensor:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning
    from Human Preferences", eq. 17), with tau = beta:

        loss = (h - 1 / (2 * beta))^2

    A squared loss that regresses the log-ratio gap to a finite target instead of
    pushing it to infinity, so deterministic preferences do not overfit. Following
    common practice (and TRL), the trainer feeds length-averaged log-probs here.
    """
    h = chosen_logratio - rejected_logratio
    return (h - 1.0 / (2.0 * beta)) ** 2


def hinge_loss(chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float) -> Tensor:
    """SLiC hinge (Zhao et al. 2023, "SLiC-HF", eq. 1, with delta = 1 on the scaled gap):

        loss = max(0, 1 - beta * h)

    Zero once the chosen response wins by a margin of 1 / beta in log-ratio.
    """
    return torch.relu(1.0 - beta * (chosen_logratio - rejected_logratio))


def soft_loss(chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float,
              p_chosen: Tensor) -> Tensor:
    """Soft-label DPO: cross-entropy of the Bradley-Terry model against p = P(chosen preferred).

        loss = -p * log sigmoid(beta * h) - (1 - p) * log sigmoid(-beta * h)

    With p = 1 - eps this is conservative DPO (cDPO, Mitchell 2023) with a per-pair
    eps; p = 1 recovers `sigmoid_loss`. Its minimum over h is at sigmoid(beta * h) = p,
    so a 60/40 vote is fitted as a weak preference instead of a certain one. The
    minimum value is the binary entropy of p, not 0.
    """
    z = beta * (chosen_logratio - rejected_logratio)
    return -p_chosen * F.logsigmoid(z) - (1.0 - p_chosen) * F.logsigmoid(-z)


def rdpo_loss(chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float,
              flip_rate: Tensor | float) -> Tensor:
    """Robust DPO (Chowdhury et al. 2024, "Provably Robust DPO", eq. 8), flip rate eps < 1/2:

        loss = [(1 - eps) * l(h) - eps * l(-h)] / (1 - 2 * eps),   l(h) = -log sigmoid(beta * h)

    An unbiased estimate of the clean-label DPO loss when each label was flipped
    with probability eps. `flip_rate` is a float (global eps) or a (B,) tensor (per pair).
    eps = 0 recovers `sigmoid_loss`.
    """
    z = beta * (chosen_logratio - rejected_logratio)
    eps = torch.as_tensor(flip_rate, dtype=z.dtype, device=z.device)
    return ((1.0 - eps) * -F.logsigmoid(z) - eps * -F.logsigmoid(-z)) / (1.0 - 2.0 * eps)


def dpo_norm_loss(chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float) -> Tensor:
    """Length-normalised DPO (open-instruct's `dpo_norm`, Lambert et al. 2024, "Tulu 3", section 5;
    TRL's `sigmoid_norm`), on log-ratios already divided by the response lengths:

        loss = -log sigmoid(beta * (log(pi/pi_ref)(y_w) / |y_w| - log(pi/pi_ref)(y_l) / |y_l|))

    The same Bradley-Terry likelihood as `sigmoid_loss`, but per-token log-ratios do
    not grow with the response, so a long response is not favoured (or penalised) for its
    length alone. The per-token gap is small: Tulu 3 trains it with beta = 5, not 0.1.
    """
    return -F.logsigmoid(beta * (chosen_logratio - rejected_logratio))


def simpo_loss(chosen_avg_logp: Tensor, rejected_avg_logp: Tensor, beta: float,
               gamma: float) -> Tensor:
    """SimPO (Meng, Xia & Chen 2024, "SimPO: Simple Preference Optimization with a
    Reference-Free Reward", eq. 6), on average log-probs log pi(y | x) / |y| (no reference):

        loss = -log sigmoid(beta / |y_w| * log pi(y_w | x) - beta / |y_l| * log pi(y_l | x) - gamma)

    The reward is the length-normalised log-likelihood the policy generates with, and the
    target margin gamma > 0 asks the chosen reward to exceed the rejected one by gamma.
    At equal average log-probs the loss is log(1 + e^gamma). The paper uses beta of 2-10
    and gamma / beta of about 0.5. Equals TRL's CPO with loss_type="simpo", cpo_alpha=0.
    """
    return -F.logsigmoid(beta * (chosen_avg_logp - rejected_avg_logp) - gamma)


def nll_loss(chosen_token_nll_sum: Tensor, chosen_tokens: Tensor) -> Tensor:
    """The RPO term (Pang et al. 2024, "Iterative Reasoning Preference Optimization"):
    mean negative log-likelihood per token of the chosen response, per pair (B,).
    The trainer adds `rpo_alpha` times this to the preference loss."""
    return chosen_token_nll_sum / chosen_tokens.clamp(min=1)


LOSSES: dict[str, Callable[..., Tensor]] = {
    "sigmoid": sigmoid_loss,
    "ipo": ipo_loss,
    "hinge": hinge_loss,
    "soft": soft_loss,
    "rdpo": rdpo_loss,
    "dpo_norm": dpo_norm_loss,
    "simpo": simpo_loss,
}

# Objectives defined on length-averaged log-probs (or log-ratios) rather than sums.
LENGTH_AVERAGED = frozenset({"ipo", "dpo_norm", "simpo"})
# Objectives that use no reference model: the trainer skips the reference pass.
REFERENCE_FREE = frozenset({"simpo"})


def preference_loss(name: str, chosen_logratio: Tensor, rejected_logratio: Tensor, *,
                    beta: float, p_chosen: Tensor, flip_rate: Tensor | float,
                    gamma: float = 0.0) -> Tensor:
    """Dispatch by name; the one place the trainer passes per-pair extras to a loss.
    For `simpo` the two inputs are the policy's average log-probs (reference-free)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid: {sorted(LOSSES)}")
    if name == "soft":
        return soft_loss(chosen_logratio, rejected_logratio, beta, p_chosen)
    if name == "rdpo":
        return rdpo_loss(chosen_logratio, rejected_logratio, beta, flip_rate)
    if name == "simpo":
        return simpo_loss(chosen_logratio, rejected_logratio, beta, gamma)
    return LOSSES[name](chosen_logratio, rejected_logratio, beta)


def weighted_mean(per_pair: Tensor, weight: Tensor, total_weight: float) -> Tensor:
    """sum_i w_i * l_i / total_weight, where `total_weight` is the sum of the weights of
    all the step's pairs (this micro-batch is one part of them). A pair of weight 0 adds
    exactly 0, even if its loss is not finite. A step whose weights are all 0 gives 0."""
    contrib = torch.where(weight > 0, per_pair * weight, torch.zeros_like(per_pair))
    return contrib.sum() / (total_weight if total_weight > 0 else 1.0)
