"""Leasing items and recording labels: the queue's concurrency-critical SQL.

`QueueStore.next_item` and `QueueStore.record_label` run these functions inside one
write transaction each (see the store's module docstring for the locking rules);
they take the open connection and plain values, and return the records the store
hands out (`Assignment`, `RecordedLabel`). The SQL below is what runs on SQLite; on
PostgreSQL the same statements run inside the server as one function call per request
(`pg_hotpath`, built from this module's conditions), with the row locks SQLite does not
need (SQLite's single writer serialises these transactions).
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass

from alignloop.labeling.aggregate import CHOICES
from alignloop.labeling.handoff import QueueError, QueueItem
from alignloop.labeling.queue import controls, pg_hotpath
from alignloop.labeling.queue.fastsql import execute as run  # the hot path (see fastsql)
from alignloop.labeling.queue.guidelines import GUIDELINE_OF_ITEM
from sqlalchemy import Connection, text

MAX_COMMENT = 4000
MAX_LEASES = 1   # live leases per annotator: `/api/next` again hands back the one held
# An expired lease that got no label is deleted PURGE_AFTER seconds after it expired (till
# then a late label on it still counts); `QueueStore.next_item` purges every PURGE_EVERY.
PURGE_AFTER = 3600.0
PURGE_EVERY = 300.0


@dataclass(frozen=True)
class Assignment:
    """An item leased to one annotator. `display_order` "ba" means show `item.b` on the
    left; the label's choice is still relative to `item.a`/`item.b`. `is_gold` is for the
    server only: never show it to the annotator."""

    lease_id: str
    item: QueueItem
    display_order: str
    expires_at: float
    is_gold: bool = False


@dataclass(frozen=True)
class RecordedLabel:
    """What `record_label` answers: the label's id, and False for a replayed request."""

    label_id: int
    created: bool


# Item `i` can be leased to annotator :ann at time :now when it is open, has a slot
# free (labels + live leases < needed) and :ann neither labeled it nor holds a live
# lease on it. Scalar subqueries rather than NOT EXISTS: the planner keeps them as
# per-row checks on an index scan in queue order that stops at the first match,
# instead of anti-joins over every open item followed by a sort.
_LIVE = "s.completed_at IS NULL AND s.expires_at > :now"
# (An item the annotator skipped, `skips.py`, is never offered to them again.)
_UNSEEN = f"""(SELECT COUNT(*) FROM labels l WHERE l.item_id = i.item_id
                   AND l.annotator_id = :ann) = 0
    AND (SELECT COUNT(*) FROM leases s WHERE s.item_id = i.item_id
         AND s.annotator_id = :ann AND {_LIVE}) = 0
    AND (SELECT COUNT(*) FROM skips k WHERE k.item_id = i.item_id
         AND k.annotator_id = :ann) = 0"""
AVAILABLE = f"""i.is_open = 1
    AND i.n_labels + (SELECT COUNT(*) FROM leases s WHERE s.item_id = i.item_id AND {_LIVE})
        < i.needed
    AND {_UNSEEN}"""
ITEM_COLS = "i.item_id, i.round, i.prompt, i.a, i.b, i.slice, i.priority, i.votes_required, i.max_votes"
_ORDER = "ORDER BY i.priority DESC, i.seq, i.item_id LIMIT 1"
_NEXT = f"SELECT {ITEM_COLS} FROM items i WHERE {AVAILABLE} {_ORDER}"
# A first pass over the first TOP_WINDOW open items in queue order (an index range):
# the next item is almost always among them, and PostgreSQL's planner otherwise checks
# every open item before sorting. Only when none of them is available does `_NEXT`
# look further, so the item chosen is the same.
TOP_WINDOW = 64
_TOP = (f"SELECT {ITEM_COLS} FROM items i WHERE i.item_id IN (SELECT t.item_id FROM items t "
        f"WHERE t.is_open = 1 ORDER BY t.priority DESC, t.seq, t.item_id LIMIT {TOP_WINDOW}) "
        f"AND {AVAILABLE} {_ORDER}")
