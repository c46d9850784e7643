"""The label hot path's two ways to run (`create_app(db_calls=...)`: store calls inline on
the event loop or in the threadpool) and the one-request label (`POST /api/labels` with
`"next": true`), over real HTTP on SQLite and PostgreSQL: the same answers, and under 8
concurrent clients no label lost, duplicated or given twice to one annotator."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from alignloop.labeling.queue.app import create_app
from alignloop.labeling.queue.simulate import ApiClient
from alignloop.labeling.queue.store import QueueStore

from .test_queue_api import _call, _check_no_label_lost_or_duplicated, _items


@pytest.mark.parametrize("db_calls", ["inline", "thread"])
def test_label_with_next_answers_what_api_next_would(store_url, serve_queue, db_calls):
    store = QueueStore.open(store_url)
    token = store.add_annotator("ann")
    store.submit(_items(2, prefix=f"hot-{db_calls}-"))
    url = serve_queue(store, db_calls=db_calls)
    status, first = _call(url, "POST", "/api/next", token=token)
    assert status == 200
    body = {"item_id": first["item_id"], "lease_id": first["lease_id"], "choice": "a",
            "confidence": 2, "idempotency_key": "k1", "next": True}
    status, got = _call(url, "POST", "/api/labels", token=token, body=body)
    assert status == 201 and got["created"] is True
    second = got["next"]
    assert second is not None and second["item_id"] != first["item_id"]
    # the lease cap (1): /api/next now hands back the lease the label's answer gave
    status, again = _call(url, "POST", "/api/next", token=token)
    assert status == 200 and again["lease_id"] == second["lease_id"]
    # a replay answers the same label, and its `next` is still that one lease
    status, replay = _call(url, "POST", "/api/labels", token=token, body=body)
    assert status == 200 and replay["label_id"] == got["label_id"]
    assert replay["next"]["lease_id"] == second["lease_id"]
    body = {**body, "item_id": second["item_id"], "lease_id": second["lease_id"],
            "idempotency_key": "k2"}
    status, last = _call(url, "POST", "/api/labels", token=token, body=body)
    assert status == 201 and last["next"] is None          # nothing left: null, not 204
    status, plain = _call(url, "POST", "/api/labels", token=token,
                          body={k: v for k, v in body.items() if k != "next"})
    assert status == 200 and "next" not in plain            # only when asked
    assert _call(url, "POST", "/api/labels", token=token,
                 body={**body, "next": "yes"})[0] == 422    # strict like every field
    store.close()


def _run_clients(url: str, tokens: list[str], work) -> list[str]:
    """`work(api, i)` for every token at once, one thread and API client each; the failures."""
    failures: list[str] = []

    def client(i: int) -> None:
        api = ApiClient(url, tokens[i], retry_for=30)
        try:
            work(api, i)
        except Exception as e:  # noqa: BLE001
            failures.append(f"client {i}: {type(e).__name__}: {e}")
        finally:
            api.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(tokens))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures


@pytest.mark.parametrize("db_calls", ["inline", "thread"])
def test_one_request_labels_under_concurrency_lose_nothing(store_url, serve_queue, db_calls):
    store = QueueStore.open(store_url)
    names = [f"hot-{i}" for i in range(8)]
    tokens = [store.add_annotator(n) for n in names]
    store.submit(_items(120, votes=2, prefix="conc-"))
    url = serve_queue(store, db_calls=db_calls)
    acks, lock = [], threading.Lock()

    def work(api, i: int) -> None:
        item = api.next()
        while item is not None:
            choice = "ab"[(i + len(item["item_id"])) % 2]
            _, body = api.label(item["item_id"], item["lease_id"], choice,
                                idempotency_key=f"{i}:{item['item_id']}", next=True)
            with lock:
                acks.append({"client": i, "item_id": item["item_id"], "choice": choice,
                             "label_id": body["label_id"]})
            item = body["next"]

    failures = _run_clients(url, tokens, work)
    assert not failures, failures[:3]
    _check_no_label_lost_or_duplicated(store, acks, names)
    assert set(Counter(a["item_id"] for a in acks).values()) == {2}
    assert sum(1 for a in acks) == 240
    store.close()


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_the_server_keeps_its_postgresql_connections_under_load(store_url, serve_queue):
    """16 clients at once, two requests per label, through the threadpool: every store call
    reuses a pooled connection. A pool smaller than the calls in flight closes each extra
    connection when it is returned and opens a new backend for the next call (a fork, a
    session's catalog caches and PL/pgSQL compiled again): with the old pool (8) that churn
    cost PostgreSQL several times the CPU per label (benchmarks/queue_load.py)."""
    from sqlalchemy import event

    store = QueueStore.open(store_url)
    tokens = [store.add_annotator(f"pool-{i}") for i in range(16)]
    store.submit(_items(16 * 12, prefix="pool-"))
    opened, closed = [], []
    event.listen(store.engine, "connect", lambda *a: opened.append(1))
    event.listen(store.engine, "close", lambda *a: closed.append(1))
    url = serve_queue(store, db_calls="thread")
    done = []

    def work(api, i: int) -> None:
        for n in range(12):
            item = api.next()
            api.label(item["item_id"], item["lease_id"], "a", idempotency_key=f"{i}:{n}")
            done.append(1)

    failures = _run_clients(url, tokens, work)
    assert not failures, failures[:3]
    assert len(done) == 16 * 12
    assert closed == [], f"{len(closed)} connections closed and reopened under load"
    assert len(opened) <= 16, f"{len(opened)} connections opened for 16 clients"
    store.close()


def _lease_buffers(store, annotator_id: int) -> int:
    """Shared buffers one `alignloop_lease_next` call reads (its statements included), in a
    new session: PL/pgSQL plans its statements afresh, from the statistics of now."""
    import re
    import time

    from sqlalchemy import text

    with store.engine.connect() as conn:
        plan = conn.execute(text(
            "EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM alignloop_lease_next(:a, :now, :e, 1, "
            "false, 0.5, 'ab', :l, false)"), {"a": annotator_id, "now": time.time(),
                                            "e": time.time() + 600, "l": f"probe-{time.time()}"})
        text_plan = "\n".join(r[0] for r in plan)
        conn.rollback()                     # the probe's lease is not kept
    return int(re.search(r"shared hit=(\d+)", text_plan).group(1))


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_a_lease_reads_as_much_after_many_labels_as_after_few(store_url):
    """A lease checks up to 64 candidate items; each check must be an index lookup keyed
    on the item, whatever the statistics say. The statistics here are those of a new queue
    (taken with no labels or leases, as a fresh deployment has them): the old indexes let
    the planner walk one annotator's labels per candidate, so a lease's reads grew with
    the labels that annotator had given (migration 7, `pg_hotpath`)."""
    store = QueueStore.open(store_url)
    token = store.add_annotator("many")
    annotator = store.authenticate(token).id
    store.submit(_items(700, prefix="reads-"))
    with store.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        conn.commit()

    def label(n: int) -> None:
        for i in range(n):
            got = store.next_item(annotator)
            store.record_label(annotator, item_id=got.item.item_id, lease_id=got.lease_id,
                               choice="a", idempotency_key=f"k{n}-{i}")

    label(10)
    few = _lease_buffers(store, annotator)
    label(600)
    many = _lease_buffers(store, annotator)
    assert many < 2 * few, (few, many)
    store.close()


def test_db_calls_must_be_known(tmp_path):
    with QueueStore.open(tmp_path) as store, pytest.raises(ValueError, match="db_calls"):
        create_app(store, secret="s", db_calls="sometimes")


def test_serve_db_calls_flag_reaches_the_app_options(tmp_path):
    from alignloop.cli import build_parser
    from alignloop.cli.queue import _app_options

    parse = build_parser().parse_args
    args = parse(["queue", "serve", "--run-dir", str(tmp_path), "--db-calls", "thread"])
    assert _app_options(args)["db_calls"] == "thread"
    assert _app_options(parse(["queue", "serve", "--run-dir", str(tmp_path)]))["db_calls"] == "auto"
    with pytest.raises(SystemExit):
        parse(["queue", "serve", "--run-dir", str(tmp_path), "--db-calls", "sometimes"])
