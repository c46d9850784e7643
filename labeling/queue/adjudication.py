"""Adjudication: an admin or a reviewer (`accounts.ROLES`) reads the items whose votes
disagree, with every vote and comment, and records a final verdict; aggregation counts
it as a strong vote (`aggregate.aggregate_votes(verdicts=...)`), and the loop writes it
to `labels.parquet` with source "adjudicated".

One verdict per item; recording another replaces it (the latest word stands).
Choices are relative to the item's own `a`/`b`, as votes are.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict

from alignloop.labeling.aggregate import CHOICES
from alignloop.labeling.handoff import QueueError
from alignloop.labeling.queue import controls
from sqlalchemy import Connection, text

MAX_COMMENT = 4000


def record_verdict(store, reviewer_id: int, *, item_id: str, choice: str,
                   comment: str = "") -> None:
    """Record (or replace) the final verdict on a regular item (404 unknown or gold item)."""
    if not isinstance(item_id, str) or not 1 <= len(item_id) <= 200:
        raise QueueError("item_id must be 1-200 characters", 422, "item_id")
    controls.check(item_id, "item_id", "id")
    if choice not in CHOICES:
        raise QueueError(f"choice must be one of {list(CHOICES)}, got {choice!r}", 422,
                         "choice")
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
        raise QueueError(f"comment must be text of at most {MAX_COMMENT} characters", 422,
                         "comment")
    controls.check(comment, "comment", "text")
    p = {"i": item_id, "r": reviewer_id, "c": choice, "m": comment, "t": store.clock()}

    def tx(conn: Connection) -> None:
        item = conn.execute(text("SELECT gold FROM items WHERE item_id = :i"), p).first()
        if item is None or item.gold is not None:
            raise QueueError(f"no item {item_id!r} to adjudicate", 404, "item_id")
        conn.execute(text(
            "INSERT INTO verdicts (item_id, reviewer_id, choice, comment, created_at) "
            "VALUES (:i, :r, :c, :m, :t) ON CONFLICT (item_id) DO UPDATE SET "
            "reviewer_id = excluded.reviewer_id, choice = excluded.choice, "
            "comment = excluded.comment, created_at = excluded.created_at"), p)

    store.transaction(tx)


def verdicts(store, round: int | None = None) -> dict[str, dict]:
    """{item_id: {choice, reviewer, comment, created_at, round}} of the regular items (of
    `round`, or all)."""
    where = "WHERE i.round = :r" if round is not None else ""
    rows = store.read("SELECT v.item_id, v.choice, n.name AS reviewer, v.comment, v.created_at, "
                      "i.round FROM verdicts v JOIN items i ON i.item_id = v.item_id "
                      f"JOIN annotators n ON n.id = v.reviewer_id {where} ORDER BY v.item_id",
                      {"r": round} if round is not None else {})
    return {r.item_id: dict(r._mapping) for r in rows}


def disagreement(choices: list[str]) -> float:
    """1 - the share of the most common choice: 0 when all agree, up to 3/4."""
    if not choices:
        return 0.0
    return 1.0 - Counter(choices).most_common(1)[0][1] / len(choices)


def disputed(store, *, limit: int = 50, include_settled: bool = True) -> list[dict]:
    """The regular items whose votes disagree, most contested first (then most votes,
    then item id): the item's prompt and responses, every vote with its comment, the
    skips and the verdict if any. `include_settled` False leaves out adjudicated items."""
    rows = store.read(
        "SELECT l.item_id, n.name AS annotator, l.choice, l.confidence, l.comment, "
        "l.display_order FROM labels l JOIN items i ON i.item_id = l.item_id "
        "JOIN annotators n ON n.id = l.annotator_id WHERE i.gold IS NULL ORDER BY l.id")
    by_item: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_item[r.item_id].append(dict(r._mapping))
    contested = {i: v for i, v in by_item.items() if len({x["choice"] for x in v}) > 1}
    settled = verdicts(store)
    if not include_settled:
        contested = {i: v for i, v in contested.items() if i not in settled}
    ranked = sorted(contested, key=lambda i: (-disagreement([x["choice"] for x in contested[i]]),
                                              -len(contested[i]), i))[:limit]
    if not ranked:
        return []
    items = {r.item_id: r for r in store.read(
        "SELECT item_id, round, prompt, a, b, slice FROM items WHERE item_id IN ("
        + ", ".join(f":i{n}" for n in range(len(ranked))) + ")",
        {f"i{n}": i for n, i in enumerate(ranked)})}
    skipped = defaultdict(list)
    for r in store.read("SELECT k.item_id, n.name AS annotator, k.reason, k.comment FROM skips k "
                        "JOIN annotators n ON n.id = k.annotator_id ORDER BY k.id"):
        skipped[r.item_id].append(dict(r._mapping))
    out = []
    for i in ranked:
        it, votes = items[i], contested[i]
        out.append({"item_id": i, "round": it.round, "slice": it.slice,
                    "prompt": json.loads(it.prompt), "a": it.a, "b": it.b, "votes": votes,
                    "counts": dict(Counter(x["choice"] for x in votes)),
                    "disagreement": disagreement([x["choice"] for x in votes]),
                    "skips": skipped.get(i, []), "verdict": settled.get(i)})
    return out
