"""The human queue's store: items to label, leases, labels and annotators in SQL.

SQLite (WAL) at `RUN_DIR/queue.db` by default, PostgreSQL by URL
(`postgresql+psycopg://...`). The schema is made only by the numbered
migrations in `migrations.py`, applied when a store opens.

Semantics (what the web app, the terminal labeler and the loop rely on):

- An item needs `votes_required` labels. When its votes disagree (not all the
  same choice) it needs `max_votes` (adaptive redundancy).
- `next_item` leases the best available item to an annotator: highest priority,
  then oldest; never one the annotator labeled or holds a live lease on; an
  item is available while labels + live leases < votes needed. A lease that
  expires without a label stops counting, so the item goes back.
- Gold items (known answers) are mixed in at `gold_rate`; every annotator may
  label each gold item once; they never complete and are not part of a round's
  counts, votes or exported pairs.
- `record_label` is idempotent on `idempotency_key`: a retried request returns
  the first label. A label on an expired lease is still kept when the item
  has a free slot (no work is lost).
- Concurrency: every change to an item's leases or labels happens while
  holding that item's row lock (PostgreSQL: `SELECT ... FOR UPDATE`, with
  `SKIP LOCKED` when choosing an item, then a recount under the lock) or the
  database's write lock (SQLite: every write transaction is `BEGIN IMMEDIATE`).
  Transactions are short; one engine per store serves many threads.

Times are Unix seconds (float) from the store's `clock`, which tests replace.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import random
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from pathlib import Path

from alignloop.errors import AlignloopError
from alignloop.labeling.handoff import CHOICES, HumanVote, QueueItem
from alignloop.labeling.queue import migrations, stats
from alignloop.records import Pair
from sqlalchemy import Connection, bindparam, text
from sqlalchemy.exc import IntegrityError, OperationalError

ROLES = ("annotator", "admin")
MAX_COMMENT = 4000


class QueueError(AlignloopError):
    """A request the queue refuses; `status` is the HTTP status the web app answers with
    (404 unknown item or lease, 409 conflict, 422 invalid field)."""

    def __init__(self, message: str, status: int = 422, field: str = ""):
        super().__init__(message)
        self.status = status
        self.field = field


class WaitingForLabels(AlignloopError):
    """The round needs more human labels; a later run resumes where this one stopped."""

    def __init__(self, round: int, needed: int, have: int):
        self.round, self.needed, self.have = round, needed, have
        super().__init__(f"waiting for {needed} labels on round {round} ({have} so far); "
                         "rerun to resume")


@dataclass(frozen=True)
class Annotator:
    id: int
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class Assignment:
    """An item leased to one annotator. `display_order` "ba" means show `item.b` on the
    left; the label's choice is still relative to `item.a`/`item.b`. `is_gold` is for the
    server only: never show it to the annotator."""

    lease_id: str
    item: QueueItem
    display_order: str
    expires_at: float
    is_gold: bool = False


@dataclass(frozen=True)
class LabelResult:
    label_id: int
    created: bool


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def resolve_url(target: str | Path) -> str:
    """A run directory -> `sqlite:///RUN_DIR/queue.db`; a URL is returned as it is."""
    where = str(target)
    return where if "://" in where else f"sqlite:///{Path(where).resolve() / 'queue.db'}"


# Item `i` can be leased to annotator :ann at time :now when it is open, has a slot
# free (labels + live leases < needed) and :ann neither labeled it nor holds a live
# lease on it. Scalar subqueries rather than NOT EXISTS: the planner keeps them as
# per-row checks on an index scan in queue order that stops at the first match,
# instead of anti-joins over every open item followed by a sort.
_LIVE = "s.completed_at IS NULL AND s.expires_at > :now"
_UNSEEN = f"""(SELECT COUNT(*) FROM labels l WHERE l.item_id = i.item_id
                   AND l.annotator_id = :ann) = 0
    AND (SELECT COUNT(*) FROM leases s WHERE s.item_id = i.item_id
         AND s.annotator_id = :ann AND {_LIVE}) = 0"""
AVAILABLE = f"""i.is_open = 1
    AND i.n_labels + (SELECT COUNT(*) FROM leases s WHERE s.item_id = i.item_id AND {_LIVE})
        < i.needed
    AND {_UNSEEN}"""
ITEM_COLS = "i.item_id, i.round, i.prompt, i.a, i.b, i.slice, i.priority, i.votes_required, i.max_votes"
_ORDER = "ORDER BY i.priority DESC, i.seq, i.item_id LIMIT 1"
_NEXT = f"SELECT {ITEM_COLS} FROM items i WHERE {AVAILABLE} {_ORDER}"
# A first pass over the first TOP_WINDOW open items in queue order (an index range):
# the next item is almost always among them, and PostgreSQL's planner otherwise checks
# every open item before sorting. Only when none of them is available does `_NEXT`
# look further, so the item chosen is the same.
TOP_WINDOW = 64
_TOP = (f"SELECT {ITEM_COLS} FROM items i WHERE i.item_id IN (SELECT t.item_id FROM items t "
        f"WHERE t.is_open = 1 ORDER BY t.priority DESC, t.seq, t.item_id LIMIT {TOP_WINDOW}) "
        f"AND {AVAILABLE} {_ORDER}")
_SQL = {k: text(v) for k, v in {
    "gold": f"SELECT {ITEM_COLS} FROM items i WHERE i.gold IS NOT NULL AND {_UNSEEN} "
            "ORDER BY i.seq LIMIT 32",
    "next": _NEXT,
    "next_top": _TOP,
    "next_top_skip": _TOP + " FOR UPDATE SKIP LOCKED",
    "next_skip": _NEXT + " FOR UPDATE SKIP LOCKED",
    "next_wait": _NEXT + " FOR UPDATE",
    "recheck": f"SELECT 1 FROM items i WHERE i.item_id = :id AND {AVAILABLE}",
    "lease": "INSERT INTO leases (lease_id, item_id, annotator_id, display_order, issued_at,"
             " expires_at) VALUES (:l, :id, :ann, :o, :now, :e)",
    "item": "SELECT n_labels, needed, max_votes, first_choice, gold FROM items WHERE item_id = :i",
    "labels_of": "SELECT id, item_id, annotator_id, idempotency_key FROM labels WHERE "
                 "idempotency_key = :k OR (item_id = :i AND annotator_id = :a)",
    "lease_of": "SELECT display_order, expires_at, completed_at, (SELECT COUNT(*) FROM leases s "
                f"WHERE s.item_id = :i AND {_LIVE}) AS live FROM leases WHERE lease_id = :l AND "
                "annotator_id = :a AND item_id = :i",
    "label": "INSERT INTO labels (item_id, annotator_id, lease_id, choice, confidence, comment,"
             " display_order, idempotency_key, created_at) VALUES (:i, :a, :l, :c, :conf, :m,"
             " :o, :k, :now) RETURNING id",
    "complete": "UPDATE leases SET completed_at = :now WHERE lease_id = :l",
    "count": "UPDATE items SET n_labels = :n, needed = :needed, first_choice = :f, is_open = :o"
             " WHERE item_id = :i",
}.items()}
_ATTEMPTS = 8


@lru_cache(maxsize=256)
def _text(sql: str):
    return text(sql)


def _item(row) -> QueueItem:
    return QueueItem(row.item_id, row.round, json.loads(row.prompt), row.a, row.b, row.slice,
                     row.priority, row.votes_required, row.max_votes)


def _check_item(it: QueueItem) -> None:
    where = f"queue item {it.item_id!r}"
    if not isinstance(it.item_id, str) or not it.item_id or len(it.item_id) > 200:
        raise QueueError(f"{where}: item_id must be a string of 1-200 characters", 422, "item_id")
    if not (1 <= it.votes_required <= it.max_votes):
        raise QueueError(f"{where}: need 1 <= votes_required <= max_votes, got "
                         f"{it.votes_required} and {it.max_votes}", 422, "votes_required")
    if not math.isfinite(it.priority):
        raise QueueError(f"{where}: priority must be finite, got {it.priority}", 422, "priority")


class QueueStore:
    """The SQL-backed `LabelQueue` (see module docstring).

    `clock` gives the time (tests pass a fake one); `seed` seeds the random display
    orders and gold draws when `next_item` gets no `rng`.
    """

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time,
                 seed: int | None = None, pool_size: int = 8, max_overflow: int = 32):
        self.url = url
        self.clock = clock
        self._rng = random.Random(seed)
        self.engine = migrations.connect(url, pool_size, max_overflow)
        self.dialect = self.engine.dialect.name
        # SQLite: a write transaction starts with BEGIN IMMEDIATE (see migrations.connect),
        # and this process's writers queue on a lock rather than in SQLite's busy handler,
        # whose sleeps (up to 100 ms each) would dominate latency under load.
        self._writer = self.engine.execution_options(queue_write=True)
        self._reader = (self.engine.execution_options(isolation_level="AUTOCOMMIT")
                        if self.dialect == "postgresql" else self.engine)   # one round trip
        self._write_lock = threading.Lock() if self.dialect == "sqlite" else nullcontext()
        self._item_locked = text(_SQL["item"].text + (" FOR UPDATE" if self.dialect == "postgresql"
                                                      else ""))
        self.migrate()

    @classmethod
    def open(cls, target: str | Path, **kwargs) -> QueueStore:
        """A store on a run directory (its `queue.db`, created if missing) or a database URL."""
        return cls(resolve_url(target), **kwargs)

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    def __enter__(self) -> QueueStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def migrate(self) -> list[int]:
        """Apply the missing migrations (done on open); returns the numbers applied now."""
        return migrations.migrate(self._writer)

    def _write(self, fn: Callable[[Connection], object]) -> object:
        """Run `fn` in one write transaction; a race lost on a UNIQUE constraint (or a
        PostgreSQL serialisation failure) is retried, and then sees the winner's row."""
        for attempt in range(3):
            try:
                with self._write_lock, self._writer.begin() as conn:
                    return fn(conn)
            except (IntegrityError, OperationalError) as e:
                if attempt == 2 or not _retryable(e):
                    raise
        raise AssertionError("unreachable")

    def read(self, sql: str, params: Mapping | None = None) -> list:
        """Rows of one read-only query (a short deferred transaction)."""
        with self._reader.connect() as conn:
            return list(conn.execute(_text(sql), dict(params or {})))

    # ----------------------------------------------------------------- annotators

    def add_annotator(self, name: str, role: str = "annotator") -> str:
        """Create an annotator; returns its token (shown once; only its hash is stored)."""
        if not isinstance(name, str) or not name.strip() or len(name) > 100:
            raise QueueError("annotator name must be 1-100 characters", 422, "name")
        if role not in ROLES:
            raise QueueError(f"role must be one of {list(ROLES)}, got {role!r}", 422, "role")
        token = secrets.token_urlsafe(32)

        def tx(conn: Connection) -> None:
            if conn.execute(text("SELECT 1 FROM annotators WHERE name = :n"), {"n": name}).first():
                raise QueueError(f"annotator {name!r} already exists", 409, "name")
            conn.execute(text("INSERT INTO annotators (name, role, token_hash, created_at, active) "
                              "VALUES (:n, :r, :h, :t, 1)"),
                         {"n": name, "r": role, "h": hash_token(token), "t": self.clock()})

        self._write(tx)
        return token

    def authenticate(self, token: str) -> Annotator | None:
        """The active annotator with this token, or None."""
        if not isinstance(token, str) or not token or len(token) > 200:
            return None
        digest = hash_token(token)
        rows = self.read("SELECT id, name, role, token_hash FROM annotators "
                          "WHERE token_hash = :h AND active = 1", {"h": digest})
        for r in rows:    # the index finds the row; the comparison itself is constant-time
            if hmac.compare_digest(r.token_hash, digest):
                return Annotator(r.id, r.name, r.role)
        return None

    def annotators(self) -> list[Annotator]:
        rows = self.read("SELECT id, name, role FROM annotators WHERE active = 1 ORDER BY id")
        return [Annotator(r.id, r.name, r.role) for r in rows]

    def set_active(self, name: str, active: bool) -> None:
        """Disable (or re-enable) an annotator's token."""
        def tx(conn: Connection) -> None:
            res = conn.execute(text("UPDATE annotators SET active = :a WHERE name = :n"),
                               {"a": int(active), "n": name})
            if res.rowcount == 0:
                raise QueueError(f"no annotator named {name!r}", 404, "name")
        self._write(tx)

    # ----------------------------------------------------------------- items

    def submit(self, items: Sequence[QueueItem], gold: Mapping[str, str] | None = None) -> int:
        """Add items (an existing item_id is left unchanged); returns how many were new.
        `gold[item_id]` marks an item as gold with that known answer."""
        gold = dict(gold or {})
        firsts: dict[str, QueueItem] = {}
        for it in items:
            firsts.setdefault(it.item_id, it)
        batch = list(firsts.values())
        for it in batch:
            _check_item(it)
        unknown = sorted(set(gold) - {it.item_id for it in batch})
        if unknown:
            raise QueueError(f"gold answers for items not submitted: {unknown[:5]}", 422, "gold")
        bad = {k: v for k, v in gold.items() if v not in CHOICES}
        if bad:
            raise QueueError(f"gold answers must be one of {list(CHOICES)}: {bad}", 422, "gold")
        if not batch:
            return 0

        def tx(conn: Connection) -> int:
            have: set[str] = set()
            ids = [it.item_id for it in batch]
            for k in range(0, len(ids), 500):
                rows = conn.execute(text("SELECT item_id FROM items WHERE item_id IN :ids")
                                    .bindparams(bindparam("ids", expanding=True)),
                                    {"ids": ids[k:k + 500]})
                have.update(r[0] for r in rows)
            new = [it for it in batch if it.item_id not in have]
            if not new:
                return 0
            seq = conn.execute(text("SELECT COALESCE(MAX(seq), 0) FROM items")).scalar_one()
            now = self.clock()
            rows = [{"item_id": it.item_id, "round": int(it.round), "a": it.a, "b": it.b,
                     "prompt": json.dumps(it.prompt, ensure_ascii=False), "slice": it.slice or "",
                     "priority": float(it.priority), "vr": it.votes_required, "mv": it.max_votes,
                     "gold": gold.get(it.item_id), "seq": seq + n, "t": now,
                     "open": 0 if it.item_id in gold else 1} for n, it in enumerate(new, 1)]
            conn.execute(text(
                "INSERT INTO items (item_id, round, prompt, a, b, slice, priority, votes_required,"
                " max_votes, gold, seq, created_at, n_labels, needed, is_open) VALUES (:item_id,"
                " :round, :prompt, :a, :b, :slice, :priority, :vr, :mv, :gold, :seq, :t, 0, :vr,"
                " :open) ON CONFLICT (item_id) DO NOTHING"), rows)
            if self.dialect == "postgresql" and len(new) >= 100:
                conn.execute(text("ANALYZE items"))    # keep queue-order index scans chosen
            return len(new)

        return self._write(tx)

    def add_gold(self, items: Sequence[QueueItem], answers: Mapping[str, str]) -> int:
        """Add gold items; every item needs an answer in `answers`."""
        missing = [it.item_id for it in items if it.item_id not in answers]
        if missing:
            raise QueueError(f"gold items without an answer: {missing[:5]}", 422, "gold")
        return self.submit(items, gold=answers)

    def push(self, pairs_or_items: Iterable[Pair | QueueItem], round: int, *,
             votes_required: int = 1, max_votes: int = 3) -> int:
        """Loop side: queue pairs (a=chosen, b=rejected, item_id=pair_id) or items for
        `round`; returns how many were new."""
        items = []
        for x in pairs_or_items:
            if isinstance(x, Pair):
                items.append(QueueItem(x.pair_id, round, x.prompt, x.chosen, x.rejected, x.slice,
                                       0.0, votes_required, max_votes))
            else:
                items.append(replace(x, round=round))
        return self.submit(items)

    # ----------------------------------------------------------------- leases and labels

    def next_item(self, annotator_id: int, *, lease_seconds: float = 600.0,
                  gold_rate: float = 0.0, rng: random.Random | None = None) -> Assignment | None:
        """Lease the next item to this annotator, or None when nothing is available.

        With probability `gold_rate` a gold item the annotator has not seen comes first.
        PostgreSQL: the chosen row is locked with SKIP LOCKED, so concurrent callers take
        different items, and then rechecked under the lock (a fresh snapshot), since the
        lock may be won just after another caller leased the item's last slot. When every
        available row is locked (items being labeled right now) it waits for the first.
        """
        rng = rng or self._rng
        want_gold = gold_rate > 0 and rng.random() < gold_rate
        order = "ba" if rng.random() < 0.5 else "ab"
        pg = self.dialect == "postgresql"

        def tx(conn: Connection, attempt: int) -> Assignment | None | bool:
            p = {"ann": annotator_id, "now": self.clock()}
            rows = list(conn.execute(_SQL["gold"], p)) if want_gold else []
            row = rng.choice(rows) if rows else None
            is_gold = row is not None
            if row is None:
                row = (conn.execute(_SQL["next_top_skip" if pg else "next_top"], p).first()
                       or conn.execute(_SQL["next_skip" if pg else "next"], p).first())
                if row is None and pg and attempt == 0:
                    row = conn.execute(_SQL["next_wait"], p).first()
                if row is None:
                    return None
                if pg and conn.execute(_SQL["recheck"], {**p, "id": row.item_id}).first() is None:
                    return False          # lost the last slot to a concurrent lease
            lease = Assignment(uuid.uuid4().hex, _item(row), order, p["now"] + lease_seconds,
                               is_gold)
            conn.execute(_SQL["lease"], {**p, "l": lease.lease_id, "id": row.item_id, "o": order,
                                         "e": lease.expires_at})
            return lease

        for attempt in range(_ATTEMPTS):
            got = self._write(partial(tx, attempt=attempt))
            if got is not False:
                return got
        return None

    def release(self, annotator_id: int, lease_id: str) -> bool:
        """Give a leased item back now (a skip): the lease expires at once. True when a
        live lease of this annotator was released."""
        def tx(conn: Connection) -> bool:
            res = conn.execute(text("UPDATE leases SET expires_at = :now WHERE lease_id = :l AND "
                                    "annotator_id = :a AND completed_at IS NULL AND "
                                    "expires_at > :now"),
                               {"now": self.clock(), "l": lease_id, "a": annotator_id})
            return res.rowcount > 0
        return self._write(tx)

    def record_label(self, annotator_id: int, *, item_id: str, lease_id: str, choice: str,
                     confidence: int = 2, idempotency_key: str, comment: str = "") -> LabelResult:
        """Record one label; raises QueueError (404 unknown item or lease, 409 already
        labeled, key used for another label, or expired lease whose slot is taken; 422
        invalid field).

        The item's row lock comes first, so a retry racing its original waits for it and
        then finds the original's label, which it returns (created False).
        """
        if choice not in CHOICES:
            raise QueueError(f"choice must be one of {list(CHOICES)}, got {choice!r}", 422, "choice")
        if isinstance(confidence, bool) or not isinstance(confidence, int) or not 1 <= confidence <= 3:
            raise QueueError(f"confidence must be 1, 2 or 3, got {confidence!r}", 422, "confidence")
        if not isinstance(idempotency_key, str) or not 1 <= len(idempotency_key) <= 200:
            raise QueueError("idempotency_key must be 1-200 characters", 422, "idempotency_key")
        if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
            raise QueueError(f"comment must be text of at most {MAX_COMMENT} characters", 422,
                             "comment")
        p = {"i": item_id, "a": annotator_id, "l": lease_id, "k": idempotency_key, "c": choice,
             "conf": confidence, "m": comment}

        def tx(conn: Connection) -> LabelResult:
            now = p["now"] = self.clock()
            item = conn.execute(self._item_locked, p).first()
            if item is None:
                raise QueueError(f"no item {item_id!r}", 404, "item_id")
            for prior in conn.execute(_SQL["labels_of"], p):
                if prior.idempotency_key != idempotency_key:
                    raise QueueError(f"you already labeled item {item_id!r}", 409, "item_id")
                if prior.annotator_id != annotator_id or prior.item_id != item_id:
                    raise QueueError("idempotency_key was already used for another label", 409,
                                     "idempotency_key")
                return LabelResult(prior.id, False)
            lease = conn.execute(_SQL["lease_of"], p).first()
            if lease is None:
                raise QueueError(f"no lease {lease_id!r} of yours on item {item_id!r}", 404,
                                 "lease_id")
            if lease.completed_at is not None:
                raise QueueError(f"lease {lease_id!r} was used already", 409, "lease_id")
            if item.gold is None and lease.expires_at <= now and (
                    item.n_labels + lease.live >= item.needed):
                raise QueueError(f"lease {lease_id!r} expired and item {item_id!r} has the "
                                 "votes it needs", 409, "lease_id")
            label_id = conn.execute(_SQL["label"], {**p, "o": lease.display_order}).scalar_one()
            conn.execute(_SQL["complete"], p)
            n = item.n_labels + 1
            disagree = item.first_choice is not None and item.first_choice != choice
            needed = item.max_votes if disagree else item.needed
            conn.execute(_SQL["count"], {"n": n, "needed": needed, "i": item_id,
                                         "f": item.first_choice or choice,
                                         "o": int(item.gold is None and n < needed)})
            return LabelResult(label_id, True)

        return self._write(tx)

    # ----------------------------------------------------------------- reading

    def votes(self, round: int) -> list[HumanVote]:
        """Every label on the round's (non-gold) items, oldest first."""
        return stats.votes(self, round)

    def collect(self, round: int) -> list[HumanVote]:
        """Loop side: the round's votes (same as `votes`)."""
        return self.votes(round)

    def round_counts(self, round: int) -> tuple[int, int, int]:
        """(labels, votes still missing, items pending) of the round's regular items."""
        return stats.round_counts(self, round)

    def pending(self, round: int) -> int:
        """Items of the round that still need votes."""
        return self.round_counts(round)[2]

    def label_count(self, round: int) -> int:
        """Labels recorded on the round's (non-gold) items."""
        return self.round_counts(round)[0]

    def progress(self, annotator_id: int) -> dict:
        """{labeled, available, gold_seen, gold_correct, gold_accuracy} of one annotator
        (`labeled` counts gold items too: the annotator cannot tell them apart)."""
        return stats.progress(self, annotator_id)

    def status(self, judge_p: Mapping[str, float] | None = None) -> dict:
        """Counts per round and agreement, JSON-ready (see `stats.status`)."""
        return stats.status(self, judge_p)

    def export_raw(self) -> list[dict]:
        """Every label with its annotator's name, display order, time and round."""
        return stats.export_raw(stats.label_rows(self))

    def export_pairs(self, prior_reliability: float = 0.75, prior_strength: float = 4.0, *,
                     round: int | None = None) -> list[Pair]:
        """Soft-labeled pairs of the regular items (of `round`, or all), from every vote
        through Dawid-Skene (see `stats.export_pairs`)."""
        return stats.export_pairs(stats.label_rows(self), stats.export_items(self, round),
                                  prior_reliability=prior_reliability,
                                  prior_strength=prior_strength)

    # ----------------------------------------------------------------- waiting

    def wait(self, round: int, min_labels: int, timeout_s: float, *, poll_s: float = 1.0,
             progress: bool = True) -> int:
        """Block until the round has `min_labels` labels (0: until no item of the round is
        pending) or `timeout_s` passes, with a live progress line; returns the labels so far."""
        return stats.wait(self, round, min_labels, timeout_s, poll_s=poll_s, progress=progress)

    def wait_or_exit(self, round: int, min_labels: int, *, mode: str = "block",
                     timeout_s: float = 3600.0, poll_s: float = 1.0, progress: bool = True) -> int:
        """`labeling.human.wait`. "block": wait up to `timeout_s` and return the labels so
        far (the round goes on with what it has). "exit": when the round is short, raise
        `WaitingForLabels` at once, so that the run stops and a later run resumes there."""
        if mode == "block":
            return self.wait(round, min_labels, timeout_s, poll_s=poll_s, progress=progress)
        if mode != "exit":
            raise QueueError(f"wait mode must be block or exit, got {mode!r}", 422, "wait")
        have, target = stats.label_target(self, round, min_labels)
        if have < target:
            raise WaitingForLabels(round, target, have)
        return have


def _retryable(e: Exception) -> bool:
    if isinstance(e, IntegrityError):
        return True
    msg = str(getattr(e, "orig", e)).lower()
    return "locked" in msg or "deadlock" in msg or "could not serialize" in msg
