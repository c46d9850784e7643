"""`alignloop queue ...`: the human labeling queue from the command line.

Every command takes the queue the same way, as an option: `--run-dir DIR` (the run
directory; the queue is DIR/queue.db, SQLite) or `--db URL` (e.g.
`postgresql+psycopg://user@host/db`). Only `import` and `add-annotator` create a queue
that does not exist yet; the other commands refuse a missing one. Heavy modules
(SQLAlchemy, FastAPI, uvicorn, rich) are imported inside the commands, so
`alignloop --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from alignloop.cli.argtypes import number, positive, round_number, whole
from alignloop.errors import AlignloopError

TOKEN_ENV = "ALIGNLOOP_TOKEN"


class _QueueParser(argparse.ArgumentParser):
    """A queue command's parser: an error about the missing queue says how to give it."""

    def error(self, message: str):
        if "--run-dir" in message:
            message += ("; every queue command takes the queue as an option, "
                        f"e.g. {self.prog} --run-dir runs/demo ...")
        super().error(message)


def _target(args: argparse.Namespace) -> str:
    return args.db or args.run_dir


def _missing_queue(target: str) -> Path | None:
    """The SQLite file a target names when that file does not exist (else None)."""
    from sqlalchemy import make_url

    if "://" not in target:
        path = Path(target) / "queue.db"
    else:
        url = make_url(target)
        if url.get_backend_name() != "sqlite" or not url.database:
            return None     # a server database: made empty if need be, nothing on disk
        path = Path(url.database)
    return None if path.is_file() else path


def _open(args: argparse.Namespace):
    """The queue store of `--run-dir`/`--db`. Only the commands that fill a queue
    (`import`, `add-annotator`) create one; for the others a missing queue is an error,
    never a new empty database in a surprising place."""
    from alignloop.labeling.queue.store import QueueStore

    target = _target(args)
    missing = _missing_queue(target)
    if missing is not None and not args.creates_queue:
        raise AlignloopError(f"no queue at {missing}: `alignloop queue import` or "
                             "`alignloop queue add-annotator` creates one")
    if "://" not in target:
        Path(target).mkdir(parents=True, exist_ok=True)
    return QueueStore.open(target)


def _not_a_run_dir(value: str, what: str) -> None:
    """Refuse a positional argument that is in fact a run directory (a queue given in the
    old positional way, or arguments swapped)."""

    if (Path(value) / "queue.db").is_file():
        raise AlignloopError(f"{what} {value!r} is a run directory; give the queue as "
                             f"--run-dir {value}")


def _app_options(args: argparse.Namespace) -> dict:
    options = {"lease_seconds": args.lease_seconds, "gold_rate": args.gold_rate,
               "max_body_bytes": args.max_body_bytes, "secure_cookies": args.secure_cookies,
               "db_calls": args.db_calls}
    if args.max_leases is not None:   # else the app's default (`leases.MAX_LEASES`)
        options["max_leases"] = args.max_leases
    if args.auth_failures is not None:   # else the app's default (`deps.AUTH_FAILURES`)
        options["auth_failures"] = args.auth_failures
    return options


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the labeling page and the JSON API (uvicorn). Binds to loopback unless --host
    says otherwise; several --workers share the queue (sessions are signed cookies)."""
    import uvicorn
    from alignloop.labeling.queue.app import SECRET_ENV, create_app, resolve_secret
    from alignloop.labeling.queue.store import resolve_url

    port = _free_port(args.host, args.port)     # before anything is made or printed
    store = _open(args)   # creates or migrates the database before any worker starts
    url = resolve_url(_target(args))
    secret = resolve_secret(url)
    shown = f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{port}/"
    print(f"labeling queue at {shown}  (queue: {_target(args)}, {args.workers} worker(s))",
          flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}, not only loopback: put TLS in front and pass "
              "--secure-cookies", file=sys.stderr)
    server = {"host": args.host, "port": port, "log_level": args.log_level,
              "access_log": args.access_log, **_proxy_options(args)}
    if args.workers <= 1:
        app = create_app(store, secret=secret, **_app_options(args))
        uvicorn.run(app, **server)
        return 0
    store.close()
    os.environ.update({"ALIGNLOOP_QUEUE_DB": url, SECRET_ENV: secret.decode(),
                       "ALIGNLOOP_QUEUE_OPTIONS": json.dumps(_app_options(args))})
    uvicorn.run("alignloop.labeling.queue.app:app_from_env", factory=True,
                workers=args.workers, **server)
    return 0


def _free_port(host: str, port: int) -> int:
    """`port` (0: one the system picks) if it can be bound on `host` now, else an error
    with exit 2: uvicorn's own bind failure exits with 3, which is `alignloop run`'s
    "paused", after the URL line named a server that is someone else's."""
    import socket


    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as e:
            raise AlignloopError(f"--port {port}: cannot listen on {host}:{port} "
                                 f"({e.strerror or e}); is another server using it?") from None
        return probe.getsockname()[1]


