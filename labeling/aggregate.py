"""Votes -> soft labels: a one-coin Dawid-Skene model for pairwise preferences.

Each item is a pair shown to people; its unknown truth is z_i in {a, b} ("a is
better" or "b is better") with prior P(z_i = a) = 1/2, since the display order
is randomised and no side is favoured. Annotator j is one coin (Dawid & Skene
1979, "Maximum likelihood estimation of observer error-rates using the EM
algorithm", with the confusion matrix tied to one parameter): an a/b vote
agrees with z_i with probability r_j, the annotator's reliability.

E-step. Votes are independent given z_i, so the posterior log-odds of item i is

    L_i = sum_{votes v on i, choice in {a, b}} s_v * w_v * logit(r_j(v))
          + judge_weight * judge_log_odds[i],          p_a(i) = sigmoid(L_i)

with s_v = +1 for "a", -1 for "b", and w_v the vote weight (a weighted vote is
its likelihood raised to the power w). The judges enter as one weak extra
voter. An adjudicated verdict (an admin's final answer on a disputed item,
`verdicts`) enters as one strong voter of fixed reliability r_adj
(`verdict_reliability`, not re-estimated): it adds s * logit(r_adj) to L_i,
4.6 at the default 0.99, outweighing four agreeing votes at the prior 0.75
(4 * 1.1), and through the M-step it also teaches the model which annotators
agreed with it. A "tie" vote says nothing about which side is better and adds 0 (it
still counts in `n_votes`); a "both_bad" vote adds nothing and is counted
apart, for the caller to decide whether the pair is worth training on.

M-step. With a Beta(rho*s + 1, (1 - rho)*s + 1) prior on r_j (mean ~ rho =
`prior_reliability`, s = `prior_strength` pseudo-votes), the MAP reliability is

    r_j = (rho*s + sum_v w_v * E[agree_v]) / (s + sum_v w_v),
    E[agree_v] = p_a(i) if v says "a" else 1 - p_a(i),

over j's a/b votes, clipped to [0.01, 0.99]. Values below 1/2 are allowed: an
adversarial annotator's votes then count against the side they pick.

The prior is what keeps one vote from being certainty: one "a" vote by a new
annotator gives p = rho after the E-step, and then r = (rho*s + rho)/(s + 1) =
rho, a fixed point, so p_a = rho exactly. Note that with only two annotators
their reliabilities are not identified (only their agreement rate is
observed); a third annotator, the judges or the prior pin them down.

EM starts from r_j = rho, alternates E and M until no r_j moves by more than
`tol` (at most `iterations` times), then runs a last E-step so the posteriors
match the returned reliabilities. Items and annotators are visited in sorted
order, so the result does not depend on the order of the votes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from alignloop.labeling import LabelingError

CHOICES = ("a", "b", "tie", "both_bad")
R_MIN, R_MAX = 0.01, 0.99
VERDICT_RELIABILITY = 0.99


@dataclass(frozen=True)
class Vote:
    """One person's answer about one pair: "a", "b", "tie" or "both_bad"."""

    item: str
    annotator: str
    choice: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        where = f"vote on item {self.item!r} by annotator {self.annotator!r}"
        if self.choice not in CHOICES:
            raise LabelingError(f"{where}: choice {self.choice!r} is not one of {', '.join(CHOICES)}")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise LabelingError(f"{where}: weight must be finite and >= 0, got {self.weight}")


@dataclass(frozen=True)
class Posterior:
    """The soft label of one item. `n_votes` counts its a/b/tie votes."""

    item: str
    p_a: float
    n_votes: int
    n_both_bad: int
    votes_a: int
    votes_b: int
    votes_tie: int
    verdict: str = ""      # the adjudicated choice, if the item has one


@dataclass(frozen=True)
class Aggregate:
    posteriors: dict[str, Posterior]
    reliability: dict[str, float]
    iterations_run: int
    converged: bool


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))   # = 1 / (1 + e^-x), without overflow


