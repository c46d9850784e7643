"""Labeling guidelines: one markdown text for the whole queue, optionally one per round,
versioned, and a safe rendering of them.

Every change is a new row with the next version number (queue-wide; versions never
repeat), so what annotators were told at any time can be read back. The guideline an
item is labeled under is its round's latest one if that round has any, else the latest
queue-wide one; its version is recorded with every label (`labels.guideline_version`,
set inside the label's INSERT through `GUIDELINE_OF_ITEM`).

Rendering never produces HTML: `blocks` parses a small markdown subset (`#` headings,
`-`/`*` lists, paragraphs, `**bold**` and `` `code` `` inside them) into plain data,
and the page's template writes every piece through Jinja's autoescape. Anything else in
the text (HTML, links, images) is shown as the characters it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from alignloop.labeling.handoff import QueueError
from alignloop.labeling.queue import controls
from sqlalchemy import Connection, text

MAX_BODY = 50_000
ALL_ROUNDS = -1

# The guideline of an item's round (`:round`): that round's latest, else the queue's.
_CURRENT = ("SELECT version, round, body, author, created_at FROM guidelines "
            "WHERE round IN (:round, -1) ORDER BY CASE WHEN round = -1 THEN 1 ELSE 0 END, "
            "version DESC LIMIT 1")
# The version for a label on item :i, computed inside the label's INSERT (`leases._SQL`).
GUIDELINE_OF_ITEM = ("SELECT g.version FROM guidelines g WHERE g.round IN ((SELECT round "
                     "FROM items WHERE item_id = :i), -1) ORDER BY CASE WHEN g.round = -1 "
                     "THEN 1 ELSE 0 END, g.version DESC LIMIT 1")


@dataclass(frozen=True)
class Guideline:
    """One version of a guideline; `round` is -1 for the whole queue."""

    version: int
    round: int
    body: str
    author: str
    created_at: float


def check_body(body: object) -> str:
    """The guideline text, or QueueError (422, field "guideline")."""
    if not isinstance(body, str) or not body.strip() or len(body) > MAX_BODY:
        raise QueueError(f"guideline must be 1-{MAX_BODY} characters of text", 422, "guideline")
    controls.check(body, "guideline", "text")
    # line ends as a file read in text mode has them: a lone CR would make a terminal
    # print the next sentence over the one before
    return body.replace("\r\n", "\n").replace("\r", "\n")


def set_guideline(store, body: str, *, round: int | None = None, author: str = "") -> int:
    """Store a new version of the queue's guideline (or round `round`'s); returns it."""
    body = check_body(body)
    scope = ALL_ROUNDS if round is None else int(round)
    if scope < ALL_ROUNDS:
        raise QueueError(f"round must be >= 0, got {round}", 422, "round")

    def tx(conn: Connection) -> int:
        version = conn.execute(text("SELECT COALESCE(MAX(version), 0) + 1 FROM guidelines")
                               ).scalar_one()
        conn.execute(text("INSERT INTO guidelines (round, version, body, author, created_at) "
                          "VALUES (:r, :v, :b, :a, :t)"),
                     {"r": scope, "v": version, "b": body, "a": author, "t": store.clock()})
        return int(version)

    return store.transaction(tx)


def current(store, round: int | None = None) -> Guideline | None:
    """The guideline shown for items of `round` (None: the queue-wide one), or None."""
    rows = store.read(_CURRENT, {"round": ALL_ROUNDS if round is None else int(round)})
    return Guideline(*rows[0]) if rows else None


def history(store) -> list[Guideline]:
    """Every version, newest first."""
    rows = store.read("SELECT version, round, body, author, created_at FROM guidelines "
                      "ORDER BY version DESC")
    return [Guideline(*r) for r in rows]


def shown(store, assignment) -> dict | None:
    """What the labeling page shows for an assignment: {version, round, blocks}, or None."""
    if assignment is None:
        return None
    g = current(store, assignment.item.round)
    return None if g is None else {"version": g.version, "round": g.round,
                                   "blocks": blocks(g.body)}


# --------------------------------------------------------------------------- rendering

_INLINE = re.compile(r"\*\*(.+?)\*\*|`([^`]+)`")
_HEADING = re.compile(r"^(#{1,3})\s+(.*)$")
_BULLET = re.compile(r"^\s*[-*]\s+(.*)$")


def spans(line: str) -> list[dict]:
    """Inline pieces of a line: {"kind": "text"|"strong"|"code", "text": ...}."""
    out, at = [], 0
    for m in _INLINE.finditer(line):
        if m.start() > at:
            out.append({"kind": "text", "text": line[at:m.start()]})
        out.append({"kind": "strong", "text": m.group(1)} if m.group(1) is not None
                   else {"kind": "code", "text": m.group(2)})
        at = m.end()
    if at < len(line):
        out.append({"kind": "text", "text": line[at:]})
    return out


def blocks(body: str) -> list[dict]:
    """The markdown subset as data: {"kind": "h1"|"h2"|"h3"|"p"|"ul", "spans" or "items"};
    a list's items are span lists. Consecutive plain lines form one paragraph."""
    out: list[dict] = []
    para: list[str] = []

    def flush() -> None:
        if para:
            out.append({"kind": "p", "spans": spans(" ".join(para))})
            para.clear()

    for raw in body.split("\n"):
        line = raw.rstrip()
        heading, bullet = _HEADING.match(line), _BULLET.match(line)
        if not line.strip():
            flush()
        elif heading:
            flush()
            out.append({"kind": f"h{len(heading.group(1))}", "spans": spans(heading.group(2))})
        elif bullet:
            flush()
            if not out or out[-1]["kind"] != "ul":
                out.append({"kind": "ul", "items": []})
            out[-1]["items"].append(spans(bullet.group(1)))
        else:
            para.append(line.strip())
    flush()
    return out
