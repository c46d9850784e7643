"""Choosing which pairs of a prompt's k samples are worth labeling.

Every strategy sees the same thing: a `CandidateGroup` (one prompt, its k
responses) and the judges' `Judgement` for each candidate pair (i, j), i < j.
It returns the group's pairs in its order of preference with a score that
ranks groups against each other when the budget is smaller than the number of
prompts. Responses that are identical or near-identical (word-level similarity
>= `near_duplicate`) are never candidates.

- `max_min`: best vs worst by the judges' mean (Borda score: mean probability
  of beating the other samples); the RLHFlow recipe (Dong et al. 2024).
- `random`: a uniformly random pair.
- `uncertainty`: the pair the judges are least sure about (largest spread of
  member probabilities; ties broken by closeness of p to 0.5).
- `double_thompson`: two independent draws of an ensemble member each pick
  their best response (Dwaracherla et al. 2024, "Efficient Exploration for
  LLMs"); when both draws pick the same one, the second is redrawn.
- `bald`: the pair with the most expected information about the judge ensemble,
  the mutual information between the label and the ensemble member,
  I(y; m) = H(E_m p_m) - E_m H(p_m) (BALD, Houlsby et al. 2011). Members that
  all say p = 0.5 score 0 (a coin flip teaches nothing: aleatoric noise);
  members that disagree score high (epistemic), up to ln 2 nats.
- `bald_diverse`: `bald`, but the batch is built greedily: each pair's score is
  discounted by its squared cosine similarity to the most similar pair already
  taken, measured on the members' centred log-odds (for a linear ensemble, the
  part of the feature difference along which the members disagree). Two pairs
  that move the members alike are picked together only when nothing else is
  left (the redundancy BatchBALD, Kirsch et al. 2019, avoids).
- `apl`: prompts with the highest predictive entropy of the policy (Monte
  Carlo: minus the mean sequence log-prob of its samples), then the pair with
  the largest implicit-reward gap beta * |log pi/pi_ref (a) - log pi/pi_ref (b)|
  (Muldrew et al. 2024, "Active Preference Learning for LLMs").

A `random_share` of the budget is always filled with uniformly random pairs,
so every round keeps some labels that no model chose.
"""

from __future__ import annotations

import difflib
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from alignloop.labeling import Judgement, LabelingError
from alignloop.records import Prompt

_WORD = re.compile(r"\w+")
PairKey = tuple[int, int, int]  # (group index, i, j) with i < j


@dataclass(frozen=True)
class CandidateGroup:
    """One prompt and its sampled responses, with optional per-response sequence
    log-probs under the sampling policy and the reference (needed by `apl`)."""

    prompt_id: str
    prompt: Prompt
    responses: tuple[str, ...]
    slice: str = ""
    policy_logps: tuple[float, ...] | None = None
    reference_logps: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Pick:
    group: int
    i: int
    j: int
    score: float
    reason: str


def similarity(a: str, b: str) -> float:
    """Word-level similarity in [0, 1]: difflib ratio over lower-cased word tokens, so
    responses differing only in case, spacing or punctuation count as identical."""
    wa, wb = _WORD.findall(a.lower()), _WORD.findall(b.lower())
    if wa == wb:
        return 1.0
    return difflib.SequenceMatcher(None, wa, wb, autojunk=False).ratio()


def candidate_pairs(group: CandidateGroup, near_duplicate: float) -> list[tuple[int, int]]:
    """All (i, j), i < j, whose responses are not (near-)identical."""
    r = group.responses
    return [(i, j) for i in range(len(r)) for j in range(i + 1, len(r))
            if similarity(r[i], r[j]) < near_duplicate]


def _preference_tensor(pairs, judged: dict[tuple[int, int], Judgement], k: int) -> np.ndarray:
    """(M, k, k) member probabilities that i beats j; NaN where not judged."""
    n_members = len(next(iter(judged.values())).members)
    P = np.full((n_members, k, k), np.nan)
    for i, j in pairs:
        m = np.asarray(judged[(i, j)].members, dtype=np.float64)
        P[:, i, j] = m
        P[:, j, i] = 1.0 - m
    return P


