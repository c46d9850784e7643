"""Records shared by every stage: `Pair` (one preference comparison) and `Message`.

A `Pair` is the row of `pairs.parquet` described in DESIGN.md. Prompts are
either plain text or a list of chat messages (`{"role", "content"}`); responses
are plain text (the final assistant turn).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Union

Message = dict[str, str]
Prompt = Union[str, list[Message]]  # noqa: UP007 (a runtime alias; `|` needs 3.10 types)

SOURCES = ("static", "judge", "human", "mixed")

# Column order of pairs.parquet: the artifact contract.
PAIR_COLUMNS = (
    "pair_id", "prompt", "chosen", "rejected", "p_chosen", "weight",
    "n_votes", "source", "slice", "round",
)


def pair_id_for(prompt: Prompt, chosen: str, rejected: str) -> str:
    """A stable id from the content, so the same comparison gets the same id everywhere."""
    blob = json.dumps([prompt, chosen, rejected], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def messages_from_json(text: str) -> list[dict] | None:
    """The chat messages held by JSON text (how parquet files store chat prompts), or None
    when `text` is not a JSON list of objects that each have `role` and `content`: a plain
    prompt that merely looks like JSON (`["a", "b"]`, `[urgent] ...`) stays text. The
    messages are not checked further; callers validate them."""
    if not text.lstrip().startswith("["):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if isinstance(value, list) and value and all(
            isinstance(m, dict) and "role" in m and "content" in m for m in value):
        return value
    return None


INVISIBLE = "\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff"
"""The invisible formatting characters, as a regex character range: zero-width characters
and marks, bidi embeddings, overrides and isolates, word joiners, the BOM. Neither a label
here nor an id or name in the queue (`controls`) may hold one."""
CONTROL_OR_INVISIBLE = re.compile(f"[\\x00-\\x1f\\x7f-\\x9f{INVISIBLE}]")
"""What a label (a slice name) may not hold: C0 and C1 controls, DEL, `INVISIBLE`."""


def label_problem(value: str) -> str | None:
    """Why `value` cannot be a label such as a slice name, or None. A label reaches
    `alignloop status`, gate messages, the reports and the model card, so it may hold no
    control character (a terminal escape would act on the screen, a newline would add lines
    to Markdown) and no invisible formatting character (zero-width, bidi)."""
    found = CONTROL_OR_INVISIBLE.search(value)
    if found is None:
        return None
    return (f"contains a control or invisible character (U+{ord(found.group()):04X}) at "
            f"position {found.start()}")


def unit_interval(key: str) -> float:
    """A stable draw in [0, 1] from a string, the same on every machine and run (held-out
    splits of prompts and of static pairs)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


@dataclass(frozen=True)
class Pair:
    """One preference comparison.

    `p_chosen` is the probability that `chosen` is preferred to `rejected`
    (1.0 for a hard label, in (0.5, 1) for a soft majority). `weight` scales
    the pair's loss. `origin` says where the row came from (file and row
    number) for error messages; it is not written to parquet.
    """

    prompt: Prompt
    chosen: str
    rejected: str
    p_chosen: float = 1.0
    weight: float = 1.0
    n_votes: int = 1
    source: str = "static"
    slice: str = ""
    round: int = 0
    pair_id: str = ""
    origin: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.pair_id:
            object.__setattr__(self, "pair_id", pair_id_for(self.prompt, self.chosen, self.rejected))

    @property
    def is_chat(self) -> bool:
        return isinstance(self.prompt, list)

    def to_row(self) -> dict[str, Any]:
        """The parquet row. `prompt` is always JSON text (a JSON string or a JSON list of
        messages), so plain and chat prompts round-trip without guessing."""
        row = asdict(self)
        row.pop("origin")
        row["prompt"] = json.dumps(row["prompt"], ensure_ascii=False)
        return {k: row[k] for k in PAIR_COLUMNS}

    @classmethod
    def from_row(cls, row: dict[str, Any], origin: str = "") -> Pair:
        prompt = json.loads(row["prompt"]) if isinstance(row["prompt"], str) else row["prompt"]
        fields = {k: row[k] for k in PAIR_COLUMNS if k in row and row[k] is not None}
        fields["prompt"] = prompt
        return cls(**fields, origin=origin)
