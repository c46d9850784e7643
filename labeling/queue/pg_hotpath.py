"""PostgreSQL: leasing and labeling as one server-side function call each.

On PostgreSQL a lease took 6 statements and a label 7, each a network round trip with
its own protocol work on both sides, and the queue server spent most of its CPU there
(`benchmarks/queue_profile.py`). These PL/pgSQL functions run the same statements inside
the server, so a request is one round trip (in autocommit: the call is its own
transaction). They are installed by migration 6 and replaced by later migrations when
they change (7, 8). SQLite keeps the Python path in `leases` (an in-process library has no
round trips to save); the store tests run both, so the two must agree.

What they keep from `leases`, line for line:
- the order of locks and reads: the annotator's row first (its calls take turns), the
  item's row before anything about its labels; each later statement of a VOLATILE
  function takes a fresh snapshot under READ COMMITTED, as each statement of the Python
  path did, so a read after a lock wait sees what the lock holder committed;
- index lookups only (`SET enable_seqscan = off` on both): PL/pgSQL keeps a session's
  plan for each statement, and a plan made while `leases` and `labels` were nearly empty
  (a new queue) read them whole, once per candidate item; as they grew under 16 clients,
  that was 14,000 buffer reads per lease (auto_explain) and PostgreSQL's CPU went to it.
  Every statement here has its index; with scans off the plan no longer depends on when
  the statistics were taken;
- the refusals: the functions answer an `outcome` code and the facts the Python side needs
  (`lease_next`, `record` below turn them into `Assignment`s and `QueueError`s with the
  same messages as `leases`); a replayed key's label comes back for `_check_replay`.
"""

from __future__ import annotations

from alignloop.labeling.handoff import QueueError
from sqlalchemy import Connection, text


def _pg(sql: str) -> str:
    """A fragment of `leases` with its parameters as the functions' arguments."""
    return sql.replace(":ann", "p_ann").replace(":now", "p_now")


def _sql() -> dict[str, str]:
    """The functions' text, built from the conditions `leases` runs on SQLite (imported
    here, not at the top: `leases` imports this module)."""
    from alignloop.labeling.queue import leases as L

    live, unseen, available = _pg(L._LIVE), _pg(L._UNSEEN), _pg(L.AVAILABLE)
    cols, order = L.ITEM_COLS + ", i.gold", L._ORDER
    top = (f"i.item_id IN (SELECT t.item_id FROM items t WHERE t.is_open = 1 "
           f"ORDER BY t.priority DESC, t.seq, t.item_id LIMIT {L.TOP_WINDOW})")
    no_lease = ("NULL::text, NULL::text, NULL::double precision, NULL::text, NULL::integer, "
                "NULL::text, NULL::text, NULL::text, NULL::text, NULL::double precision, "
                "NULL::integer, NULL::integer, NULL::text")   # a row of the result type
    return {"lease_next": LEASE_NEXT.format(live=live, unseen=unseen, available=available,
                                             cols=cols, order=order, top=top,
                                             no_lease=no_lease),
            "record_label": RECORD_LABEL.replace("{guideline}",
                                                 L.GUIDELINE_OF_ITEM.replace(":i", "p_item"))}


