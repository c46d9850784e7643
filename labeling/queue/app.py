"""The labeling web app: a server-rendered page for people and a JSON API for scripts and bots.

`create_app` assembles the routers over one store: `routes_pages` (the labeling
page, sign-in and sign-out), `routes_api` (the JSON API), `routes_admin` (status
and health), `routes_skip` (skips and guidelines for annotators) and
`routes_dashboard` (the admin pages: dashboard, adjudication); what they share (the store, settings, sessions, bearer authentication)
is in `deps`. This module adds the request guard, the error format and serving.

The app keeps no state of its own (only the store does), so several workers or hosts
can serve one queue:

- Sessions are signed cookies (itsdangerous): a random session id, the annotator and
  the lease on screen. HttpOnly, SameSite=Strict, Secure when `secure_cookies`. A
  signed-in session is also a row in the store, checked on every request: signing out
  deletes it and disabling the annotator deletes all of its sessions, so a copied
  cookie ends with them; otherwise it expires after `deps.SESSION_MAX_AGE`. The
  signing secret comes from `resolve_secret`.
- Every form carries a CSRF token, HMAC(secret, session id), checked on every POST;
  a wrong or missing token is a 403.
- The page shows the two responses in the assignment's display order; a hidden
  `order_sig` = HMAC(secret, lease, item, order) lets the server map the clicked side
  (left/right) back to a/b without trusting the browser or looking the lease up.
- All prompt and response text is escaped (Jinja autoescape; no `|safe` anywhere), and
  a Content-Security-Policy allows only this server's own script and style files.

JSON API (bearer token: `Authorization: Bearer <token>`):

    POST /api/next    200 {item_id, lease_id, round, prompt, a, b, display_order, expires_at}
                      or 204 when nothing is left for this annotator. An annotator holding
                      `max_leases` live leases gets the oldest of them again (the same
                      lease_id), not a new item.
                      `a`/`b` are the item's own responses; `display_order` ("ab" or "ba")
                      is the order a client showing them to a person should use (left to
                      right). `prompt` is text or a list of {role, content} messages.
    POST /api/labels  {item_id, lease_id, choice, confidence, idempotency_key, comment?}
                      `choice` is "a", "b", "tie" or "both_bad", ALWAYS relative to the
                      `a`/`b` fields of /api/next, whatever order they were shown in;
                      `confidence` 1-3. 201 {label_id, created: true} for a new label,
                      200 {label_id, created: false} for a replay of the same
                      idempotency key (a retried request records one label); the same
                      key with a different label is a 409 that says so. Keys are
                      each annotator's own.
    GET  /api/status  admin only (403 otherwise): `QueueStore.status()`.
    GET  /healthz     200 {"ok": true} when the database answers, 503 otherwise.

A bearer token is looked up (constant-time, in the store) at most every
`auth_cache_seconds` per worker; a disabled token stops working within that time.
Errors are JSON `{"detail": ..., "field": ...}`: 401 missing or unknown token; 403 not an
admin; 413 body over `max_body_bytes`; 422 invalid field, with `field` naming it (also in
the detail text) and `errors` listing every one (a wrong JSON type, an unknown field and
a control character, see `controls`, are each one); the store's `QueueError.status` (404
unknown item or lease, 409 conflict); 429 with Retry-After for an IP that failed
authentication `auth_failures` times in a minute (`deps.Failures`).
The contract, every status of every route, is published at `/openapi.json`
(`contract.py`).
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from alignloop.labeling.queue import (
    controls,
    guidelines,
    routes_admin,
    routes_api,
    routes_dashboard,
    routes_pages,
    routes_skip,
)
from alignloop.labeling.queue.deps import AUTH_FAILURES, Failures, QueueWeb, Sessions
from alignloop.labeling.queue.leases import MAX_LEASES
from alignloop.labeling.queue.store import QueueError, QueueStore
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("alignloop.queue")

HERE = Path(__file__).parent
AUTH_CACHE_SECONDS = 5.0
SECRET_ENV = "ALIGNLOOP_QUEUE_SECRET"
DB_CALLS = ("auto", "inline", "thread")
HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
           (b"referrer-policy", b"no-referrer"),
           (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'; "
                                        b"form-action 'self'; base-uri 'none'")]


# --------------------------------------------------------------------------- secret


def resolve_secret(url: str | None = None) -> bytes:
    """The key that signs sessions: `ALIGNLOOP_QUEUE_SECRET` if set; for a SQLite file,
    a random key kept in `<db file>.secret` (mode 0600, created once, shared by every
    worker on that file); otherwise a random key for this process only (sessions end
    when it restarts, and several processes need the environment variable)."""
    if os.environ.get(SECRET_ENV):
        return _strong(os.environ[SECRET_ENV].encode(), f"the environment variable {SECRET_ENV}")
    if url and url.startswith("sqlite:///") and ":memory:" not in url:
        path = Path(url.removeprefix("sqlite:///").split("?")[0] + ".secret")
        if not path.exists():
            tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
            try:
                os.link(tmp, path)   # atomic: the first worker to get here wins
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
        if path.stat().st_mode & 0o077:
            raise QueueError(f"{path} (the key that signs sessions) can be read by other "
                             f"users: chmod 600 {path}, or delete it to have a new one made "
                             "(signed-in sessions then end)", 500, "secret")
        return _strong(path.read_text().strip().encode(), str(path))
    log.warning("no %s set: sessions are signed with a key of this process only", SECRET_ENV)
    return secrets.token_bytes(32)


MIN_SECRET_BYTES = 32


def _strong(key: bytes, where: str) -> bytes:
    """`key`, or QueueError when it is too short to sign with: anyone could compute the
    forms' CSRF tokens and the order signatures from a guessable key."""
    if len(key) < MIN_SECRET_BYTES:
        raise QueueError(f"{where}: the key that signs sessions has {len(key)} bytes; at "
                         f"least {MIN_SECRET_BYTES} are needed (e.g. python -c 'import "
                         "secrets; print(secrets.token_hex(32))')", 500, "secret")
    return key


