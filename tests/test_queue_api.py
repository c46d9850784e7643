"""The queue's JSON API over real HTTP (uvicorn on loopback, a real SQLite or PostgreSQL
store): auth and validation errors, idempotent submissions, many concurrent clients,
and a server killed and restarted in the middle of the load."""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from alignloop.labeling.aggregate import CHOICES
from alignloop.labeling.handoff import QueueItem
from alignloop.labeling.queue.simulate import ApiClient, ApiError
from alignloop.labeling.queue.store import QueueStore

from .queue_helpers import disable, label_count, pending


def _items(n: int, *, votes: int = 1, prefix: str = "it", prompt: str = "Say hi.") -> list[QueueItem]:
    return [QueueItem(f"{prefix}{i:05d}", 0, prompt, f"response a {i}", f"response b {i}",
                      votes_required=votes, max_votes=votes) for i in range(n)]


def _call(url: str, method: str, path: str, *, token: str | None = None, body=None,
          raw: bytes | None = None, headers: dict | None = None) -> tuple[int, object]:
    port = int(url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    h = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    conn.request(method, path, body=data, headers=h)
    r = conn.getresponse()
    payload = r.read()
    conn.close()
    return r.status, (json.loads(payload) if payload else None)


@pytest.fixture
def queue(tmp_path, serve_queue):
    store = QueueStore.open(tmp_path)
    tokens = {"ann": store.add_annotator("ann"), "admin": store.add_annotator("boss", "admin")}
    url = serve_queue(store, max_body_bytes=4096, auth_cache_seconds=0.3)
    yield store, url, tokens
    store.close()


def test_missing_or_wrong_token_is_401_and_annotator_on_status_is_403(queue):
    store, url, tokens = queue
    assert _call(url, "POST", "/api/next")[0] == 401
    assert _call(url, "POST", "/api/next", token="not-a-token")[0] == 401
    assert _call(url, "POST", "/api/next", headers={"Authorization": f"Basic {tokens['ann']}"})[0] == 401
    assert _call(url, "POST", "/api/labels", token="x" * 40, body={})[0] == 401
    assert _call(url, "GET", "/api/status")[0] == 401
    status, body = _call(url, "GET", "/api/status", token=tokens["ann"])
    assert status == 403, body
    status, body = _call(url, "GET", "/api/status", token=tokens["admin"])
    assert status == 200 and body["items"] == 0 and {a["name"] for a in body["annotators"]} == {"ann", "boss"}
    disable(store, "ann")   # a disabled token is refused like an unknown one,
    time.sleep(0.4)                  # once the server's token cache has forgotten it
    assert _call(url, "POST", "/api/next", token=tokens["ann"])[0] == 401


def test_oversized_body_is_413_by_length_and_by_stream(queue):
    store, url, tokens = queue
    big = json.dumps({"item_id": "x", "comment": "y" * 5000}).encode()
    status, body = _call(url, "POST", "/api/labels", token=tokens["ann"], raw=big)
    assert status == 413 and "too large" in body["detail"]
    # chunked: no Content-Length, so the server must count what arrives
    port = int(url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("POST", "/api/labels")
    conn.putheader("Authorization", f"Bearer {tokens['ann']}")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    try:
        for _ in range(10):
            conn.send(b"200\r\n" + b"x" * 512 + b"\r\n")
        conn.send(b"0\r\n\r\n")
    except OSError:
        pass   # the server may answer and close before the whole body is sent
    assert conn.getresponse().status == 413
    conn.close()


def test_invalid_fields_are_422_naming_the_field(queue):
    store, url, tokens = queue
    store.submit(_items(1))
    _, item = _call(url, "POST", "/api/next", token=tokens["ann"])
    good = {"item_id": item["item_id"], "lease_id": item["lease_id"], "choice": "a",
            "confidence": 2, "idempotency_key": "k1"}
    cases = {"choice": {**good, "choice": "left"}, "confidence": {**good, "confidence": 7},
             "idempotency_key": {k: v for k, v in good.items() if k != "idempotency_key"}}
    for field, body in cases.items():
        status, answer = _call(url, "POST", "/api/labels", token=tokens["ann"], body=body)
        assert status == 422, (field, answer)
        assert answer["field"] == field and f"'{field}'" in answer["detail"], answer
    status, answer = _call(url, "POST", "/api/labels", token=tokens["ann"], raw=b"{not json")
    assert status == 422 and answer["field"] == "body"
    # JSON nested past the parser's recursion limit: FastAPI's own 400, answered as a 422 too
    deep = b"[" * 2000 + b"]" * 2000
    status, answer = _call(url, "POST", "/api/labels", token=tokens["ann"], raw=deep)
    assert status == 422 and answer["field"] == "body" and "nested too deeply" in answer["detail"]
    status, answer = _call(url, "GET", "/api/no-such-route", token=tokens["ann"])
    assert status == 404 and answer == {"detail": "Not Found"}      # other errors as before
    # the store's own checks and statuses come through too
    status, answer = _call(url, "POST", "/api/labels", token=tokens["ann"],
                           body={**good, "item_id": "no-such-item"})
    assert status == 404 and answer["field"] == "item_id"
    assert label_count(store, 0) == 0


def test_empty_queue_is_204_and_healthz(queue):
    store, url, tokens = queue
    assert _call(url, "POST", "/api/next", token=tokens["ann"]) == (204, None)
    assert _call(url, "GET", "/healthz") == (200, {"ok": True})


def test_next_and_label_map_choices_to_a_b_and_replay_is_idempotent(queue):
    store, url, tokens = queue
    store.submit(_items(40))
    seen = Counter()
    for _ in range(40):
        status, item = _call(url, "POST", "/api/next", token=tokens["ann"])
        assert status == 200 and set(item) >= {"item_id", "lease_id", "prompt", "a", "b",
                                               "display_order", "round", "expires_at"}
        assert "is_gold" not in item
        seen[item["display_order"]] += 1
        body = {"item_id": item["item_id"], "lease_id": item["lease_id"], "choice": "b",
                "confidence": 3, "idempotency_key": f"key-{item['item_id']}"}
        status, first = _call(url, "POST", "/api/labels", token=tokens["ann"], body=body)
        assert status == 201 and first["created"] is True
        status, again = _call(url, "POST", "/api/labels", token=tokens["ann"], body=body)
        assert status == 200 and again == {"label_id": first["label_id"], "created": False}
    assert set(seen) == {"ab", "ba"}   # the display order is randomised per assignment
    votes = store.votes(0)
    assert len(votes) == 40 and {v.choice for v in votes} == {"b"}   # relative to a/b always
    assert Counter(v.display_order for v in votes) == seen
    # a fresh key on an item already labeled is a conflict, not a second label
    body = {**body, "idempotency_key": "fresh"}
    assert _call(url, "POST", "/api/labels", token=tokens["ann"], body=body)[0] == 409
    assert len(store.votes(0)) == 40


# --------------------------------------------------------------------------- load


def _labeling_clients(url: str, tokens: list[str], *, seed: int, retry_for: float = 30.0,
                      until_done=None, expiry_ok: bool = False) -> tuple[list[dict], list[str]]:
    """Every client labels until nothing is left; now and then it resubmits a label with
    the same idempotency key (must replay) or a fresh one (must be refused). Returns the
    acknowledged labels and any failures."""
    acks, failures, lock = [], [], threading.Lock()

    def client(i: int, token: str) -> None:
        rng, api = random.Random(seed + i), ApiClient(url, token, retry_for=retry_for)
        try:
            while True:
                item = api.next()
                if item is None:
                    if until_done is not None and not until_done():
                        time.sleep(0.2)   # items held by leases lost in a crash come back
                        continue
                    return
                key = f"c{i}:{item['item_id']}"
                choice, confidence = rng.choice(CHOICES), rng.randint(1, 3)
                try:
                    status, body = api.label(item["item_id"], item["lease_id"], choice,
                                             confidence, idempotency_key=key)
                except ApiError as e:
                    # a lease that expired while the server was down, on an item others
                    # have since completed: refused, not recorded, not acknowledged
                    if e.status == 409 and expiry_ok and "expired" in str(e.body):
                        continue
                    raise
                with lock:
                    acks.append({"client": i, "item_id": item["item_id"], "key": key,
                                 "label_id": body["label_id"], "choice": choice})
                if rng.random() < 0.15:
                    status, again = api.label(item["item_id"], item["lease_id"], choice,
                                              confidence, idempotency_key=key)
                    if (status, again["label_id"]) != (200, body["label_id"]):
                        failures.append(f"replay of {key}: {status} {again}")
                if rng.random() < 0.05:
                    status, _ = api.request("POST", "/api/labels", {
                        "item_id": item["item_id"], "lease_id": item["lease_id"],
                        "choice": choice, "confidence": 2, "idempotency_key": key + ":dup"})
                    if status != 409:
                        failures.append(f"duplicate with a fresh key on {key}: {status}")
        except Exception as e:  # noqa: BLE001
            failures.append(f"client {i}: {type(e).__name__}: {e}")
        finally:
            api.close()

    threads = [threading.Thread(target=client, args=(i, t)) for i, t in enumerate(tokens)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return acks, failures


def _check_no_label_lost_or_duplicated(store: QueueStore, acks: list[dict], names: list[str]):
    raw = store.export_raw()
    by_id = {r["label_id"]: r for r in raw}
    assert len(by_id) == len(raw)
    ack_ids = Counter(a["label_id"] for a in acks)
    assert max(ack_ids.values()) == 1, "one label acknowledged for two submissions"
    for a in acks:   # every acknowledged label is there, as it was sent
        row = by_id.get(a["label_id"])
        assert row is not None, f"acknowledged label {a} lost"
        assert (row["item_id"], row["annotator"], row["choice"]) == (
            a["item_id"], names[a["client"]], a["choice"])
    assert len(raw) == len(acks), "labels recorded that no client was told about"
    pairs = Counter((r["item_id"], r["annotator"]) for r in raw)
    assert max(pairs.values()) == 1, "an annotator labeled an item twice"


@pytest.mark.parametrize("n_clients,n_items,votes", [(16, 700, 3)])
def test_concurrent_clients_lose_and_duplicate_nothing(store_url, serve_queue, n_clients,
                                                       n_items, votes):
    store = QueueStore.open(store_url)
    names = [f"client-{i}" for i in range(n_clients)]
    tokens = [store.add_annotator(n) for n in names]
    store.submit(_items(n_items, votes=votes))
    url = serve_queue(store)
    start = time.perf_counter()
    acks, failures = _labeling_clients(url, tokens, seed=1)
    elapsed = time.perf_counter() - start
    assert not failures, failures[:5]
    assert len(acks) == n_items * votes >= 2000
    _check_no_label_lost_or_duplicated(store, acks, names)
    per_item = Counter(a["item_id"] for a in acks)
    assert set(per_item.values()) == {votes} and len(per_item) == n_items
    assert pending(store, 0) == 0
    print(f"{len(acks)} labels by {n_clients} clients in {elapsed:.1f} s "
          f"({len(acks) / elapsed:.0f} labels/s)")
    store.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(run_dir, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "alignloop.cli", "-q", "queue", "serve", "--run-dir", str(run_dir),
           "--port", str(port), "--lease-seconds", "3", "--log-level", "warning",
           "--no-access-log"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "ALIGNLOOP_QUEUE_SECRET": "s" * 32})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if _call(f"http://127.0.0.1:{port}", "GET", "/healthz")[0] == 200:
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"server did not start: {proc.stderr.read().decode()[-2000:]}")


def test_server_killed_mid_load_keeps_every_acknowledged_label(tmp_path):
    store = QueueStore.open(tmp_path)
    names = [f"client-{i}" for i in range(8)]
    tokens = [store.add_annotator(n) for n in names]
    store.submit(_items(300, votes=2))
    port = _free_port()
    server = [_start_server(tmp_path, port)]
    result: dict = {}

    def load() -> None:
        result["acks"], result["failures"] = _labeling_clients(
            f"http://127.0.0.1:{port}", tokens, seed=2, retry_for=60,
            until_done=lambda: pending(store, 0) == 0, expiry_ok=True)

    loader = threading.Thread(target=load)
    loader.start()
    deadline = time.monotonic() + 60
    while label_count(store, 0) < 150 and time.monotonic() < deadline:
        time.sleep(0.01)
    server[0].send_signal(signal.SIGKILL)   # mid-load: requests in flight are cut off
    server[0].wait()
    killed_at = label_count(store, 0)
    time.sleep(0.5)
    server.append(_start_server(tmp_path, port))
    loader.join(timeout=120)
    server[-1].terminate()
    server[-1].wait(timeout=10)
    assert not loader.is_alive()
    acks, failures = result["acks"], result["failures"]
    assert not failures, failures[:5]
    assert 0 < killed_at < 600
    assert len(acks) == 600   # refused (expired) submissions were made up by others
    _check_no_label_lost_or_duplicated(store, acks, names)
    assert pending(store, 0) == 0
    store.close()


def _next_204_waiting(url: str, token: str) -> str | None:
    """POST /api/next expecting its 204: the X-Queue-Waiting-Items header."""
    conn = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=10)
    conn.request("POST", "/api/next", headers={"Authorization": f"Bearer {token}"})
    r = conn.getresponse()
    assert r.status == 204 and r.read() == b""
    conn.close()
    return r.getheader("X-Queue-Waiting-Items")


def test_nothing_left_says_whether_items_wait_for_other_annotators(queue):
    """A bare 204 could not tell "the queue is done" from "what is open waits for other
    people's votes" (one vote per person per item)."""
    store, url, tokens = queue
    assert _next_204_waiting(url, tokens["ann"]) == "0"
    store.submit(_items(1, votes=2))
    status, item = _call(url, "POST", "/api/next", token=tokens["ann"])
    assert status == 200
    body = {"item_id": item["item_id"], "lease_id": item["lease_id"], "choice": "a",
            "confidence": 2, "idempotency_key": "w1", "next": True}
    status, answer = _call(url, "POST", "/api/labels", token=tokens["ann"], body=body)
    assert status == 201 and answer["next"] is None and answer["waiting_items"] == 1
    assert _next_204_waiting(url, tokens["ann"]) == "1"
    status, item = _call(url, "POST", "/api/next", token=tokens["admin"])
    status, answer = _call(url, "POST", "/api/labels", token=tokens["admin"],
                           body={**body, "lease_id": item["lease_id"], "idempotency_key": "w2"})
    assert status == 201 and answer["waiting_items"] == 0
    assert _next_204_waiting(url, tokens["ann"]) == "0"
