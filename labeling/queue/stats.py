"""What the queue knows, read out: counts per round, agreement, progress, raw votes,
soft-labeled pairs, and waiting for labels. `QueueStore` methods delegate here.

The functions take a `QueueStore` (its `read(sql, params)`, `clock` and
`round_counts`) or already-read label rows, and are pure past the reading.

Agreement (alignloop.labeling.agreement), over the nominal choices a/b/tie/both_bad,
with every labeled item a unit (gold items included: they are real comparisons
that many annotators label):
- Krippendorff's alpha per round (that round's items) and overall.
- Per annotator, two views: `alpha_items` is alpha over the items that annotator
  labeled (all coders' votes on them: how contested their items are), and
  `alpha_without` is leave-one-out, the overall alpha with that annotator's
  votes removed — above the overall alpha means the panel agrees better without them.
- Cohen's kappa for each pair of annotators with at least `MIN_SHARED` shared items.
- Gold accuracy per annotator: share of their gold labels equal to the known answer.
- Annotator vs judge, when `judge_p` (item_id -> judge P(a preferred)) is given:
  the share of an annotator's a/b votes on the side the judge favours (items
  where the judge says exactly 0.5, or NaN, are left out).
Undefined values (no pairable data) are None, so the result is JSON as it is.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from itertools import combinations

from alignloop.labeling.agreement import cohen_kappa, krippendorff_alpha
from alignloop.labeling.handoff import HumanVote, QueueItem
from alignloop.labeling.queue.leases import AVAILABLE
from alignloop.records import Pair

log = logging.getLogger(__name__)

MIN_SHARED = 5
VOTES = ("SELECT l.item_id, n.name, l.choice, i.round, l.confidence, l.display_order, "
         "l.created_at, l.comment FROM labels l JOIN items i ON i.item_id = l.item_id "
         "JOIN annotators n ON n.id = l.annotator_id ")   # the columns of a HumanVote

LABEL_ROWS = (
    "SELECT l.id, l.item_id, i.round, i.slice, i.gold, n.name AS annotator, l.choice, "
    "l.confidence, l.comment, l.display_order, l.created_at, l.lease_id, l.guideline_version "
    "FROM labels l JOIN items i ON i.item_id = l.item_id "
    "JOIN annotators n ON n.id = l.annotator_id ORDER BY l.id")

ROUND_COUNTS = (
    "SELECT round, COUNT(*) AS items, SUM(CASE WHEN is_open = 0 THEN 1 ELSE 0 END) AS complete,"
    " COALESCE(SUM(n_labels), 0) AS labels FROM items WHERE gold IS NULL "
    "GROUP BY round ORDER BY round")


def votes(store, round: int) -> list[HumanVote]:
    """Every label on the round's (non-gold) items, oldest first, then the round's
    adjudicated verdicts (source "adjudicated", by item id)."""
    from alignloop.labeling.queue.adjudication import verdicts

    rows = store.read(VOTES + "WHERE i.round = :r AND i.gold IS NULL ORDER BY l.id", {"r": round})
    return [HumanVote(*r) for r in rows] + [
        HumanVote(i, v["reviewer"], v["choice"], v["round"], 3, "ab", v["created_at"],
                  v["comment"], source="adjudicated")
        for i, v in verdicts(store, round).items()]


def gold_votes(store) -> tuple[list[HumanVote], dict[str, str]]:
    """(every label on a gold item, oldest first; each gold item's known answer)."""
    rows = store.read(VOTES + "WHERE i.gold IS NOT NULL ORDER BY l.id")
    answers = store.read("SELECT item_id, gold FROM items WHERE gold IS NOT NULL ORDER BY seq")
    return [HumanVote(*r) for r in rows], {r.item_id: r.gold for r in answers}


def round_counts(store, round: int) -> tuple[int, int, int]:
    """(labels, votes still missing, items pending) of the round's regular items."""
    labels, missing, pending = store.read(
        "SELECT COALESCE(SUM(n_labels), 0), COALESCE(SUM(CASE WHEN is_open = 1 THEN needed -"
        " n_labels ELSE 0 END), 0), COALESCE(SUM(is_open), 0) FROM items WHERE round = :r "
        "AND gold IS NULL", {"r": round})[0]
    return int(labels), int(missing), int(pending)


def label_target(store, round: int, min_labels: int) -> tuple[int, int]:
    """(labels so far, labels to wait for): `min_labels`, or with 0 every vote still needed."""
    have, missing, _ = round_counts(store, round)
    return have, (min_labels if min_labels > 0 else have + missing)


def label_rows(store) -> list[dict]:
    """Every label joined with its item and annotator, oldest first."""
    return [dict(r._mapping) for r in store.read(LABEL_ROWS)]


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _units(rows: Sequence[dict]) -> dict[str, dict[str, str]]:
    units: dict[str, dict[str, str]] = defaultdict(dict)
    for r in rows:
        units[r["item_id"]][r["annotator"]] = r["choice"]
    return units


def status(store, judge_p: Mapping[str, float] | None = None) -> dict:
    """{"rounds": [...], "annotators": [...], "kappa": [...], "alpha", "labels", "items",
    "gold_items", "judge"} (see module docstring for the agreement measures)."""
    counts = [dict(r._mapping) for r in store.read(ROUND_COUNTS)]
    gold_items = store.read("SELECT COUNT(*) FROM items WHERE gold IS NOT NULL")[0][0]
    names = [r[0] for r in store.read("SELECT name FROM annotators WHERE active = 1 ORDER BY id")]
    return summarize(counts, label_rows(store), names, gold_items=gold_items, judge_p=judge_p)


def summarize(counts: Sequence[dict], rows: Sequence[dict], names: Sequence[str], *,
              gold_items: int = 0, judge_p: Mapping[str, float] | None = None) -> dict:
    """`status` from the per-round item counts and the label rows."""
    units = _units(rows)
    by_round: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        by_round[r["round"]].append(r)
    rounds = []
    for c in counts:
        k = c["round"]
        rounds.append({"round": k, "items": c["items"], "complete": int(c["complete"] or 0),
                       "pending": c["items"] - int(c["complete"] or 0),
                       "labels": int(c["labels"]), "alpha": _num(krippendorff_alpha(
                           _units(by_round.get(k, []))))})

    by_ann: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_ann[r["annotator"]].append(r)
    annotators = []
    for name in list(names) + sorted(set(by_ann) - set(names)):
        mine = by_ann.get(name, [])
        items = {r["item_id"] for r in mine}
        without = {i: {a: v for a, v in coders.items() if a != name} for i, coders in units.items()}
        gold = [r for r in mine if r["gold"] is not None]
        correct = sum(r["choice"] == r["gold"] for r in gold)
        entry = {"name": name, "labels": len(mine),
                 "alpha_items": _num(krippendorff_alpha({i: units[i] for i in items})),
                 "alpha_without": _num(krippendorff_alpha(without)),
                 "gold_seen": len(gold), "gold_correct": correct,
                 "gold_accuracy": correct / len(gold) if gold else None}
        if judge_p is not None:
            agree, n = _judge_agreement(mine, judge_p)
            entry.update(judge_agreement=agree / n if n else None, judge_votes=n)
        annotators.append(entry)

    kappa = []
    coded = {a: {r["item_id"]: r["choice"] for r in mine} for a, mine in by_ann.items()}
    for a, b in combinations(sorted(coded), 2):
        shared = len(coded[a].keys() & coded[b].keys())
        if shared >= MIN_SHARED:
            kappa.append({"a": a, "b": b, "shared": shared,
                          "kappa": _num(cohen_kappa(coded[a], coded[b]))})

    out = {"rounds": rounds, "annotators": annotators, "kappa": kappa,
           "alpha": _num(krippendorff_alpha(units)), "labels": len(rows),
           "items": sum(c["items"] for c in counts), "gold_items": gold_items, "judge": None}
    if judge_p is not None:
        agree, n = _judge_agreement(rows, judge_p)
        out["judge"] = {"votes": n, "agreement": agree / n if n else None}
    return out


def _judge_agreement(rows: Sequence[dict], judge_p: Mapping[str, float]) -> tuple[int, int]:
    """(a/b votes on the judge's side, a/b votes on items the judge has a side on)."""
    agree = n = 0
    for r in rows:
        p = judge_p.get(r["item_id"])
        if r["choice"] not in ("a", "b") or p is None or not math.isfinite(p) or p == 0.5:
            continue
        n += 1
        agree += (r["choice"] == "a") == (p > 0.5)
    return agree, n


def export_raw(rows: Sequence[dict]) -> list[dict]:
    """Every vote: item, round, slice, annotator name, choice, confidence, comment,
    display order, time (Unix seconds and ISO 8601 UTC), lease, gold answer if any, and
    the version of the guideline it was given under (None: no guideline then)."""
    return [{"label_id": r["id"], "item_id": r["item_id"], "round": r["round"],
             "slice": r["slice"], "annotator": r["annotator"], "choice": r["choice"],
             "confidence": r["confidence"], "comment": r["comment"],
             "display_order": r["display_order"], "created_at": r["created_at"],
             "time": datetime.fromtimestamp(r["created_at"], timezone.utc).isoformat(),
             "lease_id": r["lease_id"], "gold": r["gold"],
             "guideline_version": r.get("guideline_version")} for r in rows]


def export_pairs(rows: Sequence[dict], items: Sequence[QueueItem], *,
                 prior_reliability: float = 0.75, prior_strength: float = 4.0,
                 iterations: int = 500, verdicts: Mapping[str, str] | None = None) -> list[Pair]:
    """Soft-labeled pairs of `items` from every vote in `rows` (Dawid-Skene over all of
    them, so gold and other rounds' votes inform each annotator's reliability), with
    `verdicts` (item_id -> adjudicated choice) as strong votes.

    chosen = the side the posterior favours, p_chosen = max(p, 1 - p), n_votes = a/b/tie
    votes, source "human", pair_id = the item's id (it stays when an adjudication flips the
    sides, and joins the pair to its votes in the raw export). Items without an a/b/tie
    vote or with p exactly 0.5 are left out.
    """
    from alignloop.labeling.aggregate import Vote, aggregate_votes

    result = aggregate_votes([Vote(r["item_id"], r["annotator"], r["choice"]) for r in rows],
                             prior_reliability=prior_reliability, prior_strength=prior_strength,
                             iterations=iterations, verdicts=verdicts)
    pairs = []
    for it in items:
        post = result.posteriors.get(it.item_id)
        if post is None or post.n_votes == 0 or post.p_a == 0.5:
            continue
        chosen, rejected, p = ((it.a, it.b, post.p_a) if post.p_a > 0.5
                               else (it.b, it.a, 1.0 - post.p_a))
        pairs.append(Pair(it.prompt, chosen, rejected, p_chosen=p, n_votes=post.n_votes,
                          source="human", slice=it.slice, round=it.round, pair_id=it.item_id))
    return pairs


def export_items(store, round: int | None = None) -> list[QueueItem]:
    """The regular (non-gold) items, optionally of one round, in queue order of arrival."""
    where = "AND round = :r" if round is not None else ""
    rows = store.read("SELECT item_id, round, prompt, a, b, slice, priority, votes_required, "
                      f"max_votes FROM items WHERE gold IS NULL {where} ORDER BY seq",
                      {"r": round} if round is not None else {})
    return [QueueItem(r.item_id, r.round, json.loads(r.prompt), r.a, r.b, r.slice, r.priority,
                      r.votes_required, r.max_votes) for r in rows]


def progress(store, annotator_id: int) -> dict:
    """{labeled, available, gold_seen, gold_correct, gold_accuracy} of one annotator."""
    p = {"ann": annotator_id, "now": store.clock()}
    labeled = store.labeled(annotator_id)
    available = store.read(f"SELECT COUNT(*) FROM items i WHERE {AVAILABLE}", p)[0][0]
    seen, correct = store.read(
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN l.choice = i.gold THEN 1 ELSE 0 END), 0) "
        "FROM labels l JOIN items i ON i.item_id = l.item_id "
        "WHERE l.annotator_id = :ann AND i.gold IS NOT NULL", p)[0]
    return {"labeled": labeled, "available": available, "gold_seen": seen,
            "gold_correct": int(correct), "gold_accuracy": correct / seen if seen else None}


