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
    allowed = set(pairs)
    out, used = [], set()
    for _ in range(len(pairs)):
        first = borda[rng.choice(usable, p=w)]
        i = int(np.nanargmax(first))
        j = None
        for _ in range(ctx["redraws"] + 1):
            second = borda[rng.choice(usable, p=w)]
            cand = int(np.nanargmax(second))
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
    "double_thompson": _double_thompson, "apl": _apl,
}


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

    strategy = STRATEGIES[cfg.strategy]
    offers: list[Pick] = []
    for g, (group, gp) in enumerate(zip(groups, pairs, strict=True)):
        if not gp:
            continue
        local = {(i, j): judged[(g, i, j)] for i, j in gp}
        ranked = strategy(group, gp, local, rng, ctx)[:cfg.pairs_per_prompt]
        offers += [Pick(g, i, j, float(s), f"strategy {cfg.strategy}") for i, j, s in ranked]
    offers.sort(key=lambda p: -p.score)   # stable: equal scores keep group order
    chosen = offers[:max(budget - n_random, 0)]

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