def _borda(P: np.ndarray) -> np.ndarray:
    """Mean probability of beating the others; NaN for a response with no judged pair."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices are expected
        return np.nanmean(P, axis=-1)


def _mean_p(j: Judgement) -> float:
    return 0.5 if math.isnan(j.p_a) else j.p_a


def _spread(j: Judgement) -> float:
    return 0.5 if math.isnan(j.uncertainty) else j.uncertainty


# --------------------------------------------------------------------------- strategies
# Each: (group, pairs, judged, rng, ctx) -> [(i, j, score)] best first.


def _max_min(group, pairs, judged, rng, ctx):
    p_mean = {ij: _mean_p(judged[ij]) for ij in pairs}
    k = len(group.responses)
    B = np.full((k, k), np.nan)
    for (i, j), p in p_mean.items():
        B[i, j], B[j, i] = p, 1 - p
    borda = _borda(B[None])[0]
    ranked = [(i, j, abs(borda[i] - borda[j])) for i, j in pairs]
    return sorted(ranked, key=lambda t: -t[2])


def _random(group, pairs, judged, rng, ctx):
    order = rng.permutation(len(pairs))
    return [(pairs[o][0], pairs[o][1], float(rng.random())) for o in order]


def _uncertainty(group, pairs, judged, rng, ctx):
    ranked = [(i, j, _spread(judged[(i, j)]), -abs(_mean_p(judged[(i, j)]) - 0.5))
              for i, j in pairs]
    ranked.sort(key=lambda t: (-t[2], -t[3]))
    return [(i, j, s) for i, j, s, _ in ranked]


def _double_thompson(group, pairs, judged, rng, ctx):
    k = len(group.responses)
    P = _preference_tensor(pairs, judged, k)                            # (M, k, k)
    weights = np.asarray(next(iter(judged.values())).weights or [1.0] * P.shape[0], dtype=float)
    borda = _borda(P)                                                   # (M, k)
    usable = np.where(~np.all(np.isnan(borda), axis=1) & (weights > 0))[0]
    if len(usable) == 0:
        return _uncertainty(group, pairs, judged, rng, ctx)
    w = weights[usable] / weights[usable].sum()
    best = {int(m): int(np.nanargmax(borda[m])) for m in usable}       # each member's favourite
    allowed = set(pairs)
    out, used = [], set()
    for _ in range(len(pairs)):
        i = best[int(rng.choice(usable, p=w))]
        j = None
        for _ in range(ctx["redraws"] + 1):
            m = int(rng.choice(usable, p=w))
            second, cand = borda[m], best[m]
            if cand != i and tuple(sorted((i, cand))) in allowed - used:
                j = cand
                break
        if j is None:  # both draws agree: the second-best under the last draw that can pair
            order = [int(x) for x in np.argsort(-np.nan_to_num(second, nan=-1.0))]
            j = next((c for c in order if c != i and tuple(sorted((i, c))) in allowed - used), None)
        if j is None:
            rest = sorted(allowed - used)
            if not rest:
                break
            i, j = rest[0]
        key = tuple(sorted((i, j)))
        used.add(key)
        out.append((key[0], key[1], _spread(judged[key])))
    return out


def _member_matrix(js: list[Judgement]) -> tuple[np.ndarray, np.ndarray]:
    """(N, M) member probabilities and (N, M) normalised weights of one judge's judgements
    (members are aligned). An invalid (NaN) member gets weight 0; a judgement without a
    valid member becomes one neutral p = 0.5."""
    P = np.array([j.members for j in js], dtype=np.float64)
    W = np.array([j.weights or (1.0,) * P.shape[1] for j in js], dtype=np.float64)
    W = np.where(np.isnan(P) | (W <= 0), 0.0, W)
    P = np.where(W > 0, P, 0.5)
    W[W.sum(1) == 0] = 1.0
    return P, W / W.sum(1, keepdims=True)


def _entropy(p: np.ndarray) -> np.ndarray:
    """Binary entropy in nats."""
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return -(p * np.log(p) + (1 - p) * np.log1p(-p))


def information_gains(js: list[Judgement]) -> np.ndarray:
    """(N,) BALD score of each pair: I(y; m) = H(sum_m w_m p_m) - sum_m w_m H(p_m), in nats.

    y is the label (a beats b), m the ensemble member drawn with weight w_m. The first
    term is the total predictive entropy, the second the part every member expects
    anyway (label noise); their difference is what the label says about which member is
    right. E.g. members (0.1, 0.9): H(0.5) - H(0.1) = 0.693 - 0.325 = 0.368; members
    (0.5, 0.5): 0.693 - 0.693 = 0."""
    P, W = _member_matrix(js)
    return np.maximum(_entropy((W * P).sum(1)) - (W * _entropy(P)).sum(1), 0.0)


def information_gain(j: Judgement) -> float:
    """`information_gains` of one judgement."""
    return float(information_gains([j])[0])


def _bald(group, pairs, judged, rng, ctx):
    js = [judged[ij] for ij in pairs]
    ig = information_gains(js)
    h = _entropy(np.array([_mean_p(j) for j in js]))
    # ties (one-member judges score 0 everywhere): predictive entropy, then pair order
    order = sorted(range(len(pairs)), key=lambda n: (-ig[n], -h[n]))
    return [(*pairs[n], float(ig[n])) for n in order]


def _signatures(js: list[Judgement]) -> np.ndarray:
    """(N, M) the members' log-odds minus their weighted mean, scaled by sqrt(weight) so that
    a dot product of two signatures is the weighted covariance of the members' log-odds. An
    invalid (NaN) member counts as 0. Members are aligned across one judge's judgements."""
    P, W = _member_matrix(js)
    P = np.clip(P, 1e-6, 1 - 1e-6)
    Z = np.log(P) - np.log1p(-P)
    return np.sqrt(W) * (Z - (W * Z).sum(1, keepdims=True))