LEASE_NEXT = """
CREATE OR REPLACE FUNCTION alignloop_lease_next(
    p_ann bigint, p_now double precision, p_expires double precision, p_cap integer,
    p_want_gold boolean, p_gold_pick double precision, p_order text, p_lease text,
    p_wait boolean)
RETURNS TABLE (outcome text, lease_id text, display_order text, expires_at double precision,
               item_id text, round integer, prompt text, a text, b text, slice text,
               priority double precision, votes_required integer, max_votes integer,
               gold text)
LANGUAGE plpgsql VOLATILE SET enable_seqscan = off AS $fn$
#variable_conflict use_column
DECLARE
    r record;
    n integer;
    got boolean := false;
BEGIN
    PERFORM 1 FROM annotators WHERE id = p_ann FOR NO KEY UPDATE;
    SELECT COUNT(*) INTO n FROM (SELECT 1 FROM leases s WHERE s.annotator_id = p_ann
                                 AND {live} LIMIT p_cap) held;
    IF n >= p_cap THEN          -- at the cap: the oldest live lease again
        RETURN QUERY SELECT 'held', s.lease_id, s.display_order, s.expires_at, {cols}
            FROM leases s JOIN items i ON i.item_id = s.item_id
            WHERE s.annotator_id = p_ann AND {live} ORDER BY s.issued_at, s.lease_id LIMIT 1;
        RETURN;
    END IF;
    IF p_want_gold THEN         -- one of the first 32 unseen gold items, by p_gold_pick
        SELECT COUNT(*) INTO n FROM (SELECT 1 FROM items i WHERE i.gold IS NOT NULL
                                     AND {unseen} ORDER BY i.seq LIMIT 32) g;
        IF n > 0 THEN
            SELECT {cols} INTO r FROM items i WHERE i.gold IS NOT NULL AND {unseen}
                ORDER BY i.seq LIMIT 1 OFFSET LEAST(n - 1, floor(p_gold_pick * n)::integer);
            got := FOUND;
        END IF;
    END IF;
    -- Each statement below takes a fresh snapshot. A row locked here may have had its
    -- last slot leased by a transaction that committed after the search's snapshot was
    -- taken (the head of the queue, which every caller races for): the recheck sees it,
    -- and the search runs again, up to 16 times, before 'lost' sends the caller back.
    FOR attempt IN 1..16 LOOP
        EXIT WHEN got;
        SELECT {cols} INTO r FROM items i WHERE {top} AND {available} {order}
            FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            SELECT {cols} INTO r FROM items i WHERE {available} {order} FOR UPDATE SKIP LOCKED;
        END IF;
        IF NOT FOUND AND p_wait AND attempt = 1 THEN
            SELECT {cols} INTO r FROM items i WHERE {available} {order} FOR UPDATE;
        END IF;
        IF NOT FOUND THEN
            RETURN QUERY SELECT 'none', {no_lease};
            RETURN;
        END IF;
        -- the row is ours now; a fresh snapshot says whether its last slot still is
        PERFORM 1 FROM items i WHERE i.item_id = r.item_id AND {available};
        got := FOUND;
    END LOOP;
    IF NOT got THEN
        RETURN QUERY SELECT 'lost', {no_lease};
        RETURN;
    END IF;
    INSERT INTO leases (lease_id, item_id, annotator_id, display_order, issued_at, expires_at)
        VALUES (p_lease, r.item_id, p_ann, p_order, p_now, p_expires);
    RETURN QUERY SELECT 'leased', p_lease, p_order, p_expires, r.item_id, r.round, r.prompt,
        r.a, r.b, r.slice, r.priority, r.votes_required, r.max_votes, r.gold;
END
$fn$"""

