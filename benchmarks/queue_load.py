"""Labeling queue under load: 16 concurrent clients labeling through the JSON API on loopback.

The server runs in its own process(es): uvicorn workers serving `app_from_env`, what
`alignloop queue serve --workers N` runs, with uvloop and the lease cap on (1 live lease
per annotator, the default); the clients are threads of this process, each with its own
annotator token and keep-alive connection, doing what a labeling client does: `POST
/api/next`, then `POST /api/labels` with an idempotency key. We report sustained labels/s
over a measured window (after a warm-up), the latency of each request kind (p50/p99), and
check afterwards that every acknowledged label is in the database exactly once.

Variants, side by side in one run: "after" (the code as it is: hot statements on the
driver's cursor, `fastsql`, and uvicorn's httptools parser), "before" (the same with
SQLAlchemy running those statements, as before `fastsql`) and "h11" (after, with the
pure-Python h11 parser). `queue_profile.py` splits the CPU a label costs into layers;
its table is written beside the load table.

SQLite (a file in a temp dir) and PostgreSQL (a throwaway cluster started from the
installed server binaries, as in the tests, or `--pg-url`).

    python benchmarks/queue_load.py --size quick   # 8 s per setting and variant
    python benchmarks/queue_load.py --size full    # 30 s per setting; the README's table
    python benchmarks/queue_load.py --table-only   # re-render table + README from the JSON

SQLite serialises writers: one server worker is its best setting (a second worker
adds cross-process lock waits to the tail latency); PostgreSQL gains from more.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
import queue_profile  # noqa: E402
from common import machine  # noqa: E402
from dpo_throughput import update_readme  # noqa: E402

CLIENTS = 16
TARGET = {"labels_per_s": 500, "p99_ms": 100}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def throwaway_postgres():
    """A PostgreSQL cluster in a temp dir (as tests/conftest.py does): yields its URL."""
    import glob

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise SystemExit("PostgreSQL server binaries not found (apt-get install -y postgresql) "
                         "; or pass --pg-url")
    bindir, root = os.path.dirname(found[-1]), tempfile.mkdtemp(prefix="alignloop-pg-")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(root, "postgres", "postgres")
    data, port = os.path.join(root, "data"), _free_port()
    run = lambda *a: subprocess.run([*as_user, *a], check=True, capture_output=True)  # noqa: E731
    # durable settings (fsync on): what a real deployment would run
    run(f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
    run(f"{bindir}/pg_ctl", "-D", data, "-l", f"{root}/log", "-w", "-o",
        f"-h 127.0.0.1 -p {port} -k {root} -c max_connections=200", "start")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def prepare(target: str, n_items: int) -> list[str]:
    """Fresh queue with `n_items` items (1 vote each) and one annotator per client."""
    from alignloop.labeling.handoff import QueueItem
    from alignloop.labeling.queue.store import QueueStore

    with QueueStore.open(target) as store:
        tokens = [store.add_annotator(f"bench-{uuid.uuid4().hex[:8]}") for _ in range(CLIENTS)]
        batch = []
        for i in range(n_items):
            batch.append(QueueItem(f"load-{i:07d}", 0, f"Prompt {i}: reply to a customer.",
                                   f"A friendly answer number {i}.", f"A curt answer {i}.",
                                   votes_required=1, max_votes=1))
            if len(batch) == 5000:
                store.submit(batch)
                batch = []
        store.submit(batch)
        if store.dialect == "postgresql":
            # planner statistics for the freshly loaded table (autovacuum would get there
            # on its own, later): without them the first minutes run on a blind plan
            with store.engine.connect() as conn:
                conn.exec_driver_sql("ANALYZE")
                conn.commit()
    return tokens


def cpu_seconds(root_pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (Linux /proc)."""
    stats = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(d.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    tree, total, grew = {root_pid}, 0, True
    while grew:
        grew = False
        for pid, (ppid, _) in stats.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    total = sum(stats[p][1] for p in tree if p in stats)
    return total / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> float:
    """CPU seconds of this machine's PostgreSQL processes (Linux /proc, by process name):
    every live backend's user + system time, plus what the postmaster collected from the
    backends that already exited. A PostgreSQL server on another machine counts 0."""
    total = 0
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if stat[stat.index("(") + 1:].startswith("postgres"):
                f = stat.rsplit(")", 1)[1].split()
                total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total / os.sysconf("SC_CLK_TCK")


# name: (hot statements by, HTTP parser, the app's db_calls, requests per label)
VARIANTS = {"after": ("fastsql", "httptools", "auto", 2),
            "next": ("fastsql", "httptools", "auto", 1),
            "inline": ("fastsql", "httptools", "inline", 2),
            "thread": ("fastsql", "httptools", "thread", 2),
            "before": ("sqlalchemy", "httptools", "auto", 2),
            "h11": ("fastsql", "h11", "auto", 2)}
DEFAULT_CALLS = {"SQLite": "inline", "PostgreSQL": "thread"}   # what db_calls "auto" picks


def redundant(variant: str, database: str) -> bool:
    """Whether `variant` is the code as it is under another name on `database` (its
    db_calls is what "auto" picks there): the "after" row already measures it."""
    return variant != "after" and VARIANTS[variant][2] == DEFAULT_CALLS[database]


@contextlib.contextmanager
def server(target: str, workers: int, variant: str = "after"):
    from alignloop.labeling.queue.store import resolve_url

    port, (sql, http, calls, _) = _free_port(), VARIANTS[variant]
    cmd = [sys.executable, "-m", "uvicorn", "queue_profile:app_factory", "--factory",
           "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
           "--http", http, "--loop", "uvloop", "--log-level", "warning", "--no-access-log"]
    log = tempfile.NamedTemporaryFile("w+", prefix="queue-server-", suffix=".log", delete=False)
    env = {**os.environ, "ALIGNLOOP_QUEUE_SECRET": uuid.uuid4().hex, "QUEUE_BENCH_SQL": sql,
           "ALIGNLOOP_QUEUE_DB": resolve_url(target),
           "ALIGNLOOP_QUEUE_OPTIONS": json.dumps({"db_calls": calls}),
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)
    url = f"http://127.0.0.1:{port}"
    from alignloop.labeling.queue.simulate import ApiClient

    probe = ApiClient(url, "none", retry_for=30)
    try:
        probe.request("GET", "/healthz")
        yield url, proc.pid
    finally:
        probe.close()
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        text = Path(log.name).read_text()
        if text.strip():
            print(f"server log ({log.name}), last lines:\n" + "\n".join(text.splitlines()[-20:]),
                  file=sys.stderr)
        else:
            os.unlink(log.name)


def load(url: str, tokens: list[str], warmup: float, seconds: float, server_pid: int,
         combined: bool = False, postgres: bool = False) -> dict:
    """Run the clients for warmup + seconds; stats (and CPU used) over the measured window.
    `combined`: one request per label (`POST /api/labels` with `"next": true` hands out the
    next lease; its latency is counted as a label's, the "next" column is then empty)."""
    from alignloop.labeling.queue.simulate import ApiClient

    stop = threading.Event()
    records: list[list[tuple]] = [[] for _ in tokens]   # (t_done, next_s, label_s, label_id)
    errors: list[str] = []

    def client(i: int, token: str) -> None:
        api, out = ApiClient(url, token), records[i]
        try:
            item = api.next() if combined else None
            while not stop.is_set():
                t0 = time.perf_counter()
                if not combined:
                    item = api.next()
                t1 = time.perf_counter()
                if item is None:
                    errors.append("ran out of items")
                    return
                status, body = api.label(item["item_id"], item["lease_id"], "a", 2,
                                         idempotency_key=f"{i}:{item['item_id']}",
                                         next=combined)
                t2 = time.perf_counter()
                out.append((t2, t1 - t0, t2 - t1, body["label_id"], status))
                item = body.get("next")
        except Exception as e:  # noqa: BLE001
            errors.append(f"{type(e).__name__}: {e}")
        finally:
            api.close()

    threads = [threading.Thread(target=client, args=(i, t)) for i, t in enumerate(tokens)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(warmup)
    db = postgres_cpu_seconds if postgres else (lambda: float("nan"))
    cpu0 = (time.process_time(), cpu_seconds(server_pid), db())
    time.sleep(seconds)
    cpu1 = (time.process_time(), cpu_seconds(server_pid), db())
    stop.set()
    for t in threads:
        t.join()
    lo, hi = start + warmup, start + warmup + seconds
    window = [r for rs in records for r in rs if lo <= r[0] < hi]
    every = [r for rs in records for r in rs]

    def pct(xs: list[float], q: float) -> float:
        xs = sorted(xs)
        return 1000 * xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")

    nexts = [] if combined else [r[1] for r in window]
    labels = [r[2] for r in window]
    return {"labels_per_s": len(window) / seconds, "labels_measured": len(window),
            "p50_next_ms": pct(nexts, 0.5), "p99_next_ms": pct(nexts, 0.99),
            "p50_label_ms": pct(labels, 0.5), "p99_label_ms": pct(labels, 0.99),
            "p99_ms": pct(nexts + labels, 0.99), "p50_ms": pct(nexts + labels, 0.5),
            "server_cpu_cores": (cpu1[1] - cpu0[1]) / seconds,
            "client_cpu_cores": (cpu1[0] - cpu0[0]) / seconds,
            "db_cpu_cores": (cpu1[2] - cpu0[2]) / seconds,
            "load_average": os.getloadavg()[0],
            "acked": [(r[3], r[4]) for r in every], "errors": errors}


def verify(target: str, acked: list[tuple[int, int]]) -> dict:
    """Every acknowledged label in the database exactly once, nothing else there."""
    from alignloop.labeling.queue.store import QueueStore

    with QueueStore.open(target) as store:
        ids = [r["label_id"] for r in store.export_raw()]
    acked_ids = [a[0] for a in acked]
    return {"lost": len(set(acked_ids) - set(ids)), "duplicated": len(ids) - len(set(ids)),
            "unacknowledged": len(set(ids) - set(acked_ids)),
            "double_acked": len(acked_ids) - len(set(acked_ids))}


def run_setting(name: str, target: str, workers: int, warmup: float, seconds: float,
                n_items: int, variant: str) -> dict:
    tokens = prepare(target, n_items)
    with server(target, workers, variant) as (url, pid):
        r = load(url, tokens, warmup, seconds, pid, combined=VARIANTS[variant][3] == 1,
                 postgres=name == "PostgreSQL")
    check = verify(target, r.pop("acked"))
    # the "after" rows carry the database's plain name: they are the code as it is (and
    # what benchmarks/summary.py judges against the target)
    setting = name if variant == "after" else f"{name} ({variant})"
    return {"setting": setting, "database": name, "variant": variant, "workers": workers,
            "clients": CLIENTS, **r, **check,
            "server_cpu_ms_per_label": 1000 * r["server_cpu_cores"] / max(r["labels_per_s"], 1e-9)}


def table(results: list[dict], meta: dict) -> str:
    lines = ["| database (variant) | server workers | labels/s | p50 next / label (ms) | "
             "p99 next / label (ms) | lost | duplicated | client errors | "
             "CPU server / PostgreSQL / clients (cores) | server + PostgreSQL CPU ms per "
             "label | load average |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        db = r.get("db_cpu_cores", float("nan"))
        per_label = 1000 * db / max(r["labels_per_s"], 1e-9)
        lines.append(f"| {r['setting']} | {r['workers']} | {r['labels_per_s']:.0f} | "
                     f"{r['p50_next_ms']:.1f} / {r['p50_label_ms']:.1f} | "
                     f"{r['p99_next_ms']:.1f} / {r['p99_label_ms']:.1f} | {r['lost']} | "
                     f"{r['duplicated']} | {len(r['errors'])} | {r['server_cpu_cores']:.2f} / "
                     f"{'-' if db != db else f'{db:.2f}'} / {r['client_cpu_cores']:.2f} | "
                     f"{r.get('server_cpu_ms_per_label', 0):.2f}"
                     f"{'' if db != db else f' + {per_label:.2f}'} | "
                     f"{r.get('load_average', float('nan')):.1f} |")
    lines.append("")
    lines.append(f"{CLIENTS} concurrent clients on loopback (threads of one process, keep-alive "
                 f"HTTP/1.1), each label = `POST /api/next` + `POST /api/labels`; "
                 f"{meta['seconds']:.0f} s measured after {meta['warmup']:.0f} s of warm-up on a "
                 f"fresh "
                 f"queue of {meta['items']} items; CPU of the server's processes, of the "
                 f"PostgreSQL cluster's processes (SQLite runs inside the server) and of the "
                 f"clients; a client error (request still failing "
                 f"after 30 s of retries) stops that client; "
                 f"server and clients share the machine ({meta['machine']}; load average "
                 f"{meta.get('load_average', '?')} before the run, and per row at the end of "
                 f"its window: other jobs shared the 2 cores); "
                 f"{meta['date']}; `{meta['command']}`. Variants: no suffix = the code as it is "
                 f"(fastsql, httptools, the store calls of the API inline on the event loop "
                 f"for SQLite and in the threadpool for PostgreSQL: `create_app(db_calls="
                 f"\"auto\")`); (next) = the same with one request per label (`POST "
                 f"/api/labels` with `\"next\": true`); (inline) / (thread) = the other "
                 f"`db_calls` for that database; (before) = SQLAlchemy running the hot "
                 f"statements; (h11) = the pure-Python HTTP parser.")
    if meta.get("profile"):
        http = {(r["database"], r["variant"]): r["server_cpu_ms_per_label"]
                for r in results if r["workers"] == 1}
        lines += ["", queue_profile.table(meta["profile"], http)]
    return "\n".join(lines)


def _fresh_target(db: str, stack: contextlib.ExitStack, pg: list) -> str:
    """A new empty queue: an SQLite file in a temp dir, or a new database in the (one,
    lazily started) PostgreSQL cluster."""
    if db == "sqlite":
        tmp = tempfile.mkdtemp(prefix="alignloop-bench-")
        stack.callback(shutil.rmtree, tmp, True)
        return tmp
    if not pg:
        pg.append(stack.enter_context(throwaway_postgres()))
    import psycopg

    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg[0].replace("+psycopg", ""), autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    return pg[0].rsplit("/", 1)[0] + "/" + name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=["quick", "full"], default="quick")
    ap.add_argument("--workers", default="1,2", help="server worker counts to run (default: %(default)s)")
    ap.add_argument("--databases", default="sqlite,postgresql")
    ap.add_argument("--variants", default="after,next,inline,thread",
                    help=f"of {list(VARIANTS)}; h11 runs with 1 worker only (default: %(default)s)")
    ap.add_argument("--pg-url", help="use this PostgreSQL server instead of a throwaway cluster "
                                     "(a database is created in it per setting)")
    ap.add_argument("--table-only", action="store_true",
                    help="re-render the table and README section from results/queue_load.json")
    ap.add_argument("--name", help="results file stem for a full pass kept beside the README's "
                                   "(e.g. another machine's); the README is not touched")
    args = ap.parse_args()
    if args.table_only:
        saved = json.loads((RESULTS / "queue_load.json").read_text())
        md = table(saved["results"], saved["meta"])
        (RESULTS / "queue_load.md").write_text(md + "\n")
        update_readme(md, key="queue_load")
        print(md)
        return
    warmup, seconds = {"quick": (2.0, 8.0), "full": (5.0, 30.0)}[args.size]
    n_items = int(2000 * (warmup + seconds))   # more than the fastest setting labels
    load_before = round(os.getloadavg()[0], 1)
    results, profiles, names = [], {}, {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
    with contextlib.ExitStack() as stack:
        pg = [args.pg_url] if args.pg_url else []
        for db in args.databases.split(","):
            print(f"profiling {db} ...", flush=True)
            profiles[names[db]] = queue_profile.profile(_fresh_target(db, stack, pg))
            for workers in (int(w) for w in args.workers.split(",")):
                for variant in args.variants.split(","):   # interleaved: drift hits all alike
                    if (variant == "h11" and workers > 1) or redundant(variant, names[db]):
                        continue
                    print(f"running {db}, {workers} worker(s), {variant} ...", flush=True)
                    r = run_setting(names[db], _fresh_target(db, stack, pg), workers, warmup,
                                    seconds, n_items, variant)
                    print(json.dumps(r), flush=True)
                    results.append(r)
    meta = {"warmup": warmup, "seconds": seconds, "items": n_items,
            "date": date.today().isoformat(), "load_average": load_before,
            "machine": f"{machine()}, Python {platform.python_version()}",
            "command": f"python benchmarks/queue_load.py --size {args.size}"
                       + (f" --name {args.name}" if args.name else ""), "target": TARGET,
            "profile": profiles}
    RESULTS.mkdir(exist_ok=True)
    stem = args.name or ("queue_load" if args.size == "full" else "queue_load.quick")
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    md = table(results, meta)
    (RESULTS / f"{stem}.md").write_text(md + "\n")
    if args.size == "full" and not args.name:
        update_readme(md, key="queue_load")
    print(md)


if __name__ == "__main__":
    main()
