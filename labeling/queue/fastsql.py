"""The queue's hot statements (leasing and labeling) on the driver's cursor directly.

A label is ten short statements. Profiled (`benchmarks/queue_profile.py`), SQLAlchemy's
per-statement work (execution context, result metadata, events) cost more CPU than
SQLite ran the SQL in, so `execute` keeps SQLAlchemy for what it is good at here
(compiling each `text()` once per dialect into the driver's paramstyle, the connection
pool, the transaction) and runs the compiled string on the transaction's own DBAPI
connection. Driver errors are re-raised as SQLAlchemy's (`IntegrityError`,
`OperationalError`), so the store's retry rules see what they always saw.

`execute(conn, clause, params)` answers what `conn.execute` would for the calls the
queue makes: `.first()`, iteration, `.scalar_one()`, `.rowcount`; rows are named tuples.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterator, Mapping

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import TextClause

_COMPILED: dict[tuple[int, str], tuple[TextClause, str, tuple[str, ...] | None]] = {}
_ROWS: dict[tuple[int, str, tuple[str, ...]], type] = {}


class Rows:
    """A finished statement's rows (fetched at once: the queue's results are tiny)."""

    def __init__(self, rows: list, rowcount: int):
        self.rows, self.rowcount = rows, rowcount

    def first(self):
        return self.rows[0] if self.rows else None

    def scalar_one(self):
        if len(self.rows) != 1:
            raise ValueError(f"expected one row, got {len(self.rows)}")
        return self.rows[0][0]

    def __iter__(self) -> Iterator:
        return iter(self.rows)


def _compile(clause: TextClause, conn: Connection) -> tuple[str, tuple[str, ...] | None]:
    key = (id(clause), conn.dialect.name)
    hit = _COMPILED.get(key)
    if hit is None:
        compiled = clause.compile(dialect=conn.dialect)
        order = tuple(compiled.positiontup) if compiled.positional else None
        hit = _COMPILED[key] = (clause, str(compiled), order)   # keeps `clause` alive
    return hit[1], hit[2]


def execute(conn: Connection, clause: TextClause, params: Mapping) -> Rows:
    """Run `clause` with `params` in `conn`'s transaction on the driver's cursor."""
    sql, order = _compile(clause, conn)
    args = tuple(params[k] for k in order) if order is not None else params
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.execute(sql, args)
        rows = []
        if cursor.description is not None:
            names = tuple(d[0] for d in cursor.description)
            key = (id(clause), conn.dialect.name, names)
            row = _ROWS.get(key) or _ROWS.setdefault(key, namedtuple("Row", names, rename=True))
            rows = [row(*r) for r in cursor.fetchall()]
        return Rows(rows, cursor.rowcount)
    except conn.dialect.loaded_dbapi.Error as e:
        raise DBAPIError.instance(sql, args, e, conn.dialect.loaded_dbapi.Error,
                                  dialect=conn.dialect) from e
    finally:
        cursor.close()
