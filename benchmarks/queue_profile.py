"""Where a label's time goes in the queue server: CPU per label, layer by layer.

Sampling a loaded server on a shared 2-core machine mostly measures the scheduler (a
thread descheduled in the middle of a `send` looks like a slow `send`), so this measures
CPU time per label (`time.process_time`, every thread of the process), which the other
tenants do not inflate much, at three depths of the same path, one label = `POST
/api/next` + `POST /api/labels` by one client, sequentially:

    store     QueueStore.next_item + record_label: SQL, SQLAlchemy, the driver
    asgi      the FastAPI app called in-process as ASGI (no sockets): + routing,
              dependencies, bearer auth (cached), pydantic, JSON, the threadpool hop,
              the guard middleware
    http      (from the load run) the server process's CPU per label over loopback
              HTTP/1.1 keep-alive: + uvicorn, its HTTP parser (httptools or h11), uvloop

and counts the SQL statements per label (SQLAlchemy `before_cursor_execute`, transaction
control included). `python benchmarks/queue_load.py` runs it and puts the table beside
the load results.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid


def _fresh(target: str, n_items: int):
    from alignloop.labeling.handoff import QueueItem
    from alignloop.labeling.queue.store import QueueStore

    store = QueueStore.open(target)
    token = store.add_annotator(f"prof-{uuid.uuid4().hex[:8]}")
    store.submit([QueueItem(f"prof-{uuid.uuid4().hex[:6]}-{i:06d}", 0, f"Prompt {i}.",
                            f"A friendly answer {i}.", f"A curt answer {i}.",
                            votes_required=1, max_votes=1) for i in range(n_items)])
    return store, token


def _count_statements(store) -> list[str]:
    """Record the first word of every statement from now on: through SQLAlchemy (events)
    and through `fastsql` (the hot path's own cursor, wrapped here; `leases.run` is put
    back by the caller)."""
    from alignloop.labeling.queue import fastsql, leases
    from sqlalchemy import event

    seen: list[str] = []
    event.listen(store.engine, "before_cursor_execute",
                 lambda conn, cur, sql, params, ctx, many: seen.append(sql.split()[0].upper()))
    event.listen(store.engine, "commit", lambda conn: seen.append("COMMIT"))
    fast = leases.run
    if fast is not fastsql.execute:   # SQLAlchemy's own events count those
        return seen

    def counted(conn, clause, params):
        seen.append(clause.text.split()[0].upper())
        return fast(conn, clause, params)

    leases.run = counted
    return seen


def store_cost(target: str, n: int) -> dict:
    """CPU ms per label through the store alone, and SQL statements per label."""
    store, token = _fresh(target, n + 20)
    ann = store.authenticate(token).id
    for _ in range(10):   # warm caches (compiled statements, pool)
        a = store.next_item(ann)
        store.record_label(ann, item_id=a.item.item_id, lease_id=a.lease_id, choice="a",
                           idempotency_key=uuid.uuid4().hex)
    from alignloop.labeling.queue import leases

    run = leases.run
    seen = _count_statements(store)
    a = store.next_item(ann)
    per_next = len(seen)
    store.record_label(ann, item_id=a.item.item_id, lease_id=a.lease_id, choice="a",
                       idempotency_key=uuid.uuid4().hex)
    statements = {"next": seen[:per_next], "label": seen[per_next:]}
    leases.run = run
    t0 = time.process_time()
    for _ in range(n):
        a = store.next_item(ann)
        store.record_label(ann, item_id=a.item.item_id, lease_id=a.lease_id, choice="a",
                           idempotency_key=uuid.uuid4().hex)
    cpu = (time.process_time() - t0) / n
    store.close()
    return {"cpu_ms": 1000 * cpu, "statements": statements}


async def _asgi(app, method: str, path: str, token: str, body: bytes = b"") -> tuple[int, bytes]:
    """One request straight into the ASGI app (what uvicorn would hand it)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 50000),
             "server": ("127.0.0.1", 8080),
             "headers": [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {token}".encode()),
                         (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}
    sent = False
    out: dict = {"body": b""}

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        else:
            out["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return out["status"], out["body"]


def asgi_cost(target: str, n: int) -> dict:
    """CPU ms per label through the app in-process (no HTTP server, no sockets)."""
    from alignloop.labeling.queue.app import create_app

    store, token = _fresh(target, n + 20)
    app = create_app(store, secret="profile")

    async def one() -> None:
        status, raw = await _asgi(app, "POST", "/api/next", token)
        item = json.loads(raw)
        body = json.dumps({"item_id": item["item_id"], "lease_id": item["lease_id"],
                           "choice": "a", "confidence": 2,
                           "idempotency_key": uuid.uuid4().hex}).encode()
        status, raw = await _asgi(app, "POST", "/api/labels", token, body)
        assert status == 201, raw

    async def run() -> float:
        for _ in range(10):
            await one()
        t0 = time.process_time()
        for _ in range(n):
            await one()
        return (time.process_time() - t0) / n

    cpu = asyncio.run(run())
    store.close()
    return {"cpu_ms": 1000 * cpu}


def profile(target: str, n: int = 400) -> dict:
    """{fastsql | sqlalchemy: {store: {cpu_ms, statements}, asgi: {cpu_ms}}} on the queue at
    `target`: the code as it is, then with SQLAlchemy running the hot statements."""
    from alignloop.labeling.queue import fastsql, leases

    out = {}
    for path in ("fastsql", "sqlalchemy"):
        if path == "sqlalchemy":
            use_sqlalchemy_statements()
        try:
            out[path] = {"store": store_cost(target, n), "asgi": asgi_cost(target, n)}
        finally:
            leases.run = fastsql.execute
    return out


def table(profiles: dict[str, dict], http_ms: dict[tuple[str, str], float]) -> str:
    """Markdown: CPU ms per label by layer, per database and statement path; `http_ms[(db,
    variant)]` is the server's CPU per label in the load run (1 worker)."""
    lines = ["| database | statements run by | SQL statements per label (next + label) | "
             "store | + app (ASGI, in-process) | + uvicorn/httptools (load run) | "
             "+ uvicorn/h11 (load run) |", "|---|---|---|---|---|---|---|"]
    for db, paths in profiles.items():
        for path, p in paths.items():
            st = p["store"]["statements"]
            n_next, n_label = len(st["next"]), len(st["label"])
            before = path == "sqlalchemy"
            http = http_ms.get((db, "before" if before else "after"))
            h11 = None if before else http_ms.get((db, "h11"))
            cell = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
            lines.append(f"| {db} | {'SQLAlchemy (before)' if before else 'fastsql (now)'} | "
                         f"{n_next} + {n_label} = {n_next + n_label} | "
                         f"{p['store']['cpu_ms']:.2f} | {p['asgi']['cpu_ms']:.2f} | "
                         f"{cell(http)} | {cell(h11)} |")
    lines.append("")
    lines.append("CPU ms per label (`POST /api/next` + `POST /api/labels`) in the server "
                 "process, cumulative by layer: the store alone and the FastAPI app called "
                 "in-process (one client, sequential, `benchmarks/queue_profile.py`; "
                 "statements include BEGIN and COMMIT), then the whole 1-worker server under "
                 "the 16-client load (its CPU seconds / labels).")
    return "\n".join(lines)


# --------------------------------------------------------------------------- before / after


def use_sqlalchemy_statements() -> None:
    """Run the hot path's statements through SQLAlchemy again, as before `fastsql` (the
    "before" rows of the benchmark; the code path is otherwise the same)."""
    from alignloop.labeling.queue import leases

    leases.run = lambda conn, clause, params: conn.execute(clause, params)


def app_factory():
    """uvicorn factory for the benchmark's server processes: `app_from_env` (what `alignloop
    queue serve --workers N` runs), with the statements of `QUEUE_BENCH_SQL` ("fastsql",
    the code as it is, or "sqlalchemy", as before)."""
    import os

    from alignloop.labeling.queue.app import app_from_env

    if os.environ.get("QUEUE_BENCH_SQL") == "sqlalchemy":
        use_sqlalchemy_statements()
    return app_from_env()
