"""Gold items measure how often the aggregated human label is wrong (`alignloop.labeling.gold`):
the estimator on a panel whose annotators share their mistakes, the labeler's gold
calibration of human pairs, and gold items through the real SQLite queue and the CLI."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from alignloop.cli import main
from alignloop.config import config_from_dict
from alignloop.data import read_pairs
from alignloop.labeling import LabelingError
from alignloop.labeling.aggregate import Vote, aggregate_votes
from alignloop.labeling.ensemble import Ensemble
from alignloop.labeling.gold import calibrate_to_gold, calibrated, flip_rate, gold_targets
from alignloop.labeling.handoff import MemoryQueue, QueueError, QueueItem
from alignloop.labeling.labeler import (
    groups_from_completions,
    judge_candidates,
    queue_items,
    soft_labels,
)
from alignloop.labeling.queue.store import QueueStore
from alignloop.records import Pair
from alignloop.stages.label import label

from .test_labeler import completions


def test_targets_and_bad_answers():
    assert gold_targets({"x": "a", "y": "b", "z": "tie", "w": "both_bad"}) == {"x": 1.0, "y": 0.0, "z": 0.5}
    with pytest.raises(LabelingError, match="gold item 'q': answer 'c'"):
        gold_targets({"q": "c"})


def test_temperature_of_an_overconfident_panel_is_recovered():
    # posteriors p = sigmoid(3x) where the truth is a with probability sigmoid(x): T = 3
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1.5, 4000)
    truth = rng.random(4000) < 1 / (1 + np.exp(-x))
    post = {f"g{i}": float(1 / (1 + np.exp(-3 * v))) for i, v in enumerate(x)}
    answers = {f"g{i}": "a" if t else "b" for i, t in enumerate(truth)}
    fit = calibrate_to_gold(post, answers)
    assert fit.n == 4000 and 2.6 < fit.temperature < 3.4
    assert fit.nll_after < fit.nll_before
    # gold items with no posterior (no vote yet) are left out, not an error
    assert calibrate_to_gold({}, answers).n == 0


def test_flip_rate_is_the_mean_chance_the_chosen_side_is_wrong():
    assert flip_rate([0.9, 0.2], [True, False]) == pytest.approx((0.1 + 0.2) / 2)
    assert flip_rate([0.9, 0.9], [True, False]) == pytest.approx((0.1 + 0.9) / 2)
    # a large temperature says "the labels are coin flips"; T = 1 changes nothing
    assert flip_rate([0.99, 0.01], [True, False], temperature=1e6) == pytest.approx(0.5, abs=1e-4)
    assert np.allclose(calibrated([0.0, 0.3, 1.0], 1.0), [0.0, 0.3, 1.0])
    for p_a, chosen, match in (([0.5], [True, True], "1 posteriors but 2"), ([], [], "no pairs"),
                               ([1.2], [True], r"in \[0, 1\]"), ([math.nan], [True], r"in \[0, 1\]")):
        with pytest.raises(LabelingError, match=match):
            flip_rate(p_a, chosen)
    with pytest.raises(LabelingError, match="temperature"):
        calibrated([0.5], 0.0)


def _shared_mistake_panel(n_items: int, prefix: str, rng: random.Random):
    """Three votes per item from five annotators who are each right 85% of the time on
    ordinary items but share a trap: on a third of the items every one of them leans the
    wrong way (70%). Returns (votes, truth_a per item)."""
    votes, truth = [], {}
    for i in range(n_items):
        item = f"{prefix}{i}"
        truth[item] = rng.random() < 0.5
        right = 0.3 if rng.random() < 1 / 3 else 0.85
        for who in rng.sample(range(5), 3):
            says_truth = rng.random() < right
            votes.append(Vote(item, f"ann{who}", "a" if says_truth == truth[item] else "b"))
    return votes, truth


def test_gold_items_see_the_shared_mistakes_the_posteriors_cannot():
    rng = random.Random(0)
    train, truth = _shared_mistake_panel(600, "t", rng)
    gold, gold_truth = _shared_mistake_panel(150, "g", rng)
    post = aggregate_votes([*train, *gold]).posteriors
    tally = {}
    for v in train:
        tally[v.item] = tally.get(v.item, 0) + (1 if v.choice == "a" else -1)
    items = sorted(truth)
    majority = [tally[i] > 0 for i in items]
    true_rate = float(np.mean([m != truth[i] for m, i in zip(majority, items, strict=True)]))
    p_a = [post[i].p_a for i in items]
    from_posteriors = flip_rate(p_a, majority)
    fit = calibrate_to_gold({i: post[i].p_a for i in gold_truth},
                            {i: "a" if t else "b" for i, t in gold_truth.items()})
    from_gold = flip_rate(p_a, majority, fit.temperature)
    assert fit.temperature > 1.2                   # the votes are overconfident
    assert abs(from_gold - true_rate) < 0.05       # 150 gold items: sd of a rate ~0.04
    assert abs(from_gold - true_rate) < abs(from_posteriors - true_rate) - 0.05


# --------------------------------------------------------------------------- the labeler


def _table(**aggregation):
    cfg = config_from_dict({"labeling": {
        "judges": [{"kind": "python", "function": "tests.test_labeler:score", "name": "kind"}],
        "selection": {"strategy": "uncertainty", "pairs_per_prompt": 2, "random_share": 0.25},
        "routing": {"auto_threshold": 0.3}, "human": {"budget": 4},
        "aggregation": aggregation}}).labeling
    table = judge_candidates(groups_from_completions(completions()), Ensemble.from_specs(cfg.judges),
                             cfg, round=1)
    return cfg, table


def _queue_with_gold(table, cfg, n_gold=12):
    """Four routed items and `n_gold` gold items; three annotators who vote "a" on
    everything, so half the gold answers ("b") say they are wrong half the time."""
    queue = MemoryQueue()
    queue.submit(queue_items(table, cfg.human))
    gold = [QueueItem(f"gold{k}", 0, "Say hi.", f"hi {k}", f"hello {k}") for k in range(n_gold)]
    queue.submit(gold, gold={g.item_id: "a" if k % 2 else "b" for k, g in enumerate(gold)})
    for name in ("ann1", "ann2", "ann3"):
        queue.answer(name, lambda it: "a")
    return queue


def test_gold_calibration_softens_the_human_pairs_of_an_unreliable_panel():
    cfg, table = _table(gold_calibration=True)
    queue = _queue_with_gold(table, cfg)
    votes = queue.votes(1)
    assert len(votes) == 4 and queue.votes(0) == []      # the gold votes are no round's votes
    plain = soft_labels(table, votes, cfg, round=1)
    gold = soft_labels(table, votes, cfg, round=1, gold=queue.gold_votes())
    human = {p.pair_id: p for p in plain.pairs if p.source == "human"}
    fitted = {p.pair_id: p for p in gold.pairs if p.source == "human"}
    assert len(human) == 4 and human.keys() == fitted.keys() and not plain.gold
    # unanimous votes that are wrong on half the gold items: the posteriors move to 1/2
    assert gold.gold["n"] == 12 and gold.gold["gold_votes"] == 36
    assert gold.gold["temperature"] > 5
    for pid, p in fitted.items():
        assert 0.5 <= p.p_chosen < 0.6 < human[pid].p_chosen
        assert (p.chosen, p.rejected) == (human[pid].chosen, human[pid].rejected)


def test_gold_calibration_with_too_few_gold_items_says_so(tmp_path):
    cfg, table = _table(gold_calibration=True)
    queue = _queue_with_gold(table, cfg, n_gold=2)
    pairs = label(tmp_path, candidates=table, ensemble=None, queue=queue, cfg=cfg, round=1)
    report = json.loads((tmp_path / "calibration.json").read_text())["human_gold"]
    assert report["n"] == 2 and report["temperature"] == 1.0 and "only 2" in report["note"]
    assert [p for p in pairs if p.source == "human"]


def test_gold_calibration_refuses_a_queue_without_gold_before_queueing(tmp_path):
    cfg, table = _table(gold_calibration=True)

    class NoGold:                       # a LabelQueue that keeps no gold items
        submitted = []

        def submit(self, items):
            self.submitted.extend(items)

    queue = NoGold()
    with pytest.raises(LabelingError, match="gold_calibration.*NoGold"):
        label(tmp_path, candidates=table, ensemble=None, queue=queue, cfg=cfg, round=1)
    assert queue.submitted == [] and not any(tmp_path.iterdir())


def test_memory_queue_refuses_gold_answers_it_cannot_use():
    queue = MemoryQueue()
    item = QueueItem("x", 0, "p", "a", "b")
    with pytest.raises(QueueError, match="gold answers"):
        queue.submit([item], gold={"x": "maybe"})
    with pytest.raises(QueueError, match="gold answers"):
        queue.submit([item], gold={"y": "a"})
    assert not queue.items


# --------------------------------------------------------------------------- the real queue


def test_gold_items_through_the_cli_and_the_sqlite_queue(tmp_path, capsys):
    pairs = tmp_path / "gold.jsonl"
    pairs.write_text("".join(
        f'{{"prompt": "Greet customer {k}.", "chosen": "Hello {k}, welcome!", "rejected": "What {k}."}}\n'
        for k in range(6)))
    run_dir = tmp_path / "run"
    assert main(["-q", "queue", "import", "--run-dir", str(run_dir), str(pairs), "--gold"]) == 0
    assert "queued 6 new gold items for round 0" in capsys.readouterr().out
    ids = {p.pair_id for p in read_pairs(pairs)[0]}
    with QueueStore.open(run_dir) as store:
        store.push([QueueItem("r1", 0, "p", "a1", "b1")], 0)
        me = store.authenticate(store.add_annotator("ada")).id
        rng = random.Random(0)
        while (got := store.next_item(me, gold_rate=1.0, rng=rng)) is not None:
            # ada prefers the greeting (each gold pair's chosen side), and b on the regular item
            choice = "a" if got.item.a.startswith("Hello") else "b"
            store.record_label(me, item_id=got.item.item_id, lease_id=got.lease_id,
                               choice=choice, idempotency_key=got.lease_id)
        gold_votes, answers = store.gold_votes()
        sides = {r.item_id: "a" if r.a.startswith("Hello") else "b"
                 for r in store.read("SELECT item_id, a FROM items WHERE gold IS NOT NULL")}
        assert answers == sides and answers.keys() == ids     # the answer is the chosen side
        assert sorted(v.item_id for v in gold_votes) == sorted(ids)   # each seen once
        assert [v.item_id for v in store.votes(0)] == ["r1"]           # not a round's vote
        assert all(v.annotator == "ada" for v in gold_votes)
        assert store.progress(me)["gold_accuracy"] == 1.0


def test_gold_import_puts_the_chosen_side_on_both_a_and_b(tmp_path):
    pairs = [Pair(f"Say hi {k}.", f"Hi {k}!", f"No {k}.") for k in range(40)]
    with QueueStore.open(tmp_path) as store:
        assert store.push(pairs, 0, gold=True) == 40
        _, answers = store.gold_votes()
        store.push(pairs, 0, gold=True)                  # queued already: the answers stay
        assert store.gold_votes()[1] == answers
    # both sides occur, so a temperature can be fitted
    assert 10 <= sum(a == "a" for a in answers.values()) <= 30
    with QueueStore.open(tmp_path / "seeded") as store:
        store.push(pairs, 0, gold=True, coin=random.Random(7))
        seeded = store.gold_votes()[1]
    with QueueStore.open(tmp_path / "seeded again") as store:
        store.push(pairs, 0, gold=True, coin=random.Random(7))
        assert store.gold_votes()[1] == seeded


def test_gold_answers_cannot_be_computed_from_the_item_ids(tmp_path):
    # annotators see item ids: an answer that is a function of the id (a hash coin) lets a
    # bot pass every gold check unread. Two queues importing the same gold pairs draw
    # their sides independently (equal by chance with probability 2^-40), and neither
    # follows the public coin of the id the importer used before
    from alignloop.records import unit_interval

    pairs = [Pair(f"Say hi {k}.", f"Hi {k}!", f"No {k}.") for k in range(40)]
    drawn = []
    for name in ("one", "two"):
        with QueueStore.open(tmp_path / name) as store:
            store.push(pairs, 0, gold=True)
            drawn.append(store.gold_votes()[1])
    public = {p.pair_id: "b" if unit_interval(f"gold/{p.pair_id}") < 0.5 else "a" for p in pairs}
    assert drawn[0].keys() == drawn[1].keys() == public.keys()
    assert drawn[0] != drawn[1] and public not in drawn


def test_label_stage_calibrates_on_the_sqlite_queues_gold_items(tmp_path):
    cfg, table = _table(gold_calibration=True)
    gold = [Pair(f"Say hi {k}.", f"Hi {k}!", f"No {k}.") for k in range(10)]
    with QueueStore.open(tmp_path / "q") as store:
        store.push(gold, 0, gold=True, coin=random.Random(0))
        anns = [store.authenticate(store.add_annotator(f"ann{k}")).id for k in range(3)]

        def simulate(round):   # everyone votes a on every item, gold or not
            for ann in anns:
                while (got := store.next_item(ann, gold_rate=1.0, rng=random.Random(ann))) is not None:
                    store.record_label(ann, item_id=got.item.item_id, lease_id=got.lease_id,
                                       choice="a", idempotency_key=got.lease_id)

        pairs = label(tmp_path, candidates=table, ensemble=None, queue=store, cfg=cfg, round=1,
                      simulate=simulate)
        _, answers = store.gold_votes()
    fit = json.loads((tmp_path / "calibration.json").read_text())["human_gold"]
    assert fit["gold_items"] == 10 and fit["n"] == 10 and fit["gold_votes"] == 30
    wrong = sum(a == "b" for a in answers.values()) / 10        # "always a" is wrong this often
    assert 0.2 <= wrong <= 0.8 and fit["temperature"] > 1.5     # so the votes are overconfident
    human = [p for p in pairs if p.source == "human"]
    assert len(human) == 4 and all(0.5 <= p.p_chosen < 0.75 for p in human)


def test_gold_items_the_panel_gets_all_right_do_not_make_labels_certain():
    # every gold item answered as its (unsure) posterior leans: the unbounded fit would
    # sharpen to T = 0.05 and p = 1; gold calibration only softens, so T stays 1
    post = {f"g{k}": 0.7 if k % 2 else 0.3 for k in range(16)}
    answers = {f"g{k}": "a" if k % 2 else "b" for k in range(16)}
    fit = calibrate_to_gold(post, answers)
    assert fit.temperature == 1.0 and "only softens" in fit.note and "0.05" in fit.note
    assert fit.nll_after == fit.nll_before and fit.n == 16
