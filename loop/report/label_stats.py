"""Label statistics of a round: where its labels came from and how far to trust them
(pure functions over the round's labels, candidates and pairs tables; no I/O)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from itertools import combinations

import numpy as np
from alignloop.report.metrics import wilson


def intransitive_triples(prefs: Iterable[tuple]) -> dict:
    """Cycles x > y > z > x among responses to the same prompt.

    `prefs` are (group, x, y, p) with p = P(x preferred to y). Repeated comparisons of
    the same two responses are averaged; p = 0.5 gives no edge. Among groups with >= 3
    responses, a triple counts when all three of its pairs have an edge, and is
    intransitive when the edges form a cycle (each response beats exactly one other).
    """
    sums: dict = defaultdict(lambda: defaultdict(list))
    for group, x, y, p in prefs:
        if x == y or p is None or not math.isfinite(p):
            continue
        key, p = ((x, y), p) if x < y else ((y, x), 1.0 - p)
        sums[group][key].append(p)
    prompts = triples = cyclic = 0
    for edges in sums.values():
        nodes = sorted({v for k in edges for v in k})
        if len(nodes) < 3:
            continue
        prompts += 1
        beats = {}
        for (u, v), ps in edges.items():
            m = sum(ps) / len(ps)
            if m != 0.5:
                beats[(u, v)] = m > 0.5              # True: u beats v
        for a, b, c in combinations(nodes, 3):
            if all(k in beats for k in ((a, b), (b, c), (a, c))):
                triples += 1
                wins = Counter()
                for u, v in ((a, b), (b, c), (a, c)):
                    wins[u if beats[(u, v)] else v] += 1
                cyclic += all(wins[x] == 1 for x in (a, b, c))
    return {"prompts": prompts, "triples": triples, "intransitive": cyclic,
            "share": cyclic / triples if triples else math.nan}


def _human_majority(labels: Sequence[dict]) -> dict[str, str]:
    votes: dict[str, Counter] = defaultdict(Counter)
    for lab in labels:
        if lab.get("source") == "human" and lab.get("choice") in ("a", "b"):
            votes[lab["item_id"]][lab["choice"]] += 1
    return {i: ("a" if c["a"] > c["b"] else "b") for i, c in votes.items() if c["a"] != c["b"]}


def _sides(p_a: dict, majority: dict[str, str]) -> dict[str, str]:
    """{item: "a" | "b"}: the side a judge's p_a picks, on the items with a human majority
    (a missing, NaN or exactly 0.5 p_a picks none)."""
    return {i: "a" if p > 0.5 else "b" for i, p in p_a.items()
            if i in majority and p is not None and math.isfinite(p) and p != 0.5}


def _no_judge_human(shared: list, human_items: set, majority: dict) -> str | None:
    """Why no item has both a judge verdict and a human majority (None when some do)."""
    if shared:
        return None
    if not human_items:
        return "no human votes this round"
    if not majority:
        return "the human votes were split evenly on every item"
    return "no item with a human majority has a judge verdict (p_a missing or exactly 0.5)"


def label_stats(labels: Sequence[dict], candidates: Sequence[dict], pairs: Sequence[dict], *,
                human_budget: int = 0) -> dict:
    """Where this round's labels came from and how far to trust them.

    - pairs_by_source / labels_by_source: pairs trained on, and raw label rows, by source;
      pairs_by_round: the pairs trained on by the round that labeled them (earlier rounds'
      pairs are replayed, e.g. round 0's static pairs).
    - decisions, routed_share: of the selected candidates, how many went auto / human /
      drop, and the share sent to people; budget_used = human-routed / `human_budget`.
    - judge_human: on items with a human majority (more a than b votes or the reverse),
      the share where the judge ensemble's p_a (candidates table; else the judges' mean
      label) is on the same side (agreement_lo/hi: its 95% Wilson interval over the
      items), and Cohen's kappa of the two (a/b) codings (kappa_lo/hi: its 95% bootstrap
      interval over the items, NaN where resamples leave it undefined); `reason`
      says why there is no such item (None when there are some).
      These are the items the labeler routed to people (for uncertainty: the judge's
      least certain pairs), judged as the judge stood when it chose them. `by_judge`: the
      same share for each judge of the ensemble (candidates' `p_a:NAME` columns).
    - drop_reasons: of the selected candidates dropped, how many for each reason (the
      last clause of the candidates table's `reason`, e.g. "human budget (16) spent").
    - human_alpha: Krippendorff's alpha (nominal a/b/tie/both_bad) over human votes.
    - gold_accuracy: share of human votes equal to the `gold` answer, when labels have
      a `gold` column (NaN otherwise).
    - intransitivity: `intransitive_triples` over the labeled pairs (chosen beats rejected
      with p_chosen) and over the judge's view of every candidate pair.
    """
    from alignloop.labeling.agreement import cohen_kappa, cohen_kappa_interval, krippendorff_alpha

    selected = [c for c in candidates if c.get("selected")]
    decisions = Counter(c.get("decision", "") for c in selected)
    human_items = {lab["item_id"] for lab in labels if lab.get("source") == "human"}
    judge_p = {c["item_id"]: c.get("p_a") for c in candidates}
    if not judge_p:
        per_item: dict[str, list[float]] = defaultdict(list)
        for lab in labels:
            if lab.get("source") == "judge" and lab.get("p_a") is not None:
                per_item[lab["item_id"]].append(lab["p_a"])
        judge_p = {i: float(np.mean(ps)) for i, ps in per_item.items()}
    majority = _human_majority(labels)
    judge_side = _sides(judge_p, majority)
    shared = [i for i in majority if i in judge_side]
    units: dict[str, dict[str, str]] = defaultdict(dict)
    for lab in labels:
        if lab.get("source") == "human":
            units[lab["item_id"]][lab.get("annotator", "")] = lab.get("choice")
    by_judge = {}
    for col in sorted({k for c in candidates for k in c if k.startswith("p_a:")}):
        sides = _sides({c["item_id"]: c.get(col) for c in candidates}, majority)
        by_judge[col[len("p_a:"):]] = {
            "items": len(sides), "agreement": (sum(majority[i] == sides[i] for i in sides)
                                               / len(sides) if sides else math.nan)}
    agree = (sum(majority[i] == judge_side[i] for i in shared) / len(shared)
             if shared else math.nan)
    lo, hi = wilson(agree, len(shared)) if shared else (math.nan, math.nan)
    judge_coded = {i: judge_side[i] for i in shared}
    human_coded = {i: majority[i] for i in shared}
    kappa_lo, kappa_hi = cohen_kappa_interval(judge_coded, human_coded)
    dropped = Counter(str(c.get("reason") or "no reason given").split("; ")[-1]
                      for c in selected if c.get("decision") == "drop")
    gold = [lab for lab in labels if lab.get("source") == "human" and lab.get("gold") is not None]
    routed = decisions.get("human", 0)
    return {
        "pairs_by_source": dict(Counter(p.get("source", "") for p in pairs)),
        "pairs_by_round": {str(r): n for r, n in sorted(Counter(
            p["round"] for p in pairs if p.get("round") is not None).items())},
        "labels_by_source": dict(Counter(lab.get("source", "") for lab in labels)),
        "human_votes": sum(1 for lab in labels if lab.get("source") == "human"),
        "human_items": len(human_items),
        "annotators": len({lab.get("annotator") for lab in labels if lab.get("source") == "human"}),
        "candidates": len(candidates), "selected": len(selected), "decisions": dict(decisions),
        "routed_share": routed / len(selected) if selected else math.nan,
        "human_budget": int(human_budget),
        "budget_used": routed / human_budget if human_budget else math.nan,
        "judge_human": {"items": len(shared),
                        "agreement": agree, "agreement_lo": lo, "agreement_hi": hi,
                        "kappa": cohen_kappa(judge_coded, human_coded),
                        "kappa_lo": kappa_lo, "kappa_hi": kappa_hi,
                        "reason": _no_judge_human(shared, human_items, majority),
                        "by_judge": by_judge},
        "drop_reasons": dict(dropped),
        "human_alpha": krippendorff_alpha(units),
        "gold_accuracy": (sum(lab.get("choice") == lab["gold"] for lab in gold) / len(gold)
                          if gold else math.nan),
        "gold_votes": len(gold),
        "intransitivity": {
            "labels": intransitive_triples((p["prompt"], p["chosen"], p["rejected"], p["p_chosen"])
                                           for p in pairs),
            "judge": intransitive_triples((c.get("prompt_id", c.get("prompt")), c["a"], c["b"],
                                           c.get("p_a")) for c in candidates),
        },
    }