def aggregate_votes(votes: Iterable[Vote], *, prior_reliability: float = 0.75,
                    prior_strength: float = 4.0, iterations: int = 100,
                    judge_log_odds: Mapping[str, float] | None = None,
                    judge_weight: float = 0.0, tol: float = 1e-6,
                    verdicts: Mapping[str, str] | None = None,
                    verdict_reliability: float = VERDICT_RELIABILITY) -> Aggregate:
    """Posterior P(a better) of every voted item and each annotator's reliability (see module).

    `judge_log_odds[item]` (missing or NaN: no judge evidence) is added with
    `judge_weight`; 0 leaves the posteriors as the votes alone make them.
    `verdicts[item]` is an adjudicated choice, a strong voter of reliability
    `verdict_reliability` ("tie" and "both_bad" verdicts add no log-odds, like votes).
    """
    if not 0 < prior_reliability < 1:
        raise LabelingError(f"prior_reliability must be in (0, 1), got {prior_reliability}")
    if not prior_strength > 0:
        raise LabelingError(f"prior_strength must be > 0, got {prior_strength}")
    if iterations < 1:
        raise LabelingError(f"iterations must be >= 1, got {iterations}")
    if not judge_weight >= 0:
        raise LabelingError(f"judge_weight must be >= 0, got {judge_weight}")
    if not 0.5 <= verdict_reliability < 1:
        raise LabelingError(f"verdict_reliability must be in [0.5, 1), got {verdict_reliability}")
    verdicts = dict(verdicts or {})
    bad = {i: c for i, c in verdicts.items() if c not in CHOICES}
    if bad:
        raise LabelingError(f"verdicts must be one of {', '.join(CHOICES)}: {bad}")
    votes = list(votes)
    items = sorted({v.item for v in votes} | set(verdicts))
    annotators = sorted({v.annotator for v in votes})
    item_ix = {x: i for i, x in enumerate(items)}
    ann_ix = {x: j for j, x in enumerate(annotators)}

    # sorted, so that the floating-point sums below do not depend on the order of `votes`
    ab = sorted((v for v in votes if v.choice in ("a", "b")),
                key=lambda v: (v.item, v.annotator, v.choice, v.weight))
    vi = np.array([item_ix[v.item] for v in ab], dtype=np.int64)          # (V,)
    vj = np.array([ann_ix[v.annotator] for v in ab], dtype=np.int64)      # (V,)
    sign = np.array([1.0 if v.choice == "a" else -1.0 for v in ab])       # (V,)
    w = np.array([v.weight for v in ab], dtype=np.float64)                # (V,)

    prior_lo = np.zeros(len(items))                                        # (I,)
    if judge_log_odds is not None and judge_weight > 0:
        for x, i in item_ix.items():
            lo = judge_log_odds.get(x, math.nan)
            prior_lo[i] = judge_weight * lo if math.isfinite(lo) else 0.0
    verdict_lo = math.log(verdict_reliability / (1 - verdict_reliability))
    for x, c in verdicts.items():
        if c in ("a", "b"):
            prior_lo[item_ix[x]] += verdict_lo if c == "a" else -verdict_lo

    def e_step(r: np.ndarray) -> np.ndarray:
        lo = np.log(r / (1 - r))[vj]
        return _sigmoid(prior_lo + np.bincount(vi, sign * w * lo, minlength=len(items)))

    def m_step(p: np.ndarray) -> np.ndarray:
        agree = np.where(sign > 0, p[vi], 1.0 - p[vi])
        num = np.bincount(vj, w * agree, minlength=len(annotators))
        den = np.bincount(vj, w, minlength=len(annotators))
        r = (prior_reliability * prior_strength + num) / (prior_strength + den)
        return np.clip(r, R_MIN, R_MAX)

    r = np.full(len(annotators), float(prior_reliability))
    run, converged = 0, False
    while run < iterations and not converged:
        r_new = m_step(e_step(r))
        converged = float(np.max(np.abs(r_new - r), initial=0.0)) <= tol
        r, run = r_new, run + 1
    p = e_step(r)

    counts = {x: dict.fromkeys(CHOICES, 0) for x in items}
    for v in votes:
        counts[v.item][v.choice] += 1
    posteriors = {}
    for x, i in item_ix.items():
        c = counts[x]
        posteriors[x] = Posterior(x, float(p[i]), c["a"] + c["b"] + c["tie"], c["both_bad"],
                                  c["a"], c["b"], c["tie"], verdicts.get(x, ""))
    reliability = {a: float(r[j]) for a, j in ann_ix.items()}
    return Aggregate(posteriors, reliability, run, converged)
