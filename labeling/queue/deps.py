"""What the web app's routers share: the `QueueWeb` context (the store and the app's
settings, kept on `app.state`), signed-cookie sessions, bearer authentication and the
per-IP limit on failed authentication (`Failures`).

Nothing here is module-level state: `create_app` makes one `QueueWeb` per app, and
every route reaches it through the request (`queue_web`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import secrets
import time
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated

from alignloop.labeling.queue.store import AnnotatorAccount, Assignment, QueueStore
from fastapi import Depends, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.templating import Jinja2Templates
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

COOKIE = "alignloop_session"
# The sign-in form's own cookie (its CSRF session). Kept apart from COOKIE so that a GET
# arriving without the session cookie (a cross-site link: SameSite=Strict withholds it)
# never overwrites, and so signs out, the session the browser holds.
LOGIN_COOKIE = "alignloop_login"
SESSION_MAX_AGE = 12 * 3600
LOGIN_MAX_AGE = 3600
TOKEN_CACHE_MAX = 10_000
AUTH_FAILURES = 20          # failed sign-ins / 401s per IP within AUTH_FAILURE_WINDOW ...
AUTH_FAILURE_WINDOW = 60.0  # ... seconds, after which that IP gets 429 until the oldest ages out


class Sessions:
    """Signed-cookie sessions, CSRF tokens and display-order signatures from one secret."""

    def __init__(self, secret: bytes, secure: bool):
        self.serializer = URLSafeTimedSerializer(secret, salt="alignloop.queue.session")
        self.key = hashlib.sha256(b"alignloop.queue.hmac:" + secret).digest()
        self.secure = secure

    def read(self, request: Request, cookie: str = COOKIE) -> dict | None:
        raw = request.cookies.get(cookie)
        if not raw:
            return None
        try:
            data = self.serializer.loads(
                raw, max_age=SESSION_MAX_AGE if cookie == COOKIE else LOGIN_MAX_AGE)
        except BadSignature:
            return None
        return data if isinstance(data, dict) and isinstance(data.get("sid"), str) else None

    def write(self, response: Response, data: dict, cookie: str = COOKIE) -> None:
        age = SESSION_MAX_AGE if cookie == COOKIE else LOGIN_MAX_AGE
        response.set_cookie(cookie, self.serializer.dumps(data), max_age=age,
                            path="/", httponly=True, samesite="strict", secure=self.secure)

    def clear(self, response: Response, cookie: str = COOKIE) -> None:
        response.delete_cookie(cookie, path="/", httponly=True, samesite="strict",
                               secure=self.secure)

    def _mac(self, *parts: str) -> str:
        return hmac.new(self.key, "\x1f".join(parts).encode(), hashlib.sha256).hexdigest()

    def csrf(self, session: dict) -> str:
        return self._mac("csrf", session["sid"])

    def csrf_ok(self, session: dict | None, token: object) -> bool:
        return session is not None and _same(self.csrf(session), token)

    def order_sig(self, lease_id: str, item_id: str, order: str) -> str:
        return self._mac("order", lease_id, item_id, order)

    def order_ok(self, lease_id: str, item_id: str, order: str, sig: object) -> bool:
        """Whether `sig` is the `order_sig` of the form's lease, item and order."""
        return order in ("ab", "ba") and _same(self.order_sig(lease_id, item_id, order), sig)


def _same(expected: str, given: object) -> bool:
    """A constant-time comparison with an untrusted form value (which may be anything: a
    non-ASCII string would make `hmac.compare_digest` raise)."""
    return isinstance(given, str) and given.isascii() and hmac.compare_digest(expected, given)


def new_session(**fields) -> dict:
    """A session with a fresh random id (and the given fields)."""
    return {"sid": secrets.token_urlsafe(18), **fields}


class Failures:
    """Failed authentications per client IP in a sliding window (per worker, in memory):
    after `limit` within `window` seconds the IP is refused (429, Retry-After) until the
    oldest failure ages out, so guessing tokens costs `window / limit` seconds a guess.
    Successes are not counted and cost one dict lookup. The address is uvicorn's: the
    peer, or `X-Forwarded-For` from a proxy it trusts (by default only one on loopback).

    A check runs before the database lookup and a failure is known only after it, so a
    burst of guesses sent at once would all pass the check. `attempt` lets at most
    `limit` lookups of one address run at a time, and once the address has a failure on
    record, counts the lookups still running as failures to come: a burst gets as many
    guesses as one sent one by one. Clients with no failure are never refused by it,
    only made to wait their turn."""

    MAX_IPS = 10_000

    def __init__(self, limit: int = AUTH_FAILURES, window: float = AUTH_FAILURE_WINDOW):
        self.limit, self.window = limit, window
        self.seen: dict[str, deque[float]] = {}
        self.gates: dict[str, _Gate] = {}

    @asynccontextmanager
    async def attempt(self, ip: str):
        """Hold one of the address's `limit` lookup slots (waiting for one if need be)
        for an authentication; yields the seconds to wait before trying (0: go on)."""
        gate = self.gates.get(ip)
        if gate is None:
            gate = self.gates[ip] = _Gate(asyncio.Semaphore(max(1, self.limit)))
        gate.users += 1
        try:
            async with gate.slots:
                gate.running += 1
                try:
                    yield self.retry_after(ip, running=gate.running - 1)
                finally:
                    gate.running -= 1
        finally:
            gate.users -= 1
            if gate.users == 0:
                del self.gates[ip]

    def retry_after(self, ip: str, running: int = 0) -> int:
        """Seconds until `ip` may try again (0: now); `running`: its other lookups under
        way, which count once it has a failure on record."""
        times = self.seen.get(ip)
        if not times:
            return 0
        now = time.monotonic()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times or len(times) + running < self.limit:
            return 0
        if len(times) < self.limit:
            return 1          # the lookups under way may fill the limit: ask again soon
        return max(1, int(times[0] + self.window - now + 0.999))

    def failed(self, ip: str) -> None:
        if len(self.seen) >= self.MAX_IPS and ip not in self.seen:
            self._make_room()
        self.seen.setdefault(ip, deque(maxlen=self.limit)).append(time.monotonic())

    def _make_room(self) -> None:
        """Forget the addresses whose failures all aged out; if that frees nothing, the
        one tracked longest (never everyone at once: that would reset every counter)."""
        old = time.monotonic() - self.window
        for ip in [ip for ip, times in self.seen.items() if not times or times[-1] <= old]:
            del self.seen[ip]
        if len(self.seen) >= self.MAX_IPS:
            del self.seen[next(iter(self.seen))]

    @staticmethod
    def refuse(wait: int) -> None:
        """Raise 429 when `wait` (from `retry_after` or `attempt`) is not 0."""
        if wait:
            raise HTTPException(429, f"too many failed sign-ins from this address; try again "
                                     f"in {wait} s", headers={"Retry-After": str(wait)})