# --------------------------------------------------------------------------- ASGI guard

# A guideline of guidelines.MAX_BODY characters, form-encoded: a 4-byte UTF-8 character
# is 12 bytes (%XX x 4), a CJK one 9; so the admin's form may reach about 600 kB.
GUIDELINE_FORM_BYTES = 12 * guidelines.MAX_BODY + 4096


class _Guard:
    """Pure ASGI middleware: refuses request bodies over `limit` bytes with 413, judged by
    Content-Length and by counting what is actually streamed (the body is buffered, at
    most `limit` bytes, before the app runs), and adds security headers to responses.
    The guideline form may be larger (`GUIDELINE_FORM_BYTES`)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit
        self.limits = {"/admin/guidelines": max(limit, GUIDELINE_FORM_BYTES)}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                extra = HEADERS if scope["path"].startswith("/static/") else [
                    *HEADERS, (b"cache-control", b"no-store")]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        limit = self.limits.get(scope["path"], self.limit)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await _refuse(send_with_headers, 413 if length.isdigit() else 400)
        if scope["method"] in ("POST", "PUT", "PATCH"):
            chunks, total = [], 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                total += len(chunk)
                if total > limit:
                    return await _refuse(send_with_headers, 413)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            body, replayed = b"".join(chunks), False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            return await self.app(scope, replay, send_with_headers)
        await self.app(scope, receive, send_with_headers)


async def _refuse(send, status: int) -> None:
    detail = {413: "request body too large", 400: "invalid Content-Length"}[status]
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- app


def create_app(store: QueueStore, *, max_body_bytes: int = 64 * 1024, lease_seconds: float = 600,
               gold_rate: float = 0.0, max_leases: int = MAX_LEASES,
               secure_cookies: bool = False, secret: bytes | str | None = None,
               auth_cache_seconds: float = AUTH_CACHE_SECONDS, seed: int | None = None,
               auth_failures: int = AUTH_FAILURES, db_calls: str = "auto") -> FastAPI:
    """The web app over `store`. `secret` signs sessions (default: `resolve_secret` of the
    store's URL); a bearer token checked less than `auth_cache_seconds` ago is not looked
    up again (so a disabled token keeps working that long; 0 turns the cache off).
    `max_leases` caps each annotator's live leases. `seed` makes display orders and gold
    draws reproducible (simulated panels; default: fresh). An IP with `auth_failures`
    failed sign-ins or 401s within a minute gets 429 until the oldest is a minute old.
    `db_calls` "inline" runs the JSON API's store calls on the event loop, "thread" in the
    threadpool, "auto" inline for SQLite (a local file: a call takes well under a
    millisecond and a thread hop costs as much) and threads for a server database, whose
    round trips would otherwise hold the loop (`benchmarks/queue_load.py` measures both)."""
    if db_calls not in DB_CALLS:
        raise ValueError(f"db_calls must be one of {list(DB_CALLS)}, got {db_calls!r}")
    for name, value in (("max_leases", max_leases), ("auth_failures", auth_failures)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if secret is None:
        secret = resolve_secret(getattr(store, "url", None))
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.autoescape = True   # every template, whatever its file name
    templates.env.filters["marks"] = controls.bidi_segments   # `_text.html` renders them

    # redirect_slashes off: Starlette builds that redirect's URL from the request's Host
    # header, so `/label/` with a forged Host sent the browser to another site
    app = FastAPI(title="alignloop labeling queue", docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json", version="1", redirect_slashes=False)
    app.state.store = store
    app.state.queue_web = QueueWeb(
        store=store, templates=templates, lease_seconds=lease_seconds, gold_rate=gold_rate,
        sessions=Sessions(secret.encode() if isinstance(secret, str) else secret,
                          secure_cookies),
        auth_cache_seconds=auth_cache_seconds, max_leases=max_leases,
        failures=Failures(auth_failures),
        inline_db=db_calls == "inline" or (db_calls == "auto" and store.dialect == "sqlite"))
    if seed is not None:
        app.state.queue_web.rng = random.Random(seed)
        app.state.queue_web.seed = seed
    app.add_middleware(_Guard, limit=max_body_bytes or 2**62)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.add_exception_handler(RequestValidationError, _invalid_field)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(QueueError, _queue_error)
    for routes in (routes_api, routes_skip, routes_admin, routes_pages, routes_dashboard):
        app.include_router(routes.router)
    return app


async def _invalid_field(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 `{"detail", "field", "errors"}`, naming the first invalid field ("body" for JSON
    that does not parse)."""
    errors = []
    for e in exc.errors():
        loc = [str(p) for p in e.get("loc", ()) if p != "body"]
        if e.get("type") == "json_invalid":
            loc = []
        errors.append({"field": ".".join(loc) or "body", "message": e.get("msg", "invalid")})
    first = errors[0] if errors else {"field": "body", "message": "invalid"}
    return JSONResponse(status_code=422, content={
        "detail": f"invalid field '{first['field']}': {first['message']}",
        "field": first["field"], "errors": errors})


BODY_PARSE_FAILED = "There was an error parsing the body"
"""FastAPI's 400 for a body its JSON parser gave up on other than by a syntax error (JSON
nested thousands deep: a RecursionError)."""


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """FastAPI's own 400 for an unparseable body answered like every other bad body: the
    422 `{"detail", "field", "errors"}`; any other HTTP error as FastAPI answers it."""
    if exc.status_code == 400 and exc.detail == BODY_PARSE_FAILED:
        message = "the body is not JSON this API can read (nested too deeply?)"
        return JSONResponse(status_code=422, content={
            "detail": f"invalid field 'body': {message}", "field": "body",
            "errors": [{"field": "body", "message": message}]})
    return await http_exception_handler(request, exc)


async def _queue_error(request: Request, exc: QueueError) -> JSONResponse:
    content = {"detail": str(exc), "field": exc.field or None}
    if exc.status == 422:   # the same shape as a validation 422 (`contract.Invalid`)
        content["field"] = exc.field or "body"
        content["errors"] = [{"field": content["field"], "message": str(exc)}]
    return JSONResponse(status_code=exc.status, content=content)


# --------------------------------------------------------------------------- serving


def app_from_env() -> FastAPI:
    """uvicorn factory for `alignloop queue serve --workers N`: the store from
    `ALIGNLOOP_QUEUE_DB`, the app options from `ALIGNLOOP_QUEUE_OPTIONS` (JSON)."""
    store = QueueStore.open(os.environ["ALIGNLOOP_QUEUE_DB"])
    return create_app(store, **json.loads(os.environ.get("ALIGNLOOP_QUEUE_OPTIONS") or "{}"))


class ServerThread:
    """uvicorn serving `app` from a thread on a free loopback port (tests, `queue simulate`,
    benchmarks): `with ServerThread(app) as url: ...`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, **options: Any):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(app, log_level="warning", access_log=False,
                                timeout_keep_alive=30, **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True, name=f"uvicorn:{self.port}")

    def start(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the queue server did not start")
            time.sleep(0.01)
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