def _take_top(offers: list[Pick], n: int, cap: int, judged) -> list[Pick]:
    """The n best offers by score, at most `cap` per group (stable: equal scores keep group
    order)."""
    out, per_group = [], {}
    for p in sorted(offers, key=lambda p: -p.score):
        if len(out) >= n:
            break
        if per_group.get(p.group, 0) < cap:
            per_group[p.group] = per_group.get(p.group, 0) + 1
            out.append(p)
    return out


def _take_diverse(offers: list[Pick], n: int, cap: int, judged) -> list[Pick]:
    """Greedy batch: score * (1 - max cos^2 to the pairs already taken), on the members'
    centred log-odds; at most `cap` per group. A pair whose signature is parallel to one
    already taken (the same feature difference, or its mirror) scores 0 and comes last."""
    if not offers or n <= 0:
        return []
    S = _signatures([judged[(p.group, p.i, p.j)] for p in offers])             # (N, M)
    norms = np.linalg.norm(S, axis=1)
    unit = np.divide(S, norms[:, None], out=np.zeros_like(S), where=norms[:, None] > 1e-9)
    score = np.array([p.score for p in offers])
    redundancy = np.zeros(len(offers))                                        # max cos^2 so far
    open_ = np.ones(len(offers), dtype=bool)
    out, per_group = [], {}
    while len(out) < n and open_.any():
        # lexicographic: any pair not parallel to a taken one first, then the discounted score
        key = np.where(open_, (redundancy < 1 - 1e-9) * 1e6 + score * (1 - redundancy), -np.inf)
        k = int(np.argmax(key))                       # argmax: first of equals, so stable
        p = offers[k]
        open_[k] = False
        if per_group.get(p.group, 0) >= cap:
            continue
        per_group[p.group] = per_group.get(p.group, 0) + 1
        out.append(Pick(p.group, p.i, p.j, float(score[k] * (1 - redundancy[k])), p.reason))
        redundancy = np.maximum(redundancy, (unit @ unit[k]) ** 2)
    return out