ITEM = "SELECT n_labels, needed, max_votes, first_choice, gold FROM items WHERE item_id = :i"
_SQL = {k: text(v) for k, v in {
    "gold": f"SELECT {ITEM_COLS} FROM items i WHERE i.gold IS NOT NULL AND {_UNSEEN} "
            "ORDER BY i.seq LIMIT 32",
    "next": _NEXT,
    "next_top": _TOP,
    "held": f"SELECT s.lease_id, s.display_order, s.expires_at, {ITEM_COLS}, i.gold FROM leases s"
            f" JOIN items i ON i.item_id = s.item_id WHERE s.annotator_id = :ann AND {_LIVE}"
            " ORDER BY s.issued_at, s.lease_id LIMIT :cap",
    "lease": "INSERT INTO leases (lease_id, item_id, annotator_id, display_order, issued_at,"
             " expires_at) VALUES (:l, :id, :ann, :o, :now, :e)",
    "item": ITEM,
    # idempotency keys are the annotator's own (migration 8): another annotator's key
    # neither blocks a label nor answers whether it was used
    "labels_of": "SELECT id, item_id, annotator_id, idempotency_key, lease_id, choice, "
                 "confidence, comment FROM labels WHERE annotator_id = :a AND "
                 "(idempotency_key = :k OR item_id = :i)",
    # `live`: the other annotators' live leases on the item (the slots an expired lease's
    # late label would take from them; the annotator's own newer lease, from a reload,
    # takes none); `skipped`: the annotator gave the item back with a reason
    "lease_of": "SELECT display_order, expires_at, completed_at, (SELECT COUNT(*) FROM leases s "
                f"WHERE s.item_id = :i AND s.annotator_id <> :a AND {_LIVE}) AS live, "
                "(SELECT COUNT(*) FROM skips k WHERE k.item_id = :i AND k.annotator_id = :a) "
                "AS skipped FROM leases WHERE lease_id = :l AND annotator_id = :a AND "
                "item_id = :i",
    # guideline_version: the guideline the item is labeled under (`guidelines.py`)
    "label": "INSERT INTO labels (item_id, annotator_id, lease_id, choice, confidence, comment,"
             " display_order, idempotency_key, created_at, guideline_version) VALUES (:i, :a,"
             f" :l, :c, :conf, :m, :o, :k, :now, ({GUIDELINE_OF_ITEM})) RETURNING id",
    # one statement: the label's lease is completed, and the annotator's other live leases
    # on the item (a reload's) give their slot back
    "complete": "UPDATE leases SET completed_at = CASE WHEN lease_id = :l THEN :now ELSE "
                "completed_at END, expires_at = CASE WHEN lease_id = :l THEN expires_at ELSE "
                ":now END WHERE item_id = :i AND annotator_id = :a AND (lease_id = :l OR "
                "(completed_at IS NULL AND expires_at > :now))",
    "count": "UPDATE items SET n_labels = :n, needed = :needed, first_choice = :f, is_open = :o"
             " WHERE item_id = :i",
    "purge": "DELETE FROM leases WHERE completed_at IS NULL AND expires_at < :before AND NOT "
             "EXISTS (SELECT 1 FROM skips k WHERE k.lease_id = leases.lease_id)",
    "release": "UPDATE leases SET expires_at = :now WHERE lease_id = :l AND annotator_id = :a "
               "AND completed_at IS NULL AND expires_at > :now",
}.items()}


def row_item(row) -> QueueItem:
    """A `QueueItem` from a row of the items table (prompt stored as JSON)."""
    return QueueItem(row.item_id, row.round, json.loads(row.prompt), row.a, row.b, row.slice,
                     row.priority, row.votes_required, row.max_votes)


def lease_next(conn: Connection, *, annotator_id: int, now: float, lease_seconds: float,
               max_leases: int, want_gold: bool, order: str, rng: random.Random,
               postgres: bool, first_attempt: bool) -> Assignment | None | bool:
    """Lease the next item to the annotator: an unseen gold item when `want_gold` and one
    is left, else the first available item in queue order. An annotator holding
    `max_leases` live leases gets the oldest of them again instead, so one annotator (or a
    client calling in a loop) cannot lease the whole queue. None when nothing is available;
    False when PostgreSQL's recheck under the row lock finds the last slot just taken (the
    caller tries again). Only on the first attempt does PostgreSQL wait for locked rows.
    (PostgreSQL draws its gold item with `rng.random()`, SQLite with `rng.choice`.)"""
    p = {"ann": annotator_id, "now": now, "cap": max_leases}
    if postgres:   # the same statements in one call inside the server (`pg_hotpath`)
        outcome, row = pg_hotpath.lease_next(conn, run, p={
            **p, "e": now + lease_seconds, "want_gold": want_gold, "o": order,
            "pick": rng.random() if want_gold else 0.0, "l": uuid.uuid4().hex,
            "wait": first_attempt})
        if outcome in ("none", "lost"):
            return None if outcome == "none" else False
        return Assignment(row.lease_id, row_item(row), row.display_order, row.expires_at,
                          row.gold is not None)
    held = list(run(conn, _SQL["held"], p))
    if len(held) >= max_leases:
        h = held[0]
        return Assignment(h.lease_id, row_item(h), h.display_order, h.expires_at,
                          h.gold is not None)
    rows = list(run(conn, _SQL["gold"], p)) if want_gold else []
    row = rng.choice(rows) if rows else None
    is_gold = row is not None
    if row is None:
        row = run(conn, _SQL["next_top"], p).first() or run(conn, _SQL["next"], p).first()
        if row is None:
            return None
    lease = Assignment(uuid.uuid4().hex, row_item(row), order, now + lease_seconds, is_gold)
    run(conn, _SQL["lease"], {**p, "l": lease.lease_id, "id": row.item_id, "o": order,
                                 "e": lease.expires_at})
    return lease


