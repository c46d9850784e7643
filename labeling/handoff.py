"""What the labeler hands to people and what comes back: `QueueItem`, `HumanVote`
and the `LabelQueue` protocol the human queue implements (the SQL-backed queue
with its web page is one implementation; `MemoryQueue` serves tests and driver
scripts that collect votes their own way).

Choices are always relative to the item's `a` and `b`, whatever order the two
responses were shown in; `display_order` records that order ("ab" or "ba").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from alignloop.labeling import LabelingError
from alignloop.labeling.aggregate import CHOICES  # noqa: F401 (the queue imports it from here)
from alignloop.records import Prompt


@dataclass(frozen=True)
class QueueItem:
    item_id: str
    round: int
    prompt: Prompt
    a: str
    b: str
    slice: str = ""
    priority: float = 0.0
    votes_required: int = 1
    max_votes: int = 3


@dataclass(frozen=True)
class HumanVote:
    item_id: str
    annotator: str
    choice: str
    round: int = 0
    confidence: int = 2
    display_order: str = "ab"
    created_at: float = field(default_factory=time.time)
    comment: str = ""

    def __post_init__(self) -> None:
        if self.choice not in CHOICES:
            raise LabelingError(f"vote on item {self.item_id} by {self.annotator}: choice "
                                f"{self.choice!r} is not one of {list(CHOICES)}")
        if self.display_order not in ("ab", "ba"):
            raise LabelingError(f"vote on item {self.item_id}: display_order must be ab or ba")


@runtime_checkable
class LabelQueue(Protocol):
    def submit(self, items: Sequence[QueueItem]) -> int:
        """Add items (an item already in the queue is left as it is); returns how many were new."""
        ...

    def votes(self, round: int) -> list[HumanVote]:
        """Every vote recorded so far on the round's items."""
        ...

    def pending(self, round: int) -> int:
        """Items of the round that still need votes."""
        ...


class MemoryQueue:
    """A `LabelQueue` in memory: `answer(annotator, fn)` lets a function vote on every item
    that still needs a vote from that annotator."""

    def __init__(self):
        self.items: dict[str, QueueItem] = {}
        self._votes: list[HumanVote] = []

    def submit(self, items: Sequence[QueueItem]) -> int:
        new = [it for it in items if it.item_id not in self.items]
        self.items.update({it.item_id: it for it in new})
        return len(new)

    def votes(self, round: int) -> list[HumanVote]:
        return [v for v in self._votes if v.round == round]

    def _count(self, item_id: str) -> int:
        return sum(v.item_id == item_id for v in self._votes)

    def pending(self, round: int) -> int:
        return sum(1 for it in self.items.values()
                   if it.round == round and self._count(it.item_id) < it.votes_required)

    def answer(self, annotator: str, fn: Callable[[QueueItem], str]) -> int:
        done = 0
        for it in self.items.values():
            seen = any(v.item_id == it.item_id and v.annotator == annotator for v in self._votes)
            if seen or self._count(it.item_id) >= it.votes_required:
                continue
            self._votes.append(HumanVote(it.item_id, annotator, fn(it), it.round))
            done += 1
        return done