def _apl(group, pairs, judged, rng, ctx):
    if group.policy_logps is None or group.reference_logps is None:
        raise LabelingError(
            f"prompt {group.prompt_id}: selection strategy 'apl' needs each response's "
            "log-prob under the policy and the reference (candidates columns `logprob_sum` and "
            "`reference_logprob`; `alignloop judge --reference MODEL` computes the latter)")
    if group.prompt_id not in ctx["apl_prompts"]:
        return []
    entropy = ctx["entropy"][group.prompt_id]
    r = ctx["beta"] * (np.asarray(group.policy_logps) - np.asarray(group.reference_logps))
    ranked = sorted(pairs, key=lambda ij: -abs(r[ij[0]] - r[ij[1]]))
    return [(i, j, entropy) for i, j in ranked]


STRATEGIES: dict[str, Callable] = {
    "max_min": _max_min, "random": _random, "uncertainty": _uncertainty,
    "double_thompson": _double_thompson, "apl": _apl, "bald": _bald, "bald_diverse": _bald,
}
BATCH: dict[str, Callable] = {"bald_diverse": _take_diverse}
"""How a strategy turns its offers into the batch (default: the best scores, `_take_top`)."""


def select_pairs(groups: list[CandidateGroup], pairs: list[list[tuple[int, int]]],
                 judged: dict[PairKey, Judgement], cfg, *, beta: float = 0.1) -> list[Pick]:
    """Pick at most `cfg.budget` pairs (0: `pairs_per_prompt` per group) from the candidate
    pairs of every group; `cfg` is a SelectionConfig."""
    if cfg.strategy not in STRATEGIES:
        raise LabelingError(f"unknown selection strategy {cfg.strategy!r}; "
                            f"valid: {sorted(STRATEGIES)}")
    rng = np.random.default_rng(cfg.seed)
    budget = cfg.budget or cfg.pairs_per_prompt * len(groups)
    n_random = int(round(cfg.random_share * budget))
    ctx = {"redraws": cfg.thompson_redraws, "beta": beta}
    if cfg.strategy == "apl":
        ctx["entropy"] = {g.prompt_id: -float(np.mean(g.policy_logps))
                          for g in groups if g.policy_logps is not None}
        ranked = sorted(ctx["entropy"], key=lambda pid: -ctx["entropy"][pid])
        ctx["apl_prompts"] = set(ranked[:max(1, math.ceil(cfg.apl_prompt_share * len(ranked)))])

    strategy, take = STRATEGIES[cfg.strategy], BATCH.get(cfg.strategy, _take_top)
    offers: list[Pick] = []
    for g, (group, gp) in enumerate(zip(groups, pairs, strict=True)):
        if not gp:
            continue
        local = {(i, j): judged[(g, i, j)] for i, j in gp}
        ranked = strategy(group, gp, local, rng, ctx)
        if take is _take_top:   # only a group's best can be taken; a batch picker sees all
            ranked = ranked[:cfg.pairs_per_prompt]
        offers += [Pick(g, i, j, float(s), f"strategy {cfg.strategy}") for i, j, s in ranked]
    chosen = take(offers, max(budget - n_random, 0), cfg.pairs_per_prompt, judged)

    taken = {(p.group, p.i, p.j) for p in chosen}
    per_group: dict[int, int] = {}
    for p in chosen:
        per_group[p.group] = per_group.get(p.group, 0) + 1
    rest = [(g, i, j) for g, gp in enumerate(pairs) for i, j in gp if (g, i, j) not in taken]
    target = min(len(chosen) + n_random, budget)
    for o in rng.permutation(len(rest)):
        if len(chosen) >= target:
            break
        g, i, j = rest[o]
        if per_group.get(g, 0) >= cfg.pairs_per_prompt:
            continue
        per_group[g] = per_group.get(g, 0) + 1
        chosen.append(Pick(g, i, j, 0.0, "random share"))
    return chosen
