"""The labeling web app: a server-rendered page for people and a JSON API for scripts and bots.

The app keeps no state of its own (only the store does), so several workers or hosts
can serve one queue:

- Sessions are signed cookies (itsdangerous): a random session id, the annotator and
  the lease on screen. HttpOnly, SameSite=Strict, Secure when `secure_cookies`; they
  expire after `SESSION_MAX_AGE` and end at once when the annotator is disabled. The
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
                      or 204 when nothing is left for this annotator.
                      `a`/`b` are the item's own responses; `display_order` ("ab" or "ba")
                      is the order a client showing them to a person should use (left to
                      right). `prompt` is text or a list of {role, content} messages.
    POST /api/labels  {item_id, lease_id, choice, confidence, idempotency_key, comment?}
                      `choice` is "a", "b", "tie" or "both_bad", ALWAYS relative to the
                      `a`/`b` fields of /api/next, whatever order they were shown in;
                      `confidence` 1-3. 201 {label_id, created: true} for a new label,
                      200 {label_id, created: false} for a replay of the same
                      idempotency key (a retried request records one label).
    GET  /api/status  admin only (403 otherwise): `QueueStore.status()`.
    GET  /healthz     200 {"ok": true} when the database answers, 503 otherwise.

A bearer token is looked up (constant-time, in the store) at most every
`auth_cache_seconds` per worker; a disabled token stops working within that time.
Errors are JSON `{"detail": ...}`: 401 missing or unknown token; 403 not an admin;
413 body over `max_body_bytes`; 422 invalid field, with `field` naming it (also in the
detail text); the store's `QueueError.status` (404 unknown item or lease, 409 conflict).
"""

from __future__ import annotations

import hashlib
import hmac
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
from typing import Any, Literal

from alignloop.labeling.queue.store import Annotator, QueueError, QueueStore
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from itsdangerous import BadSignature, URLSafeTimedSerializer
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

log = logging.getLogger("alignloop.queue")

HERE = Path(__file__).parent
COOKIE = "alignloop_session"
SESSION_MAX_AGE = 12 * 3600
AUTH_CACHE_SECONDS = 5.0
SECRET_ENV = "ALIGNLOOP_QUEUE_SECRET"
SLOTS = ("left", "right", "tie", "both_bad")
NOTES = {"conflict": "That item was already settled; here is the next one.",
         "gone": "That item is no longer in the queue; here is the next one."}
HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
           (b"referrer-policy", b"no-referrer"),
           (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'; "
                                        b"form-action 'self'; base-uri 'none'")]


class LabelIn(BaseModel):
    """The body of POST /api/labels."""

    item_id: str = Field(min_length=1, max_length=200)
    lease_id: str = Field(min_length=1, max_length=200)
    choice: Literal["a", "b", "tie", "both_bad"]
    confidence: int = Field(ge=1, le=3)
    idempotency_key: str = Field(min_length=1, max_length=200)
    comment: str = Field(default="", max_length=4000)


# --------------------------------------------------------------------------- secret


def resolve_secret(url: str | None = None) -> bytes:
    """The key that signs sessions: `ALIGNLOOP_QUEUE_SECRET` if set; for a SQLite file,
    a random key kept in `<db file>.secret` (mode 0600, created once, shared by every
    worker on that file); otherwise a random key for this process only (sessions end
    when it restarts, and several processes need the environment variable)."""
    if os.environ.get(SECRET_ENV):
        return os.environ[SECRET_ENV].encode()
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
        return path.read_text().strip().encode()
    log.warning("no %s set: sessions are signed with a key of this process only", SECRET_ENV)
    return secrets.token_bytes(32)


# --------------------------------------------------------------------------- ASGI guard