RECORD_LABEL = """
CREATE OR REPLACE FUNCTION alignloop_record_label(
    p_item text, p_ann bigint, p_lease text, p_key text, p_choice text, p_conf integer,
    p_comment text, p_now double precision)
RETURNS TABLE (outcome text, label_id bigint, item_id text, annotator_id bigint,
               idempotency_key text, lease_id text, choice text, confidence integer,
               comment text)
LANGUAGE plpgsql VOLATILE SET enable_seqscan = off AS $fn$
#variable_conflict use_column
DECLARE
    it record;
    ls record;
    lid bigint;
    n integer;
    need integer;
    refused text;
BEGIN
    SELECT n_labels, needed, max_votes, first_choice, gold INTO it FROM items
        WHERE item_id = p_item FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'no_item', NULL::bigint, NULL::text, NULL::bigint, NULL::text,
            NULL::text, NULL::text, NULL::integer, NULL::text;
        RETURN;
    END IF;
    RETURN QUERY SELECT 'prior', l.id, l.item_id, l.annotator_id, l.idempotency_key,
        l.lease_id, l.choice, l.confidence::integer, l.comment FROM labels l
        WHERE l.annotator_id = p_ann AND (l.idempotency_key = p_key OR l.item_id = p_item)
        LIMIT 1;
    IF FOUND THEN
        RETURN;
    END IF;
    SELECT s.display_order, s.expires_at, s.completed_at,
           (SELECT COUNT(*) FROM leases s2 WHERE s2.item_id = p_item
            AND s2.annotator_id <> p_ann AND s2.completed_at IS NULL
            AND s2.expires_at > p_now) AS live,
           (SELECT COUNT(*) FROM skips k WHERE k.item_id = p_item
            AND k.annotator_id = p_ann) AS skipped
        INTO ls FROM leases s
        WHERE s.lease_id = p_lease AND s.annotator_id = p_ann AND s.item_id = p_item;
    IF NOT FOUND THEN
        refused := 'no_lease';
    ELSIF ls.completed_at IS NOT NULL THEN
        refused := 'lease_used';
    ELSIF ls.skipped > 0 THEN
        refused := 'skipped';
    ELSIF it.gold IS NULL AND ls.expires_at <= p_now AND it.n_labels + ls.live >= it.needed THEN
        refused := 'expired_full';
    END IF;
    IF refused IS NOT NULL THEN
        RETURN QUERY SELECT refused, NULL::bigint, NULL::text, NULL::bigint, NULL::text,
            NULL::text, NULL::text, NULL::integer, NULL::text;
        RETURN;
    END IF;
    INSERT INTO labels (item_id, annotator_id, lease_id, choice, confidence, comment,
                        display_order, idempotency_key, created_at, guideline_version)
        VALUES (p_item, p_ann, p_lease, p_choice, p_conf, p_comment, ls.display_order,
                p_key, p_now, ({guideline}))
        RETURNING id INTO lid;
    UPDATE leases SET
        completed_at = CASE WHEN lease_id = p_lease THEN p_now ELSE completed_at END,
        expires_at = CASE WHEN lease_id = p_lease THEN expires_at ELSE p_now END
        WHERE item_id = p_item AND annotator_id = p_ann
        AND (lease_id = p_lease OR (completed_at IS NULL AND expires_at > p_now));
    n := it.n_labels + 1;
    need := CASE WHEN it.first_choice IS NOT NULL AND it.first_choice <> p_choice
                 THEN it.max_votes ELSE it.needed END;
    UPDATE items SET n_labels = n, needed = need, first_choice = COALESCE(it.first_choice,
                     p_choice), is_open = CASE WHEN it.gold IS NULL AND n < need THEN 1 ELSE 0 END
        WHERE item_id = p_item;
    RETURN QUERY SELECT 'created', lid, NULL::text, NULL::bigint, NULL::text, NULL::text,
        NULL::text, NULL::integer, NULL::text;
END
$fn$"""

_CALL_LEASE = text("SELECT * FROM alignloop_lease_next(:ann, :now, :e, :cap, :want_gold, "
                   ":pick, :o, :l, :wait)")
_CALL_RECORD = text("SELECT * FROM alignloop_record_label(:i, :a, :l, :k, :c, :conf, :m, :now)")


def install(conn: Connection) -> None:
    """Create (or replace) the functions: migration 6, on PostgreSQL only."""
    for sql in _sql().values():
        conn.exec_driver_sql(sql)


def lease_next(conn: Connection, run, *, p: dict) -> tuple[str, object]:
    """(outcome, row): 'held' or 'leased' with the lease's row, 'none', or 'lost'."""
    row = run(conn, _CALL_LEASE, p).first()
    return row.outcome, row


def record(conn: Connection, run, *, p: dict):
    """The function's row; raises the refusals that need no Python-side comparison."""
    row = run(conn, _CALL_RECORD, p).first()
    item_id, lease_id = p["i"], p["l"]
    if row.outcome == "no_item":
        raise QueueError(f"no item {item_id!r}", 404, "item_id")
    if row.outcome == "no_lease":
        raise QueueError(f"no lease {lease_id!r} of yours on item {item_id!r}", 404, "lease_id")
    if row.outcome == "lease_used":
        raise QueueError(f"lease {lease_id!r} was used already", 409, "lease_id")
    if row.outcome == "skipped":
        raise QueueError(f"you skipped item {item_id!r}; it cannot be labeled", 409, "item_id")
    if row.outcome == "expired_full":
        raise QueueError(f"lease {lease_id!r} expired and item {item_id!r} has the "
                         "votes it needs", 409, "lease_id")
    return row
