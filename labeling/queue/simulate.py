"""Bot annotators: simulated people who label through the real JSON API over HTTP.

Each bot is a thread with its own token and connection. It asks `POST /api/next`
for an item and answers by a latent utility of (prompt, response) with its own
weights (`Persona`), with Bradley-Terry noise: P(a preferred) = sigmoid((u_a - u_b) / T).
Requests are retried on connection errors and 5xx answers (a restarted server is
waited for); every label carries an idempotency key, so a retried submission is
recorded once.

`PANELS` is the one place panels are defined. "demo" uses the demo task's signals
(VADER sentiment and a length penalty, `alignloop.demo_judge`) with weights that
differ per bot, so the panel disagrees systematically, as people do.
"""

from __future__ import annotations

import http.client
import json
import math
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol
from urllib.parse import urlsplit

WORDS_FREE = 40
"""Responses up to this many words pay no length penalty (as in `alignloop.demo_judge`)."""


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
              idempotency_key: str | None = None, comment: str = "") -> tuple[int, dict]:
        """Submit one label: (201 created | 200 replay, {label_id, created})."""
        status, body = self.request("POST", "/api/labels", {
            "item_id": item_id, "lease_id": lease_id, "choice": choice,
            "confidence": confidence, "comment": comment,
            "idempotency_key": idempotency_key or uuid.uuid4().hex})
        if status not in (200, 201):
            raise ApiError(status, body)
        return status, body


# --------------------------------------------------------------------------- personas


@lru_cache(maxsize=65536)
def _sentiment(text: str) -> float:
    from alignloop.demo_judge import sentiment

    return sentiment(text)


class Answerer(Protocol):
    """What a bot asks to label an item: (choice relative to a/b, confidence 1-3)."""

    def answer(self, prompt, a: str, b: str, rng: random.Random) -> tuple[str, int]: ...


@dataclass(frozen=True)
class Persona:
    """One simulated annotator. Utility u(prompt, response) = sentiment_weight x VADER
    sentiment - length_weight x (words beyond WORDS_FREE) / 40. Choices: "both_bad" when
    both utilities are below `bad_below`, "tie" when they are within `tie_margin`, else
    a Bradley-Terry draw with P(a) = sigmoid((u_a - u_b) / temperature)."""

    sentiment_weight: float = 2.0
    length_weight: float = 1.0
    temperature: float = 0.5
    tie_margin: float = 0.02
    bad_below: float = -1.6

    def utility(self, prompt, response: str) -> float:
        words = len(response.split())
        return (self.sentiment_weight * _sentiment(response)
                - self.length_weight * max(0, words - WORDS_FREE) / 40.0)

    def answer(self, prompt, a: str, b: str, rng: random.Random) -> tuple[str, int]:
        """(choice relative to a/b, confidence 1-3)."""
        ua, ub = self.utility(prompt, a), self.utility(prompt, b)
        p_a = 1.0 / (1.0 + math.exp(-max(min((ua - ub) / self.temperature, 50.0), -50.0)))
        confidence = 3 if abs(p_a - 0.5) > 0.35 else 2 if abs(p_a - 0.5) > 0.15 else 1
        if max(ua, ub) < self.bad_below:
            return "both_bad", confidence
        if abs(ua - ub) < self.tie_margin:
            return "tie", 1
        return ("a" if rng.random() < p_a else "b"), confidence


PANELS: dict[str, tuple[Persona, ...]] = {
    # The demo task's annotators: one cares mostly about tone, one mostly about brevity,
    # one in between and noisier. A panel of N bots cycles through these.
    "demo": (
        Persona(sentiment_weight=2.5, length_weight=0.5, temperature=0.4),
        Persona(sentiment_weight=1.0, length_weight=2.0, temperature=0.4),
        Persona(sentiment_weight=1.8, length_weight=1.0, temperature=0.9),
    ),
}


# --------------------------------------------------------------------------- running


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


def run_bot(name: str, url: str, token: str, persona: Answerer, *, seed: int = 0,
            max_labels: int | None = None, stop: threading.Event | None = None,
            on_label: Callable[[dict, str, dict], None] | None = None,
            panel: _Idle | None = None, poll_s: float = 0.1) -> BotReport:
    """Label until nothing is left (204; in a panel: until every bot got one), `max_labels`,
    or `stop`."""
    rng = random.Random(seed)
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
            choice, confidence = persona.answer(item["prompt"], item["a"], item["b"], rng)
            status, body = client.label(item["item_id"], item["lease_id"], choice, confidence,
                                        idempotency_key=f"{name}:{uuid.uuid4().hex}")
            report.labeled += status == 201
            report.replays += status == 200
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


def run_panel(url: str, tokens: Sequence[tuple[str, str]],
              panel: str | Sequence[Answerer] = "demo", *, seed: int = 0,
              max_labels: int | None = None) -> list[BotReport]:
    """Run one bot per (name, token) concurrently and return when every bot has stopped.
    `panel` is a name in `PANELS` (its personas cycle over the bots) or one answerer per
    bot (anything with `answer(prompt, a, b, rng) -> (choice, confidence)`). Bots stop
    together (see `_Idle`): a bot's vote can reopen an item for the others."""
    if isinstance(panel, str):
        if panel not in PANELS:
            raise KeyError(f"unknown panel {panel!r}; known: {sorted(PANELS)}")
        answerers = [PANELS[panel][i % len(PANELS[panel])] for i in range(len(tokens))]
    else:
        answerers = list(panel)
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
