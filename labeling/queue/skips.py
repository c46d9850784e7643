"""Skipping an item with a reason: the annotator gives the leased item back, the reason
is recorded, and the item is never leased to that annotator again (`leases._UNSEEN`
excludes skipped items), so it goes to someone else.

Reasons are a closed list (`REASONS`) so that they can be counted; "other" takes a
comment. A skip is idempotent per (item, annotator): skipping again answers the first
skip (created False).
"""

from __future__ import annotations

from dataclasses import dataclass

from alignloop.labeling.handoff import QueueError
from alignloop.labeling.queue import controls
from sqlalchemy import Connection, text

REASONS = {"cant_judge": "can't judge", "offensive": "offensive",
           "needs_expertise": "needs expertise", "other": "other"}
MAX_COMMENT = 4000


# A skip gives back every live lease the annotator holds on the item (a reload in a second
# tab holds one of its own), as a label does: none keeps a slot, none is offered again.
_RELEASE = text("UPDATE leases SET expires_at = :now WHERE item_id = :i AND annotator_id = :a "
                "AND completed_at IS NULL AND expires_at > :now")


@dataclass(frozen=True)
class RecordedSkip:
    skip_id: int
    created: bool


def check_skip(item_id: object, lease_id: object, reason: object, comment: object) -> None:
    """Raise QueueError (422, naming the field) for a skip's invalid field."""
    for field, value in (("item_id", item_id), ("lease_id", lease_id)):
        if not isinstance(value, str) or not 1 <= len(value) <= 200:
            raise QueueError(f"{field} must be 1-200 characters", 422, field)
        controls.check(value, field, "id")
    if reason not in REASONS:
        raise QueueError(f"reason must be one of {list(REASONS)}, got {reason!r}", 422,
                         "reason")
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
        raise QueueError(f"comment must be text of at most {MAX_COMMENT} characters", 422,
                         "comment")
    controls.check(comment, "comment", "text")


def record_skip(store, annotator_id: int, *, item_id: str, lease_id: str, reason: str,
                comment: str = "") -> RecordedSkip:
    """Skip a leased item (404 no such lease of yours on the item, 409 already labeled)."""
    check_skip(item_id, lease_id, reason, comment)
    p = {"i": item_id, "l": lease_id, "a": annotator_id, "r": reason, "m": comment,
         "now": store.clock()}

    def tx(conn: Connection) -> RecordedSkip:
        prior = conn.execute(text("SELECT id FROM skips WHERE item_id = :i AND "
                                  "annotator_id = :a"), p).first()
        if prior is not None:
            conn.execute(_RELEASE, p)      # a second tab's lease on it goes back too
            return RecordedSkip(prior.id, False)
        lease = conn.execute(text("SELECT completed_at FROM leases WHERE lease_id = :l AND "
                                  "annotator_id = :a AND item_id = :i"), p).first()
        if lease is None:
            raise QueueError(f"no lease {lease_id!r} of yours on item {item_id!r}", 404,
                             "lease_id")
        # labeled through this lease, or through another one (a second tab's)
        if lease.completed_at is not None or conn.execute(text(
                "SELECT 1 FROM labels WHERE item_id = :i AND annotator_id = :a"), p).first():
            raise QueueError(f"item {item_id!r} is labeled already; it cannot be skipped",
                             409, "item_id")
        skip_id = conn.execute(text(
            "INSERT INTO skips (item_id, annotator_id, lease_id, reason, comment, created_at) "
            "VALUES (:i, :a, :l, :r, :m, :now) RETURNING id"), p).scalar_one()
        conn.execute(_RELEASE, p)
        return RecordedSkip(int(skip_id), True)

    return store.transaction(tx)


def skip_counts(store) -> dict[str, dict[str, int]]:
    """{item_id: {reason: count}} of every skipped item."""
    out: dict[str, dict[str, int]] = {}
    for r in store.read("SELECT item_id, reason, COUNT(*) AS n FROM skips "
                        "GROUP BY item_id, reason ORDER BY item_id, reason"):
        out.setdefault(r.item_id, {})[r.reason] = int(r.n)
    return out


def export_skips(store) -> list[dict]:
    """Every skip: item, annotator name, reason, comment, time."""
    rows = store.read("SELECT k.item_id, n.name AS annotator, k.reason, k.comment, "
                      "k.created_at FROM skips k JOIN annotators n ON n.id = k.annotator_id "
                      "ORDER BY k.id")
    return [dict(r._mapping) for r in rows]
