"""What the queue tests read or change past the store's API (which has no methods that only
tests need): counts of a round; `disable` names the store's call the tests use; a clock
the test moves by hand."""

from __future__ import annotations


def pending(store, round: int) -> int:
    """Items of the round that still need votes."""
    return store.round_counts(round)[2]


def label_count(store, round: int) -> int:
    """Labels recorded on the round's (non-gold) items."""
    return store.round_counts(round)[0]


def disable(store, name: str) -> None:
    """Disable an annotator: its token and web sessions stop working."""
    store.disable_annotator(name)


class Clock:
    """A clock the test moves by hand (`clock.t += 60`)."""

    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t
