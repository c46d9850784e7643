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
  expires without a label stops counting, so the item goes back (the row is
  deleted an hour later, `leases.PURGE_AFTER`). An annotator
  holds at most `max_leases` live leases (default 1): asked again, it gets the
  oldest of them back, so no annotator can lease the queue away from the others.
- Gold items (known answers) are mixed in at `gold_rate`; every annotator may
  label each gold item once; they never complete and are not part of a round's
  counts, votes or exported pairs.
- `record_label` is idempotent on `idempotency_key`: a retried request returns
  the first label; the same key with a different label is refused (409). A
  label on an expired lease is still kept when the item has a free slot (no
  work is lost).
- Text: ids, keys and comments refuse control characters, item text refuses NUL
  (`controls.py`), the same on SQLite and PostgreSQL.
- Concurrency: every change to an item's leases or labels happens while
  holding that item's row lock (PostgreSQL: `SELECT ... FOR UPDATE`, with
  `SKIP LOCKED` when choosing an item, then a recount under the lock) or the
  database's write lock (SQLite: every write transaction is `BEGIN IMMEDIATE`).
  On PostgreSQL an annotator's `next_item` calls also take turns on its row
  (`FOR NO KEY UPDATE`, which labels' foreign-key checks do not wait for).
  Transactions are short; one engine per store serves many threads.

Leasing and labeling SQL lives in `leases.py` (on PostgreSQL run as one server-side
function call per request, `pg_hotpath.py`); annotators and web sessions in
`accounts.py`; reading out counts, agreement and exports in `stats.py`.
`QueueStore` is the entry point to all of it.

Times are Unix seconds (float) from the store's `clock`, which tests replace.
"""

from __future__ import annotations

import hmac
import json
import math
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import replace
from functools import lru_cache, partial
from pathlib import Path

from alignloop.labeling.handoff import (
    HumanVote,
    QueueError,
    QueueItem,
    WaitingForLabels,
    check_gold,
    check_wait_mode,
)
from alignloop.labeling.queue import accounts, controls, leases, migrations, stats
from alignloop.labeling.queue.accounts import AnnotatorAccount, hash_token
from alignloop.labeling.queue.leases import Assignment, RecordedLabel
from alignloop.records import Pair
from sqlalchemy import Connection, bindparam, text
from sqlalchemy.exc import IntegrityError, OperationalError

_ATTEMPTS = 8
__all__ = ["AnnotatorAccount", "Assignment", "QueueError", "QueueStore", "RecordedLabel",
           "WaitingForLabels", "resolve_url"]


def resolve_url(target: str | Path) -> str:
    """A run directory -> `sqlite:///RUN_DIR/queue.db`; a URL is returned as it is."""
    where = str(target)
    return where if "://" in where else f"sqlite:///{Path(where).resolve() / 'queue.db'}"


@lru_cache(maxsize=256)
def _text(sql: str):
    return text(sql)


MAX_ITEM_ID = 200
"""Characters in an item id (a pair id)."""


def _check_item(it: QueueItem) -> None:
    where = f"queue item {it.item_id!r}"
    if not isinstance(it.item_id, str) or not it.item_id or len(it.item_id) > MAX_ITEM_ID:
        raise QueueError(f"{where}: item_id must be a string of 1-{MAX_ITEM_ID} characters",
                         422, "item_id")
    controls.check(it.item_id, "item_id", "id", where)
    controls.check_prompt(it.prompt, "model_text", where)
    for field in ("a", "b", "slice"):
        controls.check(getattr(it, field), field, "model_text", where)
    if not (1 <= it.votes_required <= it.max_votes):
        raise QueueError(f"{where}: need 1 <= votes_required <= max_votes, got "
                         f"{it.votes_required} and {it.max_votes}", 422, "votes_required")
    if not math.isfinite(it.priority):
        raise QueueError(f"{where}: priority must be finite, got {it.priority}", 422, "priority")


class QueueStore:
    """The SQL-backed `LabelQueue` (see module docstring).

    `clock` gives the time (tests pass a fake one); `seed` seeds the random display
    orders and gold draws when `next_item` gets no `rng`. `pool_size`: connections kept
    open (PostgreSQL; made as needed). The server's store calls run in a threadpool of 40
    threads (anyio's default), so 40 lets each keep one: SQLAlchemy closes a connection
    beyond `pool_size` when it is returned, and with 8 a 16-client load opened a new
    backend for most calls, which tripled PostgreSQL's CPU per label (queue_load.py).
    """

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time,
                 seed: int | None = None, pool_size: int = 40, max_overflow: int = 8):
        self.url = url
        self.clock = clock
        self._rng = random.Random(seed)
        self._purged_at = -math.inf     # when `next_item` last purged expired leases
        self.engine = migrations.connect(url, pool_size, max_overflow)
        self.dialect = self.engine.dialect.name
        self._postgres = self.dialect == "postgresql"
        # SQLite: a write transaction starts with BEGIN IMMEDIATE (see migrations.connect),
        # and this process's writers queue on a lock rather than in SQLite's busy handler,
        # whose sleeps (up to 100 ms each) would dominate latency under load.
        self._writer = self.engine.execution_options(queue_write=True)
        self._reader = (self.engine.execution_options(isolation_level="AUTOCOMMIT")
                        if self._postgres else self.engine)   # one round trip
        self._write_lock = threading.Lock() if self.dialect == "sqlite" else nullcontext()
        migrations.migrate(self._writer)    # the missing migrations, each under the write lock

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

    def _write(self, fn: Callable[[Connection], object], *, one_call: bool = False) -> object:
        """Run `fn` in one write transaction; a race lost on a UNIQUE constraint (or a
        PostgreSQL serialisation failure) is retried, and then sees the winner's row.
        `one_call`: on PostgreSQL `fn` runs a single statement (a `pg_hotpath` function),
        sent in autocommit, where the statement is its own transaction: one round trip
        instead of three."""
        for attempt in range(3):
            try:
                if one_call and self._postgres:
                    with self._reader.connect() as conn:
                        return fn(conn)
                with self._write_lock, self._writer.begin() as conn:
                    return fn(conn)
            except (IntegrityError, OperationalError) as e:
                if attempt == 2 or not _retryable(e):
                    raise
        raise AssertionError("unreachable")

    def transaction(self, fn: Callable[[Connection], object]) -> object:
        """Run `fn(conn)` in one write transaction (the modules that extend the store:
        guidelines, skips, adjudication, accounts management)."""
        return self._write(fn)

    def read(self, sql: str, params: Mapping | None = None) -> list:
        """Rows of one read-only query (a short deferred transaction)."""
        with self._reader.connect() as conn:
            return list(conn.execute(_text(sql), dict(params or {})))

    # ----------------------------------------------------------------- annotators

    def add_annotator(self, name: str, role: str = "annotator") -> str:
        """Create an annotator; returns its token (shown once; only its hash is stored)."""
        accounts.check_new(name, role)
        token = secrets.token_urlsafe(32)
        self._write(lambda conn: accounts.add(conn, name, role, hash_token(token), self.clock()))
        return token

    def disable_annotator(self, name: str) -> None:
        """Disable an annotator: its token is refused, its web sessions end and its
        leases give their items back now. Labels already given stay."""
        self._write(lambda conn: accounts.disable(conn, name, self.clock()))

    def start_session(self, annotator_id: int, session_id: str, max_age: float) -> None:
        """Record a signed-in web session (see `accounts`), valid for `max_age` seconds
        unless ended before."""
        self._write(lambda conn: accounts.start_session(conn, annotator_id, session_id,
                                                        self.clock(), max_age))

    def session_annotator(self, session_id: str) -> AnnotatorAccount | None:
        """The active annotator of a web session that has not ended or expired, or None."""
        rows = self.read(accounts.SESSION_ANNOTATOR,
                         {"s": hash_token(session_id), "now": self.clock()})
        return AnnotatorAccount(rows[0].id, rows[0].name, rows[0].role) if rows else None

    def end_session(self, session_id: str) -> None:
        """Sign a web session out: its cookie, copied or not, opens nothing any more."""
        self._write(lambda conn: accounts.end_session(conn, session_id))

    def authenticate(self, token: str) -> AnnotatorAccount | None:
        """The active annotator with this token, or None."""
        if not isinstance(token, str) or not token or len(token) > 200:
            return None
        digest = hash_token(token)
        rows = self.read("SELECT id, name, role, token_hash FROM annotators "
                          "WHERE token_hash = :h AND active = 1", {"h": digest})
        for r in rows:    # the index finds the row; the comparison itself is constant-time
            if hmac.compare_digest(r.token_hash, digest):
                return AnnotatorAccount(r.id, r.name, r.role)
        return None

    def annotators(self) -> list[AnnotatorAccount]:
        """The active annotators, oldest first."""
        rows = self.read("SELECT id, name, role FROM annotators WHERE active = 1 ORDER BY id")
        return [AnnotatorAccount(r.id, r.name, r.role) for r in rows]

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
        check_gold(gold, batch)
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
            if self._postgres and len(new) >= 100:
                conn.execute(text("ANALYZE items"))    # keep queue-order index scans chosen
            return len(new)

        return self._write(tx)

    def push(self, pairs_or_items: Iterable[Pair | QueueItem], round: int, *,
             votes_required: int = 1, max_votes: int = 3, gold: bool = False,
             coin: random.Random | None = None) -> int:
        """Loop side: queue pairs (a=chosen, b=rejected, item_id=pair_id) or items for
        `round`; returns how many were new. `gold`: each is a gold item whose known answer
        is its chosen side (item `a`); a pair's sides are swapped on a coin (answer `b`), so
        that gold answers are not all one side and a temperature can be fitted to them
        (`alignloop.labeling.gold`). The coin is drawn from the system's randomness
        (`coin`: a seeded generator instead, for tests), never from the pair id: annotators
        see item ids, and a coin of the id would let a bot answer every gold item without
        reading it. The answer is stored when the item is queued, so it need not be drawn
        again."""
        coin = coin or random.SystemRandom()
        items, answers = [], {}
        for x in pairs_or_items:
            if isinstance(x, Pair):
                swap = gold and coin.random() < 0.5
                a, b = (x.rejected, x.chosen) if swap else (x.chosen, x.rejected)
                items.append(QueueItem(x.pair_id, round, x.prompt, a, b, x.slice,
                                       0.0, votes_required, max_votes))
                answers[x.pair_id] = "b" if swap else "a"
            else:
                items.append(replace(x, round=round))
                answers[x.item_id] = "a"
        return self.submit(items, gold=answers if gold else None)

    # ----------------------------------------------------------------- leases and labels

    def next_item(self, annotator_id: int, *, lease_seconds: float = 600.0,
                  gold_rate: float = 0.0, rng: random.Random | None = None,
                  max_leases: int = leases.MAX_LEASES,
                  keyed_seed: int | None = None) -> Assignment | None:
        """Lease the next item to this annotator, or None when nothing is available.

        An annotator holding `max_leases` live leases gets the oldest of them again.
        With probability `gold_rate` a gold item the annotator has not seen comes first.
        PostgreSQL: the chosen row is locked with SKIP LOCKED, so concurrent callers take
        different items, and then rechecked under the lock (a fresh snapshot), since the
        lock may be won just after another caller leased the item's last slot. When every
        available row is locked (items being labeled right now) it waits for the first.

        `keyed_seed`: this lease's draws (gold or not, which gold item, display order) come
        from the seed, the annotator and how many labels they gave, not from a stream, so
        the same queue state gives the same lease in any process: a seeded simulation
        killed mid-round and resumed labels as the uninterrupted one (a stream restarts
        with the process). It costs one count per lease, so only simulations use it.
        """
        if isinstance(max_leases, bool) or not isinstance(max_leases, int) or max_leases < 1:
            raise ValueError(f"max_leases must be a positive integer, got {max_leases!r}")
        if self.clock() - self._purged_at >= leases.PURGE_EVERY:
            self._purged_at = self.clock()
            self.purge_expired_leases()
        if keyed_seed is not None:
            rng = random.Random(f"{keyed_seed}:{annotator_id}:{self.labeled(annotator_id)}")
        rng = rng or self._rng
        want_gold = gold_rate > 0 and rng.random() < gold_rate
        order = "ba" if rng.random() < 0.5 else "ab"

        def tx(conn: Connection, attempt: int) -> Assignment | None | bool:
            return leases.lease_next(conn, annotator_id=annotator_id, now=self.clock(),
                                     lease_seconds=lease_seconds, max_leases=max_leases,
                                     want_gold=want_gold,
                                     order=order, rng=rng, postgres=self._postgres,
                                     first_attempt=attempt == 0)

        for attempt in range(_ATTEMPTS):
            try:
                got = self._write(partial(tx, attempt=attempt), one_call=True)
            except IntegrityError:   # the lease's annotator: a driver script's wrong id
                if not self.read("SELECT 1 FROM annotators WHERE id = :a", {"a": annotator_id}):
                    raise QueueError(f"no annotator has the id {annotator_id!r}", 404,
                                     "annotator") from None
                raise
            if got is not False:
                return got
        return None

    def purge_expired_leases(self, older_than: float = leases.PURGE_AFTER) -> int:
        """Delete the leases that expired more than `older_than` seconds ago without a
        label (see `leases.purge_expired`); returns how many."""
        return self._write(lambda conn: leases.purge_expired(conn, self.clock() - older_than))

    def release(self, annotator_id: int, lease_id: str) -> bool:
        """Give a leased item back now (a skip): the lease expires at once. True when a
        live lease of this annotator was released."""
        return self._write(lambda conn: leases.release(conn, annotator_id, lease_id,
                                                       self.clock()))

    def record_label(self, annotator_id: int, *, item_id: str, lease_id: str, choice: str,
                     confidence: int = 2, idempotency_key: str,
                     comment: str = "") -> RecordedLabel:
        """Record one label; raises QueueError (404 unknown item or lease, 409 already
        labeled, key used for another label or with different content, or expired lease
        whose slot is taken; 422 invalid field). A retried request (same key, same label)
        returns the first label, created False.
        """
        leases.check_label(item_id, lease_id, choice, confidence, idempotency_key, comment)
        return self._write(lambda conn: leases.record(
            conn, annotator_id=annotator_id, item_id=item_id, lease_id=lease_id, choice=choice,
            confidence=confidence, idempotency_key=idempotency_key, comment=comment,
            now=self.clock(), postgres=self._postgres), one_call=True)

    # ----------------------------------------------------------------- reading

    def votes(self, round: int) -> list[HumanVote]:
        """Every label on the round's (non-gold) items, oldest first."""
        return stats.votes(self, round)

    def gold_votes(self) -> tuple[list[HumanVote], dict[str, str]]:
        """(every label on a gold item, of any round, oldest first; {gold item: answer})."""
        return stats.gold_votes(self)

    def round_counts(self, round: int) -> tuple[int, int, int]:
        """(labels, votes still missing, items pending) of the round's regular items."""
        return stats.round_counts(self, round)

    def ping(self) -> None:
        """One trivial query: raises when the database does not answer (health checks)."""
        self.read("SELECT 1")

    def labeled(self, annotator_id: int) -> int:
        """How many labels the annotator gave (gold items included): one indexed count,
        for the labeling page's every load (`progress` also counts what is available)."""
        return int(self.read("SELECT COUNT(*) FROM labels WHERE annotator_id = :a",
                             {"a": annotator_id})[0][0])

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
        from alignloop.labeling.queue.adjudication import verdicts

        return stats.export_pairs(stats.label_rows(self), stats.export_items(self, round),
                                  prior_reliability=prior_reliability,
                                  prior_strength=prior_strength,
                                  verdicts={i: v["choice"] for i, v in verdicts(self).items()})

    # ----------------------------------------------------------------- waiting

    def wait_or_exit(self, round: int, min_labels: int, *, mode: str = "block",
                     timeout_s: float = 3600.0, poll_s: float = 1.0, progress: bool = True) -> int:
        """`labeling.human.wait`. "block": poll until the round has `min_labels` labels (0:
        until no item of the round is pending) or `timeout_s` passes, with a live progress
        line, and return the labels so far (the round goes on with what it has). "exit":
        when the round is short, raise `WaitingForLabels` at once, so that the run stops and
        a later run resumes there."""
        check_wait_mode(mode)
        if mode == "block":
            return stats.wait(self, round, min_labels, timeout_s, poll_s=poll_s,
                              progress=progress)
        have, target = stats.label_target(self, round, min_labels)
        if have < target:
            raise WaitingForLabels(round, target, have)
        return have


def _retryable(e: Exception) -> bool:
    if isinstance(e, IntegrityError):
        return True
    msg = str(getattr(e, "orig", e)).lower()
    return "locked" in msg or "deadlock" in msg or "could not serialize" in msg
