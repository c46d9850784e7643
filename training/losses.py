"""Preference losses: one small pure function per objective.

Every loss takes the policy-vs-reference log-ratios of the chosen and rejected
responses, each of shape (B,):

    chosen_logratio   = log pi(y_w | x) - log pi_ref(y_w | x)
    rejected_logratio = log pi(y_l | x) - log pi_ref(y_l | x)

and returns the per-pair loss, shape (B,). With h = chosen_logratio -
rejected_logratio, beta * h is the difference of implicit rewards
r(x, y) = beta * log(pi / pi_ref) (the DPO reparameterisation of the
KL-regularised optimum pi* ∝ pi_ref exp(r / beta)). The trainer reduces the
per-pair losses with pair weights; nothing here knows about batches or models.
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
}

# Objectives defined on length-averaged log-probs rather than sums.
LENGTH_AVERAGED = frozenset({"ipo"})


def preference_loss(name: str, chosen_logratio: Tensor, rejected_logratio: Tensor, *,
                    beta: float, p_chosen: Tensor, flip_rate: Tensor | float) -> Tensor:
    """Dispatch by name; the one place the trainer passes per-pair extras to a loss."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid: {sorted(LOSSES)}")
    if name == "soft":
        return soft_loss(chosen_logratio, rejected_logratio, beta, p_chosen)
    if name == "rdpo":
        return rdpo_loss(chosen_logratio, rejected_logratio, beta, flip_rate)
    return LOSSES[name](chosen_logratio, rejected_logratio, beta)