@dataclass
class _Gate:
    """One address's lookup slots, the requests using them, and the lookups running."""

    slots: asyncio.Semaphore
    users: int = 0
    running: int = 0


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "-"


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
    # a seeded app (a simulation) keys each lease's draws instead (`QueueStore.next_item`)
    seed: int | None = None
    # sha256(token) -> (annotator, time.monotonic() until which it is trusted)
    tokens: dict[bytes, tuple[AnnotatorAccount, float]] = field(default_factory=dict)
    failures: Failures = field(default_factory=Failures)
    # run the JSON API's store calls on the event loop instead of the threadpool (`call`)
    inline_db: bool = False

    async def call(self, fn, /, *args, **kwargs):
        """Run a store call of a request: inline on the event loop when `inline_db`, else
        in the threadpool. Inline saves the two thread switches of a hop, which cost as
        much CPU as a label's SQL on SQLite (`benchmarks/queue_profile.py`), but holds the
        worker's loop for the call's length: right for a local database whose calls take
        well under a millisecond, wrong for one across a network (see `create_app`)."""
        if self.inline_db:
            return fn(*args, **kwargs)
        return await run_in_threadpool(fn, *args, **kwargs)

    def next_item(self, annotator_id: int) -> Assignment | None:
        return self.store.next_item(annotator_id, lease_seconds=self.lease_seconds,
                                    gold_rate=self.gold_rate, rng=self.rng,
                                    max_leases=self.max_leases, keyed_seed=self.seed)

    def session_account(self, session: dict) -> AnnotatorAccount | None:
        """The annotator of a signed session cookie as the store has it now (its role
        included), or None when the session no longer stands on the server: signed out,
        expired, or its annotator disabled (checked on every request). Pages take the
        name and role from here, never from the cookie: `queue set-role` shows in an open
        session's next page, nav links included, without signing anyone out."""
        who = self.store.session_annotator(session["sid"])
        return who if who is not None and who.id == session.get("aid") else None

    def signed_in(self, session: dict) -> bool:
        """Whether a signed session cookie still stands on the server (`session_account`)."""
        return self.session_account(session) is not None


async def queue_web(request: Request) -> QueueWeb:
    """The app's `QueueWeb` (async: a plain function dependency would cost a thread hop)."""
    return request.app.state.queue_web


Web = Annotated[QueueWeb, Depends(queue_web)]


# Declares the `bearer` security scheme in /openapi.json; the checks are `bearer`'s own.
_SCHEME = HTTPBearer(auto_error=False, description="an annotator's token "
                     "(`alignloop queue add-annotator`)")


async def bearer(request: Request, web: Web,
                 credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_SCHEME)]
                 ) -> AnnotatorAccount:
    """The annotator of the request's `Authorization: Bearer <token>`, or 401 (429 for an
    IP with too many failures, see `Failures`).

    A token known for less than `auth_cache_seconds` skips the database (one query and
    one thread hop per request); the cache key is the token's digest, never the token.
    """
    token = credentials.credentials.strip() if credentials else ""
    if not token:
        web.failures.refuse(web.failures.retry_after(client_ip(request)))
        web.failures.failed(client_ip(request))
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    key, now = hashlib.sha256(token.encode()).digest(), time.monotonic()
    hit = web.tokens.get(key)
    if hit is not None and hit[1] > now:
        return hit[0]
    ip = client_ip(request)
    async with web.failures.attempt(ip) as wait:
        web.failures.refuse(wait)
        annotator = await run_in_threadpool(web.store.authenticate, token)
        if annotator is None:
            web.tokens.pop(key, None)
            web.failures.failed(ip)
            raise HTTPException(401, "unknown or disabled token",
                                headers={"WWW-Authenticate": "Bearer"})
    if web.auth_cache_seconds > 0:
        if len(web.tokens) > TOKEN_CACHE_MAX:
            web.tokens.clear()
        web.tokens[key] = (annotator, now + web.auth_cache_seconds)
    return annotator


# As a dependency, authentication runs before the body is validated (401 before 422).
BearerAnnotator = Annotated[AnnotatorAccount, Depends(bearer)]