def wait(store, round: int, min_labels: int, timeout_s: float, *, poll_s: float = 1.0,
         progress: bool = True) -> int:
    """Poll the round's counts until it has `min_labels` labels (0: every item its votes)
    or `timeout_s` passes, showing a tqdm line (labels / target, items pending) on stderr."""
    from alignloop.progress import tqdm

    def counts() -> tuple[int, int, int]:
        have, missing, pending = store.round_counts(round)
        return have, (min_labels if min_labels > 0 else have + missing), pending

    deadline = time.monotonic() + timeout_s
    have, target, pending = counts()
    # "round 3: human labels: 12/40 |███   | [00:05, 7 items pending]": the count and its
    # target from the first line on (a bar opened without a total printed "0label")
    with tqdm(desc=f"round {round}: human labels", total=max(target, have), initial=have, unit="label",
              bar_format="{desc}: {n_fmt}/{total_fmt} |{bar}| [{elapsed}{postfix}]",
              disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
        announced = False
        while True:
            bar.total, bar.n = max(target, have), have
            bar.set_postfix_str(f"{pending} items pending", refresh=False)
            if not announced and have < target:     # in a log too: the run waits for people
                getattr(bar, "write_now", bar.refresh)()
                announced = True
            bar.refresh()
            left = deadline - time.monotonic()
            if have >= target:
                return have
            if left <= 0:
                log.warning("round %d: the wait for human labels ran out after %gs with %d of %d "
                            "labels (%d items short of their votes); the round goes on with what "
                            "it has, and labels given from now on count only if its labeling is "
                            "redone (alignloop run ... --redo-from %d:label)", round, timeout_s,
                            have, target, pending, round)
                return have
            time.sleep(min(poll_s, left))
            have, target, pending = counts()


def waiting_items(store) -> int:
    """Open items that still want votes (gold items aside): 0 when the queue is done."""
    return store.read("SELECT COUNT(*) FROM items WHERE is_open = 1 AND gold IS NULL")[0][0]


def nothing_left(waiting: int) -> str:
    """Why no item was leased to an annotator, given `waiting_items`: the queue is done, or
    what is open waits for others (one vote per person per item: an item whose annotators
    disagreed wants a new person)."""
    if not waiting:
        return "Nothing to label: every item has its votes."
    return (f"Nothing left that you may label: {waiting} items still wait for votes from "
            "other annotators (one vote per person per item; items whose votes disagree ask "
            "for more, up to labeling.human.max_votes).")
