"""Bot annotators: simulated people who label through the real JSON API over HTTP.

Each bot is a thread with its own token and connection. It asks `POST /api/next`
for an item and asks its `Answerer` for the answer. Requests are retried on
connection errors and 5xx answers (a restarted server is waited for); every label
carries an idempotency key, so a retried submission is recorded once.

The answerers come from the caller: the demo's panel of simulated annotators is
`alignloop.demo.panel` (bots over it: `alignloop.demo.labelers.panel_answerers`),
so the queue's bots and the loop's simulated labels are the same people.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit


class ApiError(Exception):
    """An answer of the API that a retry cannot fix (4xx), with its status and body."""

    def __init__(self, status: int, body: object):
        super().__init__(f"HTTP {status}: {body}")
        self.status, self.body = status, body


class ApiClient:
    """The queue's JSON API over one keep-alive HTTP connection; one per thread.

    Connection errors and 5xx answers are retried with exponential backoff for up to
    `retry_for` seconds (a server being restarted is waited for)."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0, retry_for: float = 30.0):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.timeout, self.retry_for = timeout, retry_for
        self.conn: http.client.HTTPConnection | None = None
        self.retries = 0

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(self, method: str, path: str, body: object = None) -> tuple[int, object]:
        """(status, decoded JSON or None); retries as described above."""
        payload = None if body is None else json.dumps(body).encode()
        deadline, delay = time.monotonic() + self.retry_for, 0.02
        while True:
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                self.conn.request(method, path, body=payload, headers=self.headers)
                response = self.conn.getresponse()
                data = response.read()
                if response.getheader("connection", "").lower() == "close":
                    self.close()
                if response.status < 500:
                    return response.status, json.loads(data) if data else None
                error: Exception = ApiError(response.status, data[:200])
            except (OSError, http.client.HTTPException) as e:
                self.close()
                error = e
            if time.monotonic() + delay > deadline:
                raise error
            self.retries += 1
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def next(self) -> dict | None:
        """The next item with its lease, or None when nothing is left (204)."""
        status, body = self.request("POST", "/api/next")
        if status == 204:
            return None
        if status != 200:
            raise ApiError(status, body)
        return body

    def label(self, item_id: str, lease_id: str, choice: str, confidence: int = 2, *,
              idempotency_key: str | None = None, comment: str = "",
              next: bool = False) -> tuple[int, dict]:
        """Submit one label: (201 created | 200 replay, {label_id, created}); with `next`,
        the answer's `next` is the next lease (None when nothing is left), as from
        `next()`, in the same request."""
        payload = {"item_id": item_id, "lease_id": lease_id, "choice": choice,
                   "confidence": confidence, "comment": comment,
                   "idempotency_key": idempotency_key or uuid.uuid4().hex}
        status, body = self.request("POST", "/api/labels", {**payload, "next": True}
                                    if next else payload)
        if status not in (200, 201):
            raise ApiError(status, body)
        return status, body


# --------------------------------------------------------------------------- running


class Answerer(Protocol):
    """What a bot asks to label an item: (choice relative to a/b, confidence 1-3). `rng` is
    drawn for this bot and this item alone (`item_rng`)."""

    def answer(self, prompt, a: str, b: str, rng: random.Random) -> tuple[str, int]: ...


@dataclass
class BotReport:
    name: str
    labeled: int = 0
    replays: int = 0
    retries: int = 0
    errors: list[str] = field(default_factory=list)


class _Idle:
    """Which bots of a panel last heard "nothing left" (204). One bot's vote can make an item
    need more votes (its votes disagree), so a bot that got a 204 stops only once every bot
    of the panel has got one since its last label; until then it polls again."""

    def __init__(self, n: int):
        self.lock, self.idle, self.n = threading.Lock(), set(), n

    def set(self, name: str, idle: bool) -> bool:
        """Record the bot's state; True when every bot is idle."""
        with self.lock:
            (self.idle.add if idle else self.idle.discard)(name)
            return len(self.idle) == self.n


def item_rng(seed: int, bot: str, item_id: str) -> random.Random:
    """The random draws of one bot on one item: they depend only on the seed, the bot and
    the item (a string seed is hashed with SHA-512, the same in every process), so what a
    simulated annotator votes does not depend on which items it happened to get first."""
    return random.Random(f"{seed}:{bot}:{item_id}")