def _proxy_options(args: argparse.Namespace) -> dict:
    """uvicorn's proxy settings. By default a client's address is the connection's own:
    uvicorn would otherwise take `X-Forwarded-For` from any loopback connection, so a
    client on the host (or behind a proxy that passes the header through) could name a new
    address with every wrong token and never meet the failed sign-in limit. With
    `--forwarded-allow-ips` (the proxy's addresses) those proxies' header is believed."""
    if not args.forwarded_allow_ips:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": args.forwarded_allow_ips}


def cmd_add_annotator(args: argparse.Namespace) -> int:
    """Create an annotator and print its token (only its hash is kept: it is shown once)."""
    _not_a_run_dir(args.name, "annotator name")
    store = _open(args)
    role = "admin" if args.admin else args.role
    token = store.add_annotator(args.name, role)
    print(f"added {role} {args.name!r}; the token below is shown only once:", file=sys.stderr)
    print(token)
    return 0


def cmd_disable_annotator(args: argparse.Namespace) -> int:
    """Disable an annotator: its token stops working and its web sessions end; the labels it
    gave are kept."""
    _open(args).disable_annotator(args.name)
    print(f"disabled {args.name!r}")
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    """Label in the terminal: the prompt and the two responses side by side (stacked when the
    terminal is narrow); keys 1 = A, 2 = B, 3 = tie, 4 = both bad, s = skip (with a reason),
    q = quit; then a confidence (1-3, Enter: 2) and a comment (Enter: none), so answers piped
    in are three lines per item. The round's guideline is shown first. Control
    characters in the items are shown as escapes (\\x1b), never sent to the terminal."""
    from alignloop.labeling.queue.terminal import label_in_terminal

    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        raise AlignloopError(f"no token: pass --token or set {TOKEN_ENV}")
    store = _open(args)
    me = store.authenticate(token)
    if me is None:
        raise AlignloopError("that token is not valid")
    label_in_terminal(store, me, limit=args.limit, lease_seconds=args.lease_seconds)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """Bot annotators labeling through the JSON API over HTTP (as people would), answering
    like the annotators of the demo's panel (the same panel the loop simulates). With a
    --run-dir or --db the bots are added as annotators; without --url a server is started
    in this process on a free loopback port."""
    import secrets
    import time

    from alignloop.demo.labelers import panel_answerers
    from alignloop.demo.panel import PANELS
    from alignloop.labeling.queue.simulate import run_panel

    if args.panel not in PANELS:
        raise AlignloopError(f"unknown panel {args.panel!r}; known: {', '.join(sorted(PANELS))}")
    store = _open(args) if (args.run_dir or args.db) else None
    if store is None and not (args.url and args.token):
        raise AlignloopError("give --run-dir or --db (bots are added there), or --url with "
                         "one --token per bot")
    tokens = [(f"token-{i + 1}", t) for i, t in enumerate(args.token)]
    if store is not None and not tokens:
        from alignloop.labeling.queue.store import QueueError

        for i in range(args.annotators):
            name = f"{args.panel}-bot-{i + 1}"
            try:
                tokens.append((name, store.add_annotator(name)))
            except QueueError as e:
                if e.status != 409:
                    raise
                name = f"{name}-{secrets.token_hex(3)}"   # an earlier run's bot keeps its name
                tokens.append((name, store.add_annotator(name)))
    answerers = panel_answerers(args.panel, len(tokens))
    start = time.perf_counter()
    if args.url:
        reports = run_panel(args.url, tokens, answerers, seed=args.seed,
                            max_labels=args.max_labels)
    else:
        from alignloop.labeling.queue.app import ServerThread, create_app

        with ServerThread(create_app(store, lease_seconds=args.lease_seconds)) as url:
            print(f"serving the queue for the bots at {url}", file=sys.stderr)
            reports = run_panel(url, tokens, answerers, seed=args.seed,
                                max_labels=args.max_labels)
    elapsed = time.perf_counter() - start
    for r in reports:
        extra = f", {r.retries} retries" if r.retries else ""
        print(f"{r.name}: {r.labeled} labels{extra}" + (f"; error: {r.errors[0]}" if r.errors else ""))
    total = sum(r.labeled for r in reports)
    print(f"{len(reports)} bots ({args.panel} panel) recorded {total} labels in {elapsed:.1f} s")
    return 1 if any(r.errors for r in reports) else 0


