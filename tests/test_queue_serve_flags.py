"""`alignloop queue serve --auth-failures N` reaches the app: a real `queue serve` process
(one worker, and two: the uvicorn factory `app_from_env` path) answers the (N+1)th bad
token from one address with 429, and a forged `X-Forwarded-For` names no new address
unless `--forwarded-allow-ips` trusts the proxy; the flag is validated by the parser,
naming it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx
import pytest
from alignloop.cli import main
from alignloop.labeling.queue.app import app_from_env
from alignloop.labeling.queue.store import QueueStore


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(run_dir, *flags: str, stop_timeout: float = 10):
    """A real `queue serve` process with `flags`; yields its URL, stopped on the way out."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "alignloop.cli", "-q", "queue", "serve", "--run-dir",
         str(run_dir), "--port", str(port), "--log-level", "warning", "--no-access-log",
         *flags], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "ALIGNLOOP_QUEUE_SECRET": "s" * 32})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise AssertionError(f"server did not start: {proc.stderr.read().decode()[-2000:]}")
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=stop_timeout)


def _bad_tokens(url: str, n: int, forged: bool = False) -> list[int]:
    """The statuses of `n` requests with a wrong token, each on a new connection (`forged`:
    each naming another client address in X-Forwarded-For)."""
    return [httpx.post(url + "/api/next", timeout=10, headers={
        "Authorization": "Bearer wrong",
        **({"X-Forwarded-For": f"203.0.113.{k + 1}"} if forged else {})}).status_code
        for k in range(n)]


@pytest.fixture
def run_dir(tmp_path):
    with QueueStore.open(tmp_path) as store:
        token = store.add_annotator("ann")
    return tmp_path, token


def test_serve_auth_failures_flag_limits_bad_tokens(run_dir):
    path, token = run_dir
    with serving(path, "--auth-failures", "2") as url:
        assert _bad_tokens(url, 3) == [401, 401, 429]
        r = httpx.post(url + "/api/next", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1   # the address


def test_serve_believes_no_forwarded_address_by_default(run_dir):
    # uvicorn's default trusts X-Forwarded-For from loopback: a new address per guess
    # would never meet the limit
    path, _ = run_dir
    with serving(path, "--auth-failures", "2") as url:
        assert _bad_tokens(url, 4, forged=True) == [401, 401, 429, 429]


def test_serve_forwarded_allow_ips_counts_each_forwarded_client(run_dir):
    # behind a trusted proxy (here: loopback) each forwarded client has its own count
    path, _ = run_dir
    with serving(path, "--auth-failures", "2", "--forwarded-allow-ips", "127.0.0.1") as url:
        assert _bad_tokens(url, 4, forged=True) == [401] * 4
        assert _bad_tokens(url, 3) == [401, 401, 429]       # loopback itself: its own count


def test_serve_default_allows_more_bad_tokens(run_dir):
    path, _ = run_dir
    with serving(path) as url:
        assert _bad_tokens(url, 3) == [401, 401, 401]


def test_serve_auth_failures_flag_reaches_every_worker(run_dir):
    """Two workers, each counting for itself: of 5 bad tokens, one worker sees a third."""
    path, _ = run_dir
    with serving(path, "--auth-failures", "2", "--workers", "2", stop_timeout=20) as url:
        statuses = _bad_tokens(url, 5)
        assert 429 in statuses and set(statuses) <= {401, 429}, statuses


def test_app_from_env_takes_auth_failures(tmp_path, monkeypatch):
    QueueStore.open(tmp_path).close()
    monkeypatch.setenv("ALIGNLOOP_QUEUE_DB", f"sqlite:///{tmp_path / 'queue.db'}")
    monkeypatch.setenv("ALIGNLOOP_QUEUE_SECRET", "s" * 32)
    monkeypatch.setenv("ALIGNLOOP_QUEUE_OPTIONS", json.dumps({"auth_failures": 3}))
    app = app_from_env()
    assert app.state.queue_web.failures.limit == 3
    app.state.store.close()


@pytest.mark.parametrize("value, message", [("0", "must be 1 or more, got 0"),
                                            ("-3", "must be 1 or more, got -3"),
                                            ("two", "must be a whole number, got 'two'")])
def test_serve_refuses_a_bad_auth_failures_value(tmp_path, capsys, value, message):
    with pytest.raises(SystemExit) as e:
        main(["queue", "serve", "--run-dir", str(tmp_path / "run"), "--auth-failures", value])
    assert e.value.code == 2
    assert f"argument --auth-failures: {message}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()          # refused: nothing created


def test_serve_on_a_busy_port_is_an_error_and_port_0_prints_the_real_port(tmp_path):
    """On a port in use uvicorn exited with 3 (`alignloop run`'s "paused") after the URL
    line had named the other server; `--port 0` printed "http://127.0.0.1:0/"."""
    cmd = [sys.executable, "-m", "alignloop.cli", "queue", "serve", "--run-dir", str(tmp_path),
           "--log-level", "warning", "--no-access-log"]
    env = {**os.environ, "ALIGNLOOP_QUEUE_SECRET": "s" * 32}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([*cmd, "--port", str(port)], capture_output=True, text=True,
                           timeout=60, env=env)
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stdout, r.stderr)
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr
    assert list(tmp_path.iterdir()) == []                  # refused before the queue
    QueueStore.open(tmp_path).close()
    proc = subprocess.Popen([*cmd, "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        shown = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        assert shown > 0, line
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{shown}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise AssertionError(f"nothing answers on the port shown: {line}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
