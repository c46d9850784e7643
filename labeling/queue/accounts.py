"""Annotators and their web sessions, in SQL.

An annotator's token is stored only as its SHA-256 (`hash_token`). A signed-in web
session is a row of `sessions`, keyed by the SHA-256 of the random session id its
cookie carries: the cookie's signature shows that this server issued it, the row that
it still stands. Signing out deletes the row and disabling an annotator deletes all of
its rows, so a copied cookie stops working at once, on every worker, whatever its
signature and age. Expired rows are deleted at the next sign-in.

The functions take an open connection; `QueueStore` runs each in one transaction.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from alignloop.labeling.handoff import QueueError
from alignloop.labeling.queue import controls
from sqlalchemy import Connection, text

# annotator: labels. reviewer: labels and adjudicates (records final verdicts on disputed
# items). admin: all of that, plus the dashboard, annotator management and guidelines.
ROLES = ("annotator", "reviewer", "admin")


@dataclass(frozen=True)
class AnnotatorAccount:
    """A person (or bot) who labels: its id in the store, unique name and role."""

    id: int
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def can_adjudicate(self) -> bool:
        """Admins and reviewers may read disputed items and record verdicts."""
        return self.role in ("admin", "reviewer")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_role(role: str) -> None:
    """Raise QueueError (422, field "role") unless `role` is one of `ROLES`."""
    if role not in ROLES:
        raise QueueError(f"role must be one of {list(ROLES)}, got {role!r}", 422, "role")


def check_new(name: str, role: str) -> None:
    """Raise QueueError (422, naming the field) for an invalid new annotator."""
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise QueueError("annotator name must be 1-100 characters", 422, "name")
    if name != name.strip():
        # "alice " would look like "alice" on every page that lists annotators
        raise QueueError(f"annotator name {name!r} starts or ends with a space", 422, "name")
    controls.check(name, "name", "id")
    check_role(role)


def add(conn: Connection, name: str, role: str, token_hash: str, now: float) -> None:
    if conn.execute(text("SELECT 1 FROM annotators WHERE name = :n"), {"n": name}).first():
        raise QueueError(f"annotator {name!r} already exists", 409, "name")
    conn.execute(text("INSERT INTO annotators (name, role, token_hash, created_at, active) "
                      "VALUES (:n, :r, :h, :t, 1)"),
                 {"n": name, "r": role, "h": token_hash, "t": now})


def disable(conn: Connection, name: str, now: float) -> None:
    """Refuse the annotator's token from now on, end its web sessions, and give back the
    items it holds (its live leases expire now: nobody can label through them)."""
    row = conn.execute(text("UPDATE annotators SET active = 0 WHERE name = :n RETURNING id"),
                       {"n": name}).first()
    if row is None:
        raise QueueError(f"no annotator named {name!r}", 404, "name")
    conn.execute(text("DELETE FROM sessions WHERE annotator_id = :a"), {"a": row.id})
    conn.execute(text("UPDATE leases SET expires_at = :now WHERE annotator_id = :a AND "
                      "completed_at IS NULL AND expires_at > :now"), {"a": row.id, "now": now})


def set_role(conn: Connection, name: str, role: str) -> str:
    """Give annotator `name` the role `role` (one of `ROLES`); returns the role it had.
    Its sessions stand: every page reads the role from the store on every request."""
    check_role(role)
    old = conn.execute(text("SELECT role FROM annotators WHERE name = :n"), {"n": name}).first()
    if old is None:
        raise QueueError(f"no annotator named {name!r}", 404, "name")
    conn.execute(text("UPDATE annotators SET role = :r WHERE name = :n"), {"n": name, "r": role})
    return old.role


def rotate(conn: Connection, name: str, token_hash: str) -> None:
    """Give the annotator a new token (its hash): the old one is refused from now on and
    its web sessions end."""
    row = conn.execute(text("UPDATE annotators SET token_hash = :h WHERE name = :n "
                            "RETURNING id"), {"n": name, "h": token_hash}).first()
    if row is None:
        raise QueueError(f"no annotator named {name!r}", 404, "name")
    conn.execute(text("DELETE FROM sessions WHERE annotator_id = :a"), {"a": row.id})


def start_session(conn: Connection, annotator_id: int, session_id: str, now: float,
                  max_age: float) -> None:
    conn.execute(text("DELETE FROM sessions WHERE expires_at <= :now"), {"now": now})
    conn.execute(text("INSERT INTO sessions (sid_hash, annotator_id, created_at, expires_at) "
                      "VALUES (:s, :a, :now, :e)"),
                 {"s": hash_token(session_id), "a": annotator_id, "now": now,
                  "e": now + max_age})


SESSION_ANNOTATOR = ("SELECT a.id, a.name, a.role FROM sessions s JOIN annotators a ON "
                     "a.id = s.annotator_id WHERE s.sid_hash = :s AND s.expires_at > :now "
                     "AND a.active = 1")


def end_session(conn: Connection, session_id: str) -> None:
    conn.execute(text("DELETE FROM sessions WHERE sid_hash = :s"), {"s": hash_token(session_id)})
