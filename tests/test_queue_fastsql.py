"""`fastsql.execute` answers what SQLAlchemy's `conn.execute` answers for the queue's hot
statements, and raises SQLAlchemy's exception classes (the store's retry rules depend on
them), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alignloop.labeling.queue import fastsql, leases
from alignloop.labeling.queue.store import QueueStore
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from .test_queue_hardening import _items


def test_rows_match_sqlalchemy_and_errors_keep_their_class(store_url):
    with QueueStore(store_url) as store:
        store.submit(_items(3))
        ann = store.authenticate(store.add_annotator("ann")).id
        p = {"ann": ann, "now": 0.0, "cap": 5}
        with store.engine.begin() as conn:
            for name in ("next_top", "next", "gold", "held"):
                fast = list(fastsql.execute(conn, leases._SQL[name], p))
                slow = list(conn.execute(leases._SQL[name], p))
                assert [tuple(r) for r in fast] == [tuple(r) for r in slow], name
                assert [r._fields for r in fast] == [tuple(r._fields) for r in slow], name
            first = fastsql.execute(conn, leases._SQL["next"], p).first()
            assert first.item_id == "it0000" and first.votes_required == 1
            one = fastsql.execute(conn, text("SELECT COUNT(*) FROM items WHERE round = :r"),
                                  {"r": 0})
            assert one.scalar_one() == 3
            moved = fastsql.execute(conn, text("UPDATE items SET priority = :p WHERE "
                                               "item_id <> :i"), {"p": 1.0, "i": "it0000"})
            assert moved.rowcount == 2
        with pytest.raises(IntegrityError), store.engine.begin() as conn:
            fastsql.execute(conn, text("INSERT INTO annotators (name, role, token_hash, "
                                       "created_at, active) VALUES (:n, 'annotator', :h, 0, 1)"),
                            {"n": "ann", "h": "x"})    # the name is taken
        assert [a.name for a in store.annotators()] == ["ann"]   # rolled back, nothing kept
