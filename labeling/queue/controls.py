"""Control characters: which fields refuse them (a terminal shows the rest through
`alignloop.logs.visible`; a page through `bidi_segments`).

A control character here is C0 (U+0000-U+001F) or DEL (U+007F). PostgreSQL cannot
store NUL in text at all, and the others have no business in an id or a comment, so:

- identifiers and keys (item_id, lease_id, idempotency_key, an annotator's name)
  refuse every control character, and the invisible formatting characters (zero-width,
  bidi) that would make one name look like another;
- free text people type (a label's comment) and rows a person imports refuse all but
  tab, newline and carriage return (a browser sends a textarea's newlines as CR LF);
- item text the loop queues (prompts and responses from a model) refuses only NUL: a
  model may emit any other byte, and a run must not stop for it. Such text is shown
  escaped (the page escapes everything; the terminal uses `alignloop.logs.visible`).

Every refusal is a `QueueError` (422) naming the field, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import re

from alignloop.labeling.handoff import QueueError
from alignloop.records import INVISIBLE

# ids also refuse what is invisible but changes how they read (else "adm\u200b" passes for
# "adm" on the dashboard)
_CONTROLS = re.compile(f"[\\x00-\\x1f\\x7f{INVISIBLE}]")
_CONTROLS_BUT_WHITESPACE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NUL = re.compile(r"\x00")
RULES = {"id": _CONTROLS, "text": _CONTROLS_BUT_WHITESPACE, "model_text": _NUL}
# Bidirectional embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069): on a
# page they are shown as a visible mark, never applied (`bidi_segments`), so a response or
# a comment cannot reverse how the text after it reads.
_BIDI = re.compile(r"[\u202a-\u202e\u2066-\u2069]")
_ALLOWED = {"id": "none is allowed", "text": "only tab and newline are allowed",
            "model_text": "NUL cannot be stored"}


def check(value: object, field: str, rule: str, where: str = "") -> None:
    """Raise QueueError (422, naming `field`) when the string `value` holds a control
    character its `rule` ("id", "text" or "model_text") refuses; other values pass."""
    if not isinstance(value, str):
        return
    found = RULES[rule].search(value)
    if found is not None:
        prefix = f"{where}: " if where else ""
        raise QueueError(f"{prefix}{field} contains a control character "
                         f"(U+{ord(found.group()):04X}) at position {found.start()}; "
                         f"{_ALLOWED[rule]}", 422, field)


def check_prompt(prompt: object, rule: str, where: str = "") -> None:
    """`check` on a prompt: plain text, or each chat message's role and content."""
    if isinstance(prompt, str):
        check(prompt, "prompt", rule, where)
        return
    for message in prompt if isinstance(prompt, list) else ():
        if isinstance(message, dict):
            for part in ("role", "content"):
                check(message.get(part), "prompt", rule, where)


def bidi_segments(text: object) -> list[tuple[str, bool]]:
    """`text` as (piece, is_bidi_control) pieces for a page; a template shows a control as
    the mark `U+XXXX` (one piece, `(text, False)`, for the usual text without any). The
    pages' `marks` filter."""
    text = "" if text is None else str(text)
    out, at = [], 0
    for m in _BIDI.finditer(text):
        out += [(text[at:m.start()], False), (f"U+{ord(m.group()):04X}", True)]
        at = m.end()
    return [*out, (text[at:], False)]