def purge_expired(conn: Connection, before: float) -> int:
    """Delete the leases that expired before `before` without a label (and that no skip
    refers to); returns how many. A labeled lease is kept: its label refers to it."""
    return conn.execute(_SQL["purge"], {"before": before}).rowcount


def release(conn: Connection, annotator_id: int, lease_id: str, now: float) -> bool:
    """Expire a live lease of this annotator now; True when there was one."""
    return conn.execute(_SQL["release"], {"now": now, "l": lease_id, "a": annotator_id}).rowcount > 0


def check_label(item_id: str, lease_id: str, choice: str, confidence: int,
                idempotency_key: str, comment: str) -> None:
    """Raise QueueError (422, naming the field) for a label's invalid field."""
    for field, value in (("item_id", item_id), ("lease_id", lease_id),
                         ("idempotency_key", idempotency_key)):
        if not isinstance(value, str) or not 1 <= len(value) <= 200:
            raise QueueError(f"{field} must be 1-200 characters", 422, field)
        controls.check(value, field, "id")
    if choice not in CHOICES:
        raise QueueError(f"choice must be one of {list(CHOICES)}, got {choice!r}", 422, "choice")
    if isinstance(confidence, bool) or not isinstance(confidence, int) or not 1 <= confidence <= 3:
        raise QueueError(f"confidence must be 1, 2 or 3, got {confidence!r}", 422, "confidence")
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
        raise QueueError(f"comment must be text of at most {MAX_COMMENT} characters", 422,
                         "comment")
    controls.check(comment, "comment", "text")


def _check_replay(prior, **sent) -> None:
    """A replay (same idempotency key) must repeat the label it replays: a different
    payload under a used key is refused, never answered with the old label as if kept."""
    changed = [k for k, v in sent.items() if getattr(prior, k) != v]
    if changed:
        raise QueueError(f"idempotency_key was already used for a label with different "
                         f"{', '.join(changed)}; a retry must repeat the request exactly, a "
                         "new label needs a new key", 409, "idempotency_key")


def _replayed(prior, label_id: int, p: dict) -> RecordedLabel:
    """The answer to a label whose item this annotator labeled already, or whose key was
    used already (`prior`, that label): a replay of the same request gets its label back
    (created False); anything else is refused."""
    if prior.idempotency_key != p["k"]:
        raise QueueError(f"you already labeled item {p['i']!r}", 409, "item_id")
    if prior.annotator_id != p["a"] or prior.item_id != p["i"]:
        raise QueueError("idempotency_key was already used for another label", 409,
                         "idempotency_key")
    _check_replay(prior, lease_id=p["l"], choice=p["c"], confidence=p["conf"], comment=p["m"])
    return RecordedLabel(label_id, False)


def record(conn: Connection, *, annotator_id: int, item_id: str, lease_id: str, choice: str,
           confidence: int, idempotency_key: str, comment: str, now: float,
           postgres: bool) -> RecordedLabel:
    """Record one checked label (see `QueueStore.record_label` for the refusals).

    The item's row lock comes first, so a retry racing its original waits for it and
    then finds the original's label, which it returns (created False). The item's counts
    follow adaptive redundancy: a vote unlike the first raises `needed` to `max_votes`.
    """
    p = {"i": item_id, "a": annotator_id, "l": lease_id, "k": idempotency_key, "c": choice,
         "conf": confidence, "m": comment, "now": now}
    if postgres:   # the same statements in one call inside the server (`pg_hotpath`)
        row = pg_hotpath.record(conn, run, p=p)
        if row.outcome == "created":
            return RecordedLabel(row.label_id, True)
        return _replayed(row, row.label_id, p)
    item = run(conn, _SQL["item"], p).first()
    if item is None:
        raise QueueError(f"no item {item_id!r}", 404, "item_id")
    for prior in run(conn, _SQL["labels_of"], p):
        return _replayed(prior, prior.id, p)
    lease = run(conn, _SQL["lease_of"], p).first()
    if lease is None:
        raise QueueError(f"no lease {lease_id!r} of yours on item {item_id!r}", 404, "lease_id")
    if lease.completed_at is not None:
        raise QueueError(f"lease {lease_id!r} was used already", 409, "lease_id")
    if lease.skipped:
        raise QueueError(f"you skipped item {item_id!r}; it cannot be labeled", 409, "item_id")
    if item.gold is None and lease.expires_at <= now and (
            item.n_labels + lease.live >= item.needed):
        raise QueueError(f"lease {lease_id!r} expired and item {item_id!r} has the "
                         "votes it needs", 409, "lease_id")
    label_id = run(conn, _SQL["label"], {**p, "o": lease.display_order}).scalar_one()
    run(conn, _SQL["complete"], p)
    n = item.n_labels + 1
    disagree = item.first_choice is not None and item.first_choice != choice
    needed = item.max_votes if disagree else item.needed
    run(conn, _SQL["count"], {"n": n, "needed": needed, "i": item_id,
                                 "f": item.first_choice or choice,
                                 "o": int(item.gold is None and n < needed)})
    return RecordedLabel(label_id, True)