def _answer(client: ApiClient, name: str, answerer: Answerer, item: dict, seed: int,
            report: BotReport) -> tuple[str, dict]:
    """Answer one leased item and submit the label (keyed by the lease: a retried
    submission is recorded once); count it in `report`. Returns (choice, response body)."""
    choice, confidence = answerer.answer(item["prompt"], item["a"], item["b"],
                                         item_rng(seed, name, item["item_id"]))
    status, body = client.label(item["item_id"], item["lease_id"], choice, confidence,
                                idempotency_key=f"{name}:{item['lease_id']}")
    report.labeled += status == 201
    report.replays += status == 200
    return choice, body


def run_bot(name: str, url: str, token: str, answerer: Answerer, *, seed: int = 0,
            max_labels: int | None = None, stop: threading.Event | None = None,
            on_label: Callable[[dict, str, dict], None] | None = None,
            panel: _Idle | None = None, poll_s: float = 0.1) -> BotReport:
    """Label until nothing is left (204; in a panel: until every bot got one), `max_labels`,
    or `stop`."""
    client = ApiClient(url, token)
    report = BotReport(name)
    try:
        while (max_labels is None or report.labeled < max_labels) and not (stop and stop.is_set()):
            if panel is not None:
                panel.set(name, False)
            item = client.next()
            if item is None:
                if panel is None or panel.set(name, True):
                    break
                time.sleep(poll_s)
                continue
            choice, body = _answer(client, name, answerer, item, seed, report)
            if on_label:
                on_label(item, choice, body)
    except Exception as e:  # noqa: BLE001 (reported to the caller, who decides)
        report.errors.append(f"{type(e).__name__}: {e}")
    finally:
        if panel is not None:
            panel.set(name, True)   # a bot that stopped holds no lease the others wait for
        report.retries = client.retries
        client.close()
    return report


def run_panel(url: str, tokens: Sequence[tuple[str, str]], answerers: Sequence[Answerer], *,
              seed: int = 0, max_labels: int | None = None) -> list[BotReport]:
    """Run one bot per (name, token) concurrently, bot i answering with `answerers[i]`, and
    return when every bot has stopped. Bots stop together (see `_Idle`): a bot's vote can
    reopen an item for the others."""
    answerers = list(answerers)
    if len(answerers) != len(tokens):
        raise ValueError(f"{len(answerers)} answerers for {len(tokens)} tokens")
    reports: list[BotReport | None] = [None] * len(tokens)
    idle = _Idle(len(tokens))

    def work(i: int, name: str, token: str) -> None:
        reports[i] = run_bot(name, url, token, answerers[i], seed=seed + i,
                             max_labels=max_labels, panel=idle)

    threads = [threading.Thread(target=work, args=(i, name, token), name=f"bot:{name}")
               for i, (name, token) in enumerate(tokens)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in reports if r is not None]


def run_panel_in_turn(url: str, tokens: Sequence[tuple[str, str]],
                      answerers: Sequence[Answerer], *, seed: int = 0,
                      start: int = 0) -> list[BotReport]:
    """The bots take turns, one item each in a fixed order, through the same JSON API, until
    a whole turn finds nothing left. Which bot gets which item, and what it answers, then
    depend only on the queue and the seed: a simulated round is the same run to run (a
    concurrent panel, `run_panel`, is what load tests want instead). `start`: the first
    turn begins at that bot (a resumed turn, whose earlier bots labeled in it)."""
    if len(answerers) != len(tokens):
        raise ValueError(f"{len(answerers)} answerers for {len(tokens)} tokens")
    if not 0 <= start < len(tokens):
        raise ValueError(f"start {start} is not a bot of the {len(tokens)}")
    clients = [ApiClient(url, token) for _, token in tokens]
    reports = [BotReport(name) for name, _ in tokens]
    try:
        busy, first = True, start
        while busy:
            busy = first > 0            # a resumed turn goes on into the next one
            for (name, _), client, answerer, report in list(zip(
                    tokens, clients, answerers, reports, strict=True))[first:]:
                item = client.next()
                if item is None:
                    continue
                busy = True
                _answer(client, name, answerer, item, seed, report)
            first = 0
    finally:
        for client, report in zip(clients, reports, strict=True):
            report.retries = client.retries
            client.close()
    return reports