class _Guard:
    """Pure ASGI middleware: refuses request bodies over `limit` bytes with 413, judged by
    Content-Length and by counting what is actually streamed (the body is buffered, at
    most `limit` bytes, before the app runs), and adds security headers to responses."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                extra = HEADERS if scope["path"].startswith("/static/") else [
                    *HEADERS, (b"cache-control", b"no-store")]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await _refuse(send_with_headers, 413 if length.isdigit() else 400)
        if scope["method"] in ("POST", "PUT", "PATCH"):
            chunks, total = [], 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                total += len(chunk)
                if total > self.limit:
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


# --------------------------------------------------------------------------- sessions


class _Sessions:
    """Signed-cookie sessions, CSRF tokens and display-order signatures from one secret."""

    def __init__(self, secret: bytes, secure: bool):
        self.serializer = URLSafeTimedSerializer(secret, salt="alignloop.queue.session")
        self.key = hashlib.sha256(b"alignloop.queue.hmac:" + secret).digest()
        self.secure = secure

    def read(self, request: Request) -> dict | None:
        raw = request.cookies.get(COOKIE)
        if not raw:
            return None
        try:
            data = self.serializer.loads(raw, max_age=SESSION_MAX_AGE)
        except BadSignature:
            return None
        return data if isinstance(data, dict) and isinstance(data.get("sid"), str) else None

    def write(self, response: Response, data: dict) -> None:
        response.set_cookie(COOKIE, self.serializer.dumps(data), max_age=SESSION_MAX_AGE,
                            path="/", httponly=True, samesite="strict", secure=self.secure)

    def clear(self, response: Response) -> None:
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict",
                               secure=self.secure)

    def _mac(self, *parts: str) -> str:
        return hmac.new(self.key, "\x1f".join(parts).encode(), hashlib.sha256).hexdigest()

    def csrf(self, session: dict) -> str:
        return self._mac("csrf", session["sid"])

    def csrf_ok(self, session: dict | None, token: object) -> bool:
        return (session is not None and isinstance(token, str)
                and hmac.compare_digest(self.csrf(session), token))

    def order_sig(self, lease_id: str, item_id: str, order: str) -> str:
        return self._mac("order", lease_id, item_id, order)


def _new_session(**fields) -> dict:
    return {"sid": secrets.token_urlsafe(18), **fields}


def _turns(prompt) -> list[dict]:
    """A prompt as turns for the template: chat messages, or one block of plain text."""
    if isinstance(prompt, str):
        return [{"role": "prompt", "css": "user", "content": prompt}]
    out = []
    for m in prompt:
        role = str(m.get("role", "user")) if isinstance(m, dict) else "user"
        content = m.get("content", "") if isinstance(m, dict) else str(m)
        css = role if role in ("system", "user", "assistant") else "other"
        out.append({"role": role, "css": css, "content": str(content)})
    return out


# --------------------------------------------------------------------------- app


def create_app(store: QueueStore, *, max_body_bytes: int = 64 * 1024, lease_seconds: float = 600,
               gold_rate: float = 0.0, secure_cookies: bool = False,
               secret: bytes | str | None = None,
               auth_cache_seconds: float = AUTH_CACHE_SECONDS) -> FastAPI:
    """The web app over `store`. `secret` signs sessions (default: `resolve_secret` of the
    store's URL); a bearer token checked less than `auth_cache_seconds` ago is not looked
    up again (so a disabled token keeps working that long; 0 turns the cache off)."""
    if secret is None:
        secret = resolve_secret(getattr(store, "url", None))
    sessions = _Sessions(secret.encode() if isinstance(secret, str) else secret, secure_cookies)
    rng = random.Random(secrets.randbits(64))
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.autoescape = True   # every template, whatever its file name

    app = FastAPI(title="alignloop labeling queue", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.store = store
    app.add_middleware(_Guard, limit=max_body_bytes or 2**62)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def next_item(annotator_id: int):
        # one generator shared by the request threads: its draws are atomic under the GIL
        return store.next_item(annotator_id, lease_seconds=lease_seconds, gold_rate=gold_rate,
                               rng=rng)

    # ----------------------------------------------------------------- errors

    @app.exception_handler(RequestValidationError)
    async def invalid_field(request: Request, exc: RequestValidationError):
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

    @app.exception_handler(QueueError)
    async def queue_error(request: Request, exc: QueueError):
        return JSONResponse(status_code=exc.status,
                            content={"detail": str(exc), "field": exc.field or None})

    # ----------------------------------------------------------------- JSON API

    tokens: dict[bytes, tuple[Annotator, float]] = {}

    async def bearer(request: Request) -> Annotator:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        # A token known for less than auth_cache_seconds skips the database (one query and
        # one thread hop per request); the key is the token's digest, never the token.
        key, now = hashlib.sha256(token.encode()).digest(), time.monotonic()
        hit = tokens.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        annotator = await run_in_threadpool(store.authenticate, token)
        if annotator is None:
            tokens.pop(key, None)
            raise HTTPException(401, "unknown or disabled token",
                                headers={"WWW-Authenticate": "Bearer"})
        if auth_cache_seconds > 0:
            if len(tokens) > 10_000:
                tokens.clear()
            tokens[key] = (annotator, now + auth_cache_seconds)
        return annotator

    # authentication as a dependency: it runs before the body is validated (401 before 422)
    auth = Depends(bearer)

    @app.post("/api/next")
    def api_next(annotator: Annotator = auth):
        a = next_item(annotator.id)
        if a is None:
            return Response(status_code=204)
        it = a.item
        return JSONResponse({"item_id": it.item_id, "lease_id": a.lease_id, "round": it.round,
                             "prompt": it.prompt, "a": it.a, "b": it.b,
                             "display_order": a.display_order, "expires_at": a.expires_at})

    @app.post("/api/labels")
    def api_labels(body: LabelIn, annotator: Annotator = auth):
        r = store.record_label(annotator.id, item_id=body.item_id, lease_id=body.lease_id,
                               choice=body.choice, confidence=body.confidence,
                               idempotency_key=body.idempotency_key, comment=body.comment)
        return JSONResponse(status_code=201 if r.created else 200,
                            content={"label_id": r.label_id, "created": r.created})

    @app.get("/api/status")
    def api_status(annotator: Annotator = auth):
        if not annotator.is_admin:
            raise HTTPException(403, "admin only")
        return store.status()

    @app.get("/healthz")
    def healthz():
        try:
            ping = getattr(store, "ping", None)
            ping() if ping else store.label_count(-1)
        except Exception as e:  # noqa: BLE001 (any database failure is "not healthy")
            log.warning("health check failed: %s", e)
            return JSONResponse(status_code=503, content={"ok": False})
        return {"ok": True}

    # ----------------------------------------------------------------- web page

    def page(request: Request, template: str, status: int = 200, **context) -> Response:
        return templates.TemplateResponse(request, template, context, status_code=status)

    def forbidden(request: Request) -> Response:
        return page(request, "error.html", 403, title="Form refused",
                    message="This form has expired or did not come from this site. "
                            "Reload the page and try again.")

    def active(annotator_id: int) -> bool:
        """A web session outlives nothing: a disabled annotator is signed out at once."""
        return any(a.id == annotator_id for a in store.annotators())

    def signed_out() -> Response:
        response = RedirectResponse("/", status_code=303)
        sessions.clear(response)
        return response

    @app.get("/")
    async def index(request: Request):
        session = sessions.read(request)
        if session and session.get("aid"):
            return RedirectResponse("/label", status_code=303)
        fresh = session is None
        session = session or _new_session()
        response = page(request, "index.html", csrf=sessions.csrf(session), error="")
        if fresh:
            sessions.write(response, session)
        return response

    @app.post("/login")
    async def login(request: Request):
        form = await request.form()
        session = sessions.read(request)
        if not sessions.csrf_ok(session, form.get("csrf")):
            return forbidden(request)
        token = str(form.get("token") or "").strip()
        annotator = await run_in_threadpool(store.authenticate, token) if token else None
        if annotator is None:
            return page(request, "index.html", 401, csrf=sessions.csrf(session),
                        error="That token is not valid.")
        response = RedirectResponse("/label", status_code=303)
        # a new session id at sign-in: a session id planted before it is worth nothing
        sessions.write(response, _new_session(aid=annotator.id, name=annotator.name,
                                              role=annotator.role))
        return response

    @app.post("/logout")
    async def logout(request: Request):
        form = await request.form()
        if not sessions.csrf_ok(sessions.read(request), form.get("csrf")):
            return forbidden(request)
        return signed_out()

    @app.get("/label")
    async def label_page(request: Request, note: str = ""):
        session = sessions.read(request)
        if not session or not session.get("aid"):
            return RedirectResponse("/", status_code=303)
        aid = session["aid"]

        def work():
            if not active(aid):
                return None
            if session.get("lease"):   # a reload: hand back the item on screen before
                store.release(aid, session["lease"])
            return next_item(aid), store.progress(aid)

        got = await run_in_threadpool(work)
        if got is None:
            return signed_out()
        assignment, progress = got
        common = {"csrf": sessions.csrf(session), "name": session.get("name", ""),
                  "labeled": progress.get("labeled", 0), "note": NOTES.get(note, "")}
        if assignment is None:
            response = page(request, "done.html", **common)
            session = {k: v for k, v in session.items() if k != "lease"}
        else:
            it, order = assignment.item, assignment.display_order
            left, right = (it.a, it.b) if order == "ab" else (it.b, it.a)
            response = page(request, "label.html", **common, turns=_turns(it.prompt),
                            left=left, right=right, item_id=it.item_id,
                            lease_id=assignment.lease_id, display_order=order,
                            order_sig=sessions.order_sig(assignment.lease_id, it.item_id, order),
                            idempotency_key=f"web-{uuid.uuid4().hex}")
            session = {**session, "lease": assignment.lease_id}
        sessions.write(response, session)
        return response

    @app.post("/label")
    async def label_submit(request: Request):
        form = await request.form()
        session = sessions.read(request)
        if not sessions.csrf_ok(session, form.get("csrf")):
            return forbidden(request)
        if not session.get("aid"):
            return RedirectResponse("/", status_code=303)
        f = {k: str(form.get(k) or "") for k in ("item_id", "lease_id", "display_order",
                                                   "order_sig", "slot", "confidence",
                                                   "comment", "idempotency_key")}
        if (f["display_order"] not in ("ab", "ba") or not hmac.compare_digest(
                f["order_sig"], sessions.order_sig(f["lease_id"], f["item_id"],
                                                   f["display_order"]))):
            return page(request, "error.html", 400, title="Form altered",
                        message="The form did not match the item shown. Reload the page.")
        if f["slot"] not in SLOTS or f["confidence"] not in ("1", "2", "3"):
            return page(request, "error.html", 400, title="Incomplete answer",
                        message="Pick one of the four answers and a confidence of 1 to 3.")
        choice = {"left": f["display_order"][0], "right": f["display_order"][1]}.get(
            f["slot"], f["slot"])
        if not await run_in_threadpool(active, session["aid"]):
            return signed_out()
        try:
            await run_in_threadpool(
                lambda: store.record_label(
                    session["aid"], item_id=f["item_id"], lease_id=f["lease_id"], choice=choice,
                    confidence=int(f["confidence"]),
                    idempotency_key=f["idempotency_key"] or f"web-{uuid.uuid4().hex}",
                    comment=f["comment"][:4000]))
        except QueueError as e:
            if e.status in (404, 409):
                return RedirectResponse(f"/label?note={'gone' if e.status == 404 else 'conflict'}",
                                        status_code=303)
            return page(request, "error.html", 400, title="Not recorded", message=str(e))
        response = RedirectResponse("/label", status_code=303)
        sessions.write(response, {k: v for k, v in session.items() if k != "lease"})
        return response

    return app


# --------------------------------------------------------------------------- serving


def app_from_env():
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
