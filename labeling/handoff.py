"""What the labeler hands to people and what comes back: `QueueItem`, `HumanVote`
and the `LabelQueue` protocol the human queue implements (the SQL-backed queue
with its web page is one implementation; `MemoryQueue` serves tests and driver
scripts that collect votes their own way), with the errors a queue raises.

The loop's label stage uses exactly the protocol: `submit` the round's items,
`wait_or_exit` for their votes (or stop the run until they come), read `votes`.

Choices are always relative to the item's `a` and `b`, whatever order the two
responses were shown in; `display_order` records that order ("ab" or "ba").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from alignloop.errors import AlignloopError, Paused
from alignloop.labeling import LabelingError
from alignloop.labeling.aggregate import CHOICES
from alignloop.records import Prompt

log = logging.getLogger(__name__)
WAIT_MODES = ("block", "exit")


class QueueError(AlignloopError):
    """A request the queue refuses; `status` is the HTTP status the web app answers with
    (404 unknown item or lease, 409 conflict, 422 invalid field)."""

    def __init__(self, message: str, status: int = 422, field: str = ""):
        super().__init__(message)
        self.status = status
        self.field = field


class WaitingForLabels(Paused):
    """The round needs more human labels; a later run resumes where this one stopped."""

    def __init__(self, round: int, needed: int, have: int):
        self.round, self.needed, self.have = round, needed, have
        super().__init__(f"waiting for {needed} labels on round {round} ({have} so far); "
                         "rerun to resume")


def check_wait_mode(mode: str) -> None:
    if mode not in WAIT_MODES:
        raise QueueError(f"wait mode must be block or exit, got {mode!r}", 422, "wait")


def check_gold(gold: dict[str, str], items: Sequence) -> None:
    """Gold answers must name submitted items and be a choice (QueueError 422, "gold")."""
    unknown = sorted(set(gold) - {it.item_id for it in items})
    if unknown:
        raise QueueError(f"gold answers for items not submitted: {unknown[:5]}", 422, "gold")
    bad = {k: v for k, v in gold.items() if v not in CHOICES}
    if bad:
        raise QueueError(f"gold answers must be one of {list(CHOICES)}: {bad}", 422, "gold")


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
    # "human" for a vote; "adjudicated" for an admin's final verdict on a disputed item,
    # which aggregation counts as a strong vote (`aggregate_votes(verdicts=...)`)
    source: str = "human"

    def __post_init__(self) -> None:
        if self.choice not in CHOICES:
            raise LabelingError(f"vote on item {self.item_id} by {self.annotator}: choice "
                                f"{self.choice!r} is not one of {list(CHOICES)}")
        if self.display_order not in ("ab", "ba"):
            raise LabelingError(f"vote on item {self.item_id}: display_order must be ab or ba")


@runtime_checkable
class LabelQueue(Protocol):
    """What the loop's label stage calls on a queue, and nothing more."""

    def submit(self, items: Sequence[QueueItem]) -> int:
        """Add items (an item already in the queue is left as it is); returns how many were new."""
        ...

    def wait_or_exit(self, round: int, min_labels: int, *, mode: str = "block",
                     timeout_s: float = 3600.0) -> int:
        """Wait for `min_labels` labels on the round (0: every vote its items need) and
        return the labels so far. "block": wait up to `timeout_s`, then go on with what
        there is. "exit": raise `WaitingForLabels` at once when the round is short.
        Any other mode is a `QueueError` (422, field "wait")."""
        ...

    def votes(self, round: int) -> list[HumanVote]:
        """Every vote recorded so far on the round's items."""
        ...

# A queue that holds gold items (pairs with known answers) may also offer
#     gold_votes() -> (every vote on a gold item, {gold item id: answer})
# which `labeling.aggregation.gold_calibration` needs; QueueStore and MemoryQueue do.


class MemoryQueue:
    """A `LabelQueue` in memory: `answer(annotator, fn)` lets a function vote on every item
    that still needs a vote from that annotator, and on every gold item once.

    Votes arrive only through `answer`, on the caller's thread, so none can come while
    `wait_or_exit` blocks: "block" returns at once with what there is (a warning when the
    round is short) rather than sleeping through its timeout for nothing."""

    def __init__(self):
        self.items: dict[str, QueueItem] = {}
        self.gold: dict[str, str] = {}
        self._votes: list[HumanVote] = []

    def submit(self, items: Sequence[QueueItem], gold: dict[str, str] | None = None) -> int:
        """As `LabelQueue.submit`; `gold[item_id]` marks a new item as gold with that answer."""
        gold = dict(gold or {})
        check_gold(gold, items)
        new = [it for it in items if it.item_id not in self.items]
        self.items.update({it.item_id: it for it in new})
        self.gold.update({it.item_id: gold[it.item_id] for it in new if it.item_id in gold})
        return len(new)

    def votes(self, round: int) -> list[HumanVote]:
        return [v for v in self._votes if v.round == round and v.item_id not in self.gold]

    def gold_votes(self) -> tuple[list[HumanVote], dict[str, str]]:
        """(every vote on a gold item; {gold item: answer})."""
        return [v for v in self._votes if v.item_id in self.gold], dict(self.gold)

    def _regular(self, round: int) -> list[QueueItem]:
        return [it for it in self.items.values() if it.round == round and it.item_id not in self.gold]

    def _count(self, item_id: str) -> int:
        return sum(v.item_id == item_id for v in self._votes)

    def pending(self, round: int) -> int:
        """Items of the round that still need votes."""
        return sum(1 for it in self._regular(round) if self._count(it.item_id) < it.votes_required)

    def wait_or_exit(self, round: int, min_labels: int, *, mode: str = "block",
                     timeout_s: float = 3600.0) -> int:
        """See `LabelQueue.wait_or_exit` and the class docstring; never sleeps."""
        check_wait_mode(mode)
        have = len(self.votes(round))
        missing = sum(max(0, it.votes_required - self._count(it.item_id))
                      for it in self._regular(round))
        target = min_labels if min_labels > 0 else have + missing
        if have >= target:
            return have
        if mode == "exit":
            raise WaitingForLabels(round, target, have)
        log.warning("round %d has %d of %d labels; a MemoryQueue cannot receive votes while "
                    "waiting, so the round goes on with what it has", round, have, target)
        return have

    def answer(self, annotator: str, fn: Callable[[QueueItem], str]) -> int:
        done = 0
        for it in self.items.values():
            seen = any(v.item_id == it.item_id and v.annotator == annotator for v in self._votes)
            full = it.item_id not in self.gold and self._count(it.item_id) >= it.votes_required
            if seen or full:
                continue
            self._votes.append(HumanVote(it.item_id, annotator, fn(it), it.round))
            done += 1
        return done
