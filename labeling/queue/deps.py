"""What the web app's routers share: the `QueueWeb` context (the store and the app's
settings, kept on `app.state`), signed-cookie sessions, and bearer authentication.

Nothing here is module-level state: `create_app` makes one `QueueWeb` per app, and
every route reaches it through the request (`queue_web`).
"""

from __future__ import annotations

import hashlib
import hmac
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Annotated

from alignloop.labeling.queue.store import AnnotatorAccount, Assignment, QueueStore
from fastapi import Depends, Request
from fastapi.responses import Response
from fastapi.templating import Jinja2Templates
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

COOKIE = "alignloop_session"
SESSION_MAX_AGE = 12 * 3600
TOKEN_CACHE_MAX = 10_000


class Sessions:
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


def new_session(**fields) -> dict:
    """A session with a fresh random id (and the given fields)."""
    return {"sid": secrets.token_urlsafe(18), **fields}


@dataclass
class QueueWeb:
    """One app's store, settings and per-worker caches."""

    store: QueueStore
    sessions: Sessions
    templates: Jinja2Templates
    lease_seconds: float
    gold_rate: float
    auth_cache_seconds: float
    max_leases: int
    # one generator shared by the request threads: its draws are atomic under the GIL
    rng: random.Random = field(default_factory=lambda: random.Random(secrets.randbits(64)))
    # sha256(token) -> (annotator, time.monotonic() until which it is trusted)
    tokens: dict[bytes, tuple[AnnotatorAccount, float]] = field(default_factory=dict)

    def next_item(self, annotator_id: int) -> Assignment | None:
        return self.store.next_item(annotator_id, lease_seconds=self.lease_seconds,
                                    gold_rate=self.gold_rate, rng=self.rng,
                                    max_leases=self.max_leases)

    def signed_in(self, session: dict) -> bool:
        """Whether a signed session cookie still stands on the server: its session has
        not been signed out and its annotator is active (checked on every request)."""
        who = self.store.session_annotator(session["sid"])
        return who is not None and who.id == session.get("aid")


async def queue_web(request: Request) -> QueueWeb:
    """The app's `QueueWeb` (async: a plain function dependency would cost a thread hop)."""
    return request.app.state.queue_web


Web = Annotated[QueueWeb, Depends(queue_web)]


async def bearer(request: Request, web: Web) -> AnnotatorAccount:
    """The annotator of the request's `Authorization: Bearer <token>`, or 401.

    A token known for less than `auth_cache_seconds` skips the database (one query and
    one thread hop per request); the cache key is the token's digest, never the token.
    """
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    key, now = hashlib.sha256(token.encode()).digest(), time.monotonic()
    hit = web.tokens.get(key)
    if hit is not None and hit[1] > now:
        return hit[0]
    annotator = await run_in_threadpool(web.store.authenticate, token)
    if annotator is None:
        web.tokens.pop(key, None)
        raise HTTPException(401, "unknown or disabled token",
                            headers={"WWW-Authenticate": "Bearer"})
    if web.auth_cache_seconds > 0:
        if len(web.tokens) > TOKEN_CACHE_MAX:
            web.tokens.clear()
        web.tokens[key] = (annotator, now + web.auth_cache_seconds)
    return annotator


# As a dependency, authentication runs before the body is validated (401 before 422).
BearerAnnotator = Annotated[AnnotatorAccount, Depends(bearer)]