def add_queue_commands(sub: argparse._SubParsersAction) -> None:
    from alignloop.cli.queue_data import cmd_export, cmd_import, cmd_status

    p = sub.add_parser("queue", help="the human labeling queue (serve, annotators, import/export)",
                       description=__doc__.split("\n\n")[1].replace("\n", " "))
    qsub = p.add_subparsers(dest="queue_command", required=True, metavar="COMMAND",
                            parser_class=_QueueParser)

    def command(name: str, func, help: str, *, creates: bool = False,
                required: bool = True) -> argparse.ArgumentParser:
        q = qsub.add_parser(name, help=help, description=func.__doc__)
        where = q.add_mutually_exclusive_group(required=required)
        where.add_argument("--run-dir", metavar="DIR",
                           help="run directory: the queue is DIR/queue.db (SQLite)")
        where.add_argument("--db", metavar="URL", help="database URL instead of a run directory")
        q.set_defaults(func=func, creates_queue=creates)
        return q

    def app_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--lease-seconds", type=number(0, above=True), default=600,
                       help="an unanswered item goes back after this long (default: %(default)s)")

    q = command("serve", cmd_serve, "serve the labeling page and JSON API")
    q.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    q.add_argument("--port", type=whole(0, 65535), default=8080,
                   help="(default: %(default)s; 0: any free port)")
    q.add_argument("--workers", type=positive, default=1, help="server processes (default: %(default)s)")
    app_args(q)
    q.add_argument("--max-leases", type=positive,
                   help="live leases per annotator; asking again hands back the oldest "
                        "(default: 1)")
    q.add_argument("--auth-failures", type=positive, metavar="N",
                   help="failed sign-ins / 401s an address may make in a minute (per worker) "
                        "before it gets 429 (default: 20)")
    q.add_argument("--forwarded-allow-ips", metavar="IPS",
                   help="comma-separated addresses of reverse proxies whose X-Forwarded-For "
                        "names the client (default: none; every client is its connection's "
                        "address, so behind a proxy give the proxy's address here)")
    q.add_argument("--gold-rate", type=number(0, 1), default=0.0,
                   help="share of assignments that are gold items (default: %(default)s)")
    q.add_argument("--db-calls", choices=["auto", "inline", "thread"], default="auto",
                   help="run the JSON API's store calls on the event loop (inline) or in "
                        "threads; auto: inline for SQLite, threads for a database server "
                        "(default: %(default)s)")
    q.add_argument("--max-body-bytes", type=positive, default=64 * 1024,
                   help="larger request bodies are refused with 413 (default: %(default)s)")
    q.add_argument("--secure-cookies", action="store_true",
                   help="mark the session cookie Secure (serve behind HTTPS)")
    q.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="the web server's log level (default: %(default)s)")
    q.add_argument("--no-access-log", dest="access_log", action="store_false",
                   help="do not log one line per request")

    q = command("add-annotator", cmd_add_annotator, "add an annotator and print its token",
                creates=True)
    q.add_argument("name", help="annotator name (unique)")
    role = q.add_mutually_exclusive_group()
    role.add_argument("--role", choices=["annotator", "reviewer", "admin"], default="annotator",
                      help="annotator: labels; reviewer: also adjudicates disputed items; "
                           "admin: also the dashboard, /api/status, annotators and "
                           "guidelines (default: %(default)s)")
    role.add_argument("--admin", action="store_true", help="same as --role admin")

    q = command("disable-annotator", cmd_disable_annotator,
                "disable an annotator (its token and sessions stop working)")
    q.add_argument("name", help="annotator name")

    q = command("status", cmd_status, "counts and agreement per round and annotator")
    q.add_argument("--json", action="store_true", help="the full status as JSON")

    q = command("import", cmd_import, "queue the pairs of a pairs file for labeling",
                creates=True)
    q.add_argument("file", help="pairs file (JSONL, JSON, parquet, hf:...)")
    q.add_argument("--round", type=round_number, default=0, help="(default: %(default)s)")
    q.add_argument("--votes-required", type=positive, default=1,
                   help="labels each item needs (default: %(default)s)")
    q.add_argument("--max-votes", type=positive,
                   help="labels an item needs when its votes disagree (default: votes required)")
    q.add_argument("--on-invalid", choices=["error", "skip"], default="error",
                   help="a bad row stops the import or is skipped (default: %(default)s)")
    q.add_argument("--gold", action="store_true",
                   help="queue them as gold items, the chosen side the known answer")

    q = command("export", cmd_export, "write soft-labeled DPO pairs or the raw votes")
    q.add_argument("--format", choices=["dpo", "raw", "hf"], default="dpo",
                   help="dpo: one soft-labeled pair per item; raw: every vote; hf: a "
                        "datasets.Dataset directory of TRL preference rows (default: %(default)s)")
    q.add_argument("--out", required=True, help=".parquet or .jsonl (hf: a directory)")
    q.add_argument("--force", action="store_true", help="replace an existing OUT")
    q.add_argument("--round", type=round_number, help="only this round (default: every round)")
    q.add_argument("--push-to-hub", metavar="REPO",
                   help="hf format: also upload the dataset to this Hub repository")
    q.add_argument("--public", action="store_true", help="with --push-to-hub: a public "
                   "dataset (default: private)")

    from alignloop.cli.queue_team import add_team_commands

    add_team_commands(command)

    q = command("label", cmd_label, "label in the terminal")
    q.add_argument("--token", help=f"your annotator token (default: ${TOKEN_ENV})")
    q.add_argument("--limit", type=positive, help="stop after this many labels")
    app_args(q)

    q = command("simulate", cmd_simulate, "bot annotators labeling through the JSON API",
                required=False)
    q.add_argument("--panel", default="demo",
                   help="panel of simulated annotators, from alignloop.demo.panel "
                        "(default: %(default)s)")
    q.add_argument("--annotators", type=positive, default=3, help="bots (default: %(default)s)")
    q.add_argument("--url", help="a running server (default: start one in this process)")
    q.add_argument("--token", action="append", default=[],
                   help="with --url and no --run-dir/--db: one bot per token (repeatable)")
    q.add_argument("--max-labels", type=positive, help="per bot (default: until nothing is left)")
    q.add_argument("--seed", type=int, default=0,
                   help="a bot's vote depends on it, the bot and the item only "
                        "(default: %(default)s)")
    app_args(q)
