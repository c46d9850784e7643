"""A simulated panel killed mid-round and resumed labels as the uninterrupted panel: the
same votes from the same bots, the same gold items, the same display orders. (A kill
between a bot's lease and its label, then a rerun, once gave other gold items and
display orders, and with them other pairs and another policy.)"""

from __future__ import annotations

import pytest
from alignloop.demo import labelers
from alignloop.labeling.handoff import QueueItem
from alignloop.labeling.queue import simulate
from alignloop.labeling.queue.store import QueueStore

ROUND = 3


def _queue(path) -> QueueStore:
    store = QueueStore(f"sqlite:///{path}")
    store.submit([QueueItem(f"gold{i}", 0, f"Where is parcel {i}?",
                            f"Sorry! Parcel {i} ships today.", f"No idea about {i}.")
                  for i in range(6)], gold={f"gold{i}": "a" for i in range(6)})
    store.submit([QueueItem(f"it{i:02d}", ROUND, f"Question {i}: can I return my order?",
                            f"Yes, within 30 days ({i}).", f"Maybe. Ask someone else {i}.",
                            votes_required=2, max_votes=3) for i in range(14)])
    return store


def _labels(store) -> list[tuple]:
    return [(r["annotator"], r["item_id"], r["choice"], r["confidence"], r["display_order"])
            for r in store.export_raw()]


def _label(store, run_dir) -> None:
    labelers.simulate_round(store, run_dir, panel="demo", seed=7, gold_rate=0.4)


@pytest.mark.parametrize("killed_after", [1, 6, 13])
def test_a_panel_killed_mid_round_resumes_as_if_it_never_stopped(tmp_path, monkeypatch,
                                                                 killed_after):
    whole = _queue(tmp_path / "whole.db")
    (tmp_path / "a").mkdir()
    _label(whole, tmp_path / "a")
    expected = _labels(whole)
    assert any(item.startswith("gold") for _, item, *_ in expected)

    store = _queue(tmp_path / "killed.db")
    (tmp_path / "b").mkdir()
    answered, real = [], simulate._answer

    def dies(client, name, answerer, item, seed, report):
        # the bot holds its lease on `item` when the process dies: never labeled
        if len(answered) == killed_after:
            raise KeyboardInterrupt
        answered.append(item["item_id"])
        return real(client, name, answerer, item, seed, report)

    monkeypatch.setattr(simulate, "_answer", dies)
    with pytest.raises(KeyboardInterrupt):
        _label(store, tmp_path / "b")
    assert len(_labels(store)) == killed_after
    monkeypatch.setattr(simulate, "_answer", real)
    _label(store, tmp_path / "b")
    assert _labels(store) == expected


def test_bots_registered_again_in_a_queue_that_does_not_know_their_tokens(tmp_path):
    # the run moved to another queue database (labeling.human.db): the kept tokens are
    # unknown there, and the bots register anew instead of failing with 401 on every rerun
    first = _queue(tmp_path / "first.db")
    (tmp_path / "run").mkdir()
    _label(first, tmp_path / "run")
    other = _queue(tmp_path / "other.db")
    _label(other, tmp_path / "run")
    assert {a.name for a in other.annotators()} == {a.name for a in first.annotators()}
    assert _labels(other) == _labels(first)
