"""The `LabelQueue` protocol: both queues implement every method the loop calls, with
signatures that accept the protocol's arguments, and `MemoryQueue.wait_or_exit` behaves
like the store's, except that it never blocks (no vote can arrive while it waits)."""

from __future__ import annotations

import inspect
import logging

import pytest
from alignloop.labeling.handoff import (
    LabelQueue,
    MemoryQueue,
    QueueError,
    QueueItem,
    WaitingForLabels,
)
from alignloop.labeling.queue.store import QueueStore

# What the loop's label stage calls (loop/stages): the protocol must list all of it.
LOOP_CALLS = {"submit", "wait_or_exit", "votes"}


def protocol_methods() -> set[str]:
    return {name for name, value in vars(LabelQueue).items()
            if callable(value) and not name.startswith("_")}


def test_protocol_lists_what_the_loop_calls():
    assert protocol_methods() == LOOP_CALLS


@pytest.mark.parametrize("queue_class", [MemoryQueue, QueueStore])
def test_queue_implements_every_protocol_method(queue_class):
    for name in protocol_methods():
        wanted = inspect.signature(getattr(LabelQueue, name)).parameters
        have = inspect.signature(getattr(queue_class, name)).parameters
        for param in wanted.values():
            assert param.name in have, f"{queue_class.__name__}.{name} lacks {param.name}"
            assert have[param.name].kind == param.kind, f"{queue_class.__name__}.{name}"
        extra = [p for n, p in have.items() if n not in wanted]
        assert all(p.default is not inspect.Parameter.empty or
                   p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in extra), (
            f"{queue_class.__name__}.{name} requires arguments the protocol does not pass")


def test_both_queues_are_label_queues(tmp_path):
    assert isinstance(MemoryQueue(), LabelQueue)
    with QueueStore.open(tmp_path) as store:
        assert isinstance(store, LabelQueue)


def _queue() -> MemoryQueue:
    queue = MemoryQueue()
    queue.submit([QueueItem(f"i{k}", 1, "p", "a", "b", votes_required=2, max_votes=2)
                  for k in range(3)])
    queue.answer("ada", lambda item: "a")       # 3 of the 6 votes the round needs
    return queue


def test_memory_wait_or_exit_exit_mode():
    queue = _queue()
    with pytest.raises(WaitingForLabels) as e:
        queue.wait_or_exit(1, 0, mode="exit")    # 0: every vote the items need
    assert (e.value.round, e.value.needed, e.value.have) == (1, 6, 3)
    assert str(e.value) == "waiting for 6 labels on round 1 (3 so far); rerun to resume"
    assert queue.wait_or_exit(1, 3, mode="exit") == 3
    queue.answer("bob", lambda item: "b")
    assert queue.wait_or_exit(1, 0, mode="exit") == 6


def test_memory_wait_or_exit_block_returns_at_once_with_a_warning(caplog):
    queue = _queue()
    with caplog.at_level(logging.WARNING, logger="alignloop.labeling.handoff"):
        assert queue.wait_or_exit(1, 5, mode="block", timeout_s=3600) == 3   # no sleeping
    assert "3 of 5 labels" in caplog.text
    caplog.clear()
    assert queue.wait_or_exit(1, 2) == 3 and not caplog.text                 # enough: silent
    assert queue.wait_or_exit(9, 0) == 0                                     # nothing asked


def test_wait_mode_is_checked_by_both_queues(tmp_path):
    with pytest.raises(QueueError) as e:
        _queue().wait_or_exit(1, 0, mode="later")
    assert (e.value.status, e.value.field) == (422, "wait")
    with QueueStore.open(tmp_path) as store, pytest.raises(QueueError) as e:
        store.wait_or_exit(0, 0, mode="later")
    assert (e.value.status, e.value.field) == (422, "wait")
