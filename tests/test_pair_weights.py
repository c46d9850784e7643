"""Per-pair sample weights end to end, and the reference-free / length-normalised losses in
the real trainer.

The trainer's loss is sum w_i l_i / sum w_i over a step's pairs (training.losses.weighted_mean):
a pair of weight 2 trains exactly as the same pair listed twice, a pair of weight 0 as if it
were absent. The labeler can set a human-labeled pair's weight from its votes' confidence
(`labeling.aggregation.pair_weight: confidence`); that weight reaches the training batch.
"""

import dataclasses
import json
import math

import pytest
import torch
from alignloop.config import config_from_dict
from alignloop.data import read_pairs, read_pairs_parquet, write_pairs
from alignloop.training.trainer import train_dpo

from .test_trainer import TINY, _assert_same_weights, _weights


@pytest.fixture(scope="module")
def pairs():
    return read_pairs("builtin:demo-pairs", limit=4)[0]


def _cfg(**train):
    base = {"learning_rate": 1e-3, "batch_size": 4, "grad_accum": 1, "max_steps": 1,
            "seed": 0, "lr_schedule": "constant", "beta": 0.5}
    base.update(train)
    return config_from_dict({"model": {"name": TINY, "precision": "fp32"}, "train": base})


def _train(pairs, out, cfg, **kw):
    return train_dpo(pairs, out_dir=out, policy=cfg.model.name, model_cfg=cfg.model,
                     data_cfg=cfg.data, train_cfg=cfg.train, progress=False, **kw)


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def _moved(pairs, tmp_path, cfg):
    """A policy moved away from the tiny model by one step, so that later losses are not
    all log 2 (at policy == reference every pair's loss is the same and weights cannot show)."""
    return str(_train(pairs, tmp_path / "moved", cfg).policy_dir)


def test_weight_two_trains_as_the_pair_listed_twice(pairs, tmp_path):
    cfg = _cfg()
    start = _moved(pairs, tmp_path, _cfg(learning_rate=3e-3, batch_size=4))
    a, b, c = pairs[:3]
    weighted = [dataclasses.replace(a, weight=2.0), b, c]
    listed_twice = [a, a, b, c]
    r1 = train_dpo(weighted, out_dir=tmp_path / "w", policy=start, reference=TINY,
                   model_cfg=cfg.model, data_cfg=cfg.data,
                   train_cfg=dataclasses.replace(cfg.train, batch_size=3), progress=False)
    r2 = train_dpo(listed_twice, out_dir=tmp_path / "d", policy=start, reference=TINY,
                   model_cfg=cfg.model, data_cfg=cfg.data, train_cfg=cfg.train, progress=False)
    l1, l2 = _log(tmp_path / "w")[0], _log(tmp_path / "d")[0]
    # (2 l_a + l_b + l_c) / 4 either way; a mean over 3 pairs would differ here
    assert l1["loss"] == pytest.approx(l2["loss"], abs=1e-5)
    assert l1["grad_norm"] == pytest.approx(l2["grad_norm"], rel=1e-4)
    assert abs(l1["loss"] - math.log(2)) > 1e-3  # the losses differ from pair to pair
    _assert_same_weights(_weights(r1), _weights(r2), atol=1e-5)


def test_weight_zero_pair_is_as_if_absent(pairs, tmp_path):
    cfg = _cfg(loss="soft")
    start = _moved(pairs, tmp_path, _cfg(learning_rate=3e-3))
    a, b, c = pairs[:3]
    with_zero = [a, b, dataclasses.replace(c, weight=0.0)]
    r1 = train_dpo(with_zero, out_dir=tmp_path / "z", policy=start, reference=TINY,
                   model_cfg=cfg.model, data_cfg=cfg.data,
                   train_cfg=dataclasses.replace(cfg.train, batch_size=3), progress=False)
    r2 = train_dpo([a, b], out_dir=tmp_path / "n", policy=start, reference=TINY,
                   model_cfg=cfg.model, data_cfg=cfg.data,
                   train_cfg=dataclasses.replace(cfg.train, batch_size=2), progress=False)
    assert _log(tmp_path / "z")[0]["loss"] == pytest.approx(_log(tmp_path / "n")[0]["loss"], abs=1e-5)
    _assert_same_weights(_weights(r1), _weights(r2), atol=1e-5)


def test_simpo_trains_with_no_reference_pass(pairs, tmp_path):
    # A reference model that does not exist: SimPO never loads one, nor writes reference log-probs.
    cfg = _cfg(loss="simpo", beta=2.0, simpo_gamma=1.0, max_steps=3, learning_rate=3e-3)
    result = _train(pairs, tmp_path / "run", cfg, reference=str(tmp_path / "no-such-model"))
    log = _log(tmp_path / "run")
    assert not (tmp_path / "run" / "reference_logps.parquet").exists()
    assert result.reference_hash == "" and not result.reference_reused
    # at step 0 the loss is SimPO's, not DPO's log 2: -log sigmoid(beta * avg-logp gap - gamma)
    assert abs(log[0]["loss"] - math.log(2)) > 1e-3
    assert log[-1]["loss"] < log[0]["loss"] - 0.01     # the same 4 pairs every step
    assert log[0]["rewards/chosen"] < 0                 # beta * average log-prob


def test_dpo_norm_starts_at_log_2_and_trains(pairs, tmp_path):
    cfg = _cfg(loss="dpo_norm", beta=5.0, max_steps=3, learning_rate=3e-3)
    _train(pairs, tmp_path / "run", cfg)
    log = _log(tmp_path / "run")
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference
    assert log[-1]["loss"] < log[0]["loss"] - 0.01


# --------------------------------------------------------------------------- from the labeler


def _vote_all(store, anns, confidence_of):
    """Every annotator votes "a" on every item it is given, with confidence_of(annotator index)."""
    for k, ann in enumerate(anns):
        while (got := store.next_item(ann)) is not None:
            store.record_label(ann, item_id=got.item.item_id, lease_id=got.lease_id, choice="a",
                               confidence=confidence_of(k), idempotency_key=got.lease_id)


@pytest.mark.parametrize("pair_weight", ["confidence", "none"])
def test_confidence_weights_reach_the_training_batch(tmp_path, pair_weight):
    """Queue (real SQLite) -> votes with confidence -> soft labels -> pairs.parquet ->
    the encoded pairs and the collated batch the trainer steps on."""
    from alignloop.labeling.ensemble import Ensemble
    from alignloop.labeling.labeler import (
        groups_from_completions,
        judge_candidates,
        queue_items,
        soft_labels,
    )
    from alignloop.labeling.queue.store import QueueStore
    from alignloop.models import load_tokenizer
    from alignloop.training.batching import collate, encode_pairs

    from .test_labeler import completions

    cfg = config_from_dict({"labeling": {
        "judges": [{"kind": "python", "function": "tests.test_labeler:score", "name": "kind"}],
        "selection": {"strategy": "uncertainty", "pairs_per_prompt": 2, "random_share": 0.25},
        "routing": {"auto_threshold": 0.3},
        "human": {"budget": 3, "votes_required": 2, "max_votes": 2},
        "aggregation": {"pair_weight": pair_weight}}}).labeling
    table = judge_candidates(groups_from_completions(completions()), Ensemble.from_specs(cfg.judges),
                             cfg)
    with QueueStore.open(f"sqlite:///{tmp_path / 'queue.db'}") as store:
        assert store.submit(queue_items(table, cfg.human)) == 3
        anns = [store.authenticate(store.add_annotator(f"ann{k}")).id for k in range(2)]
        _vote_all(store, anns, confidence_of=lambda k: (3, 1)[k])   # ann0 sure, ann1 unsure
        votes = store.votes(0)
    assert len(votes) == 6
    result = soft_labels(table, votes, cfg)
    human = [p for p in result.pairs if p.source == "human"]
    judged = [p for p in result.pairs if p.source == "judge"]
    assert len(human) == 3 and judged
    # confidence: (3 + 1) / 2 / 3 = 2/3 for every human pair; judge labels keep 1
    expected = 2 / 3 if pair_weight == "confidence" else 1.0
    assert [p.weight for p in human] == pytest.approx([expected] * 3)
    assert all(p.weight == 1.0 for p in judged)

    back = read_pairs_parquet(write_pairs(tmp_path / "pairs.parquet", result.pairs))
    assert sorted(p.weight for p in back) == sorted(p.weight for p in result.pairs)
    encoded, _ = encode_pairs(back, load_tokenizer(TINY), max_length=512, max_prompt_length=500)
    batch = collate(encoded, pad_id=0)
    by_id = {p.pair_id: p.weight for p in back}
    torch.testing.assert_close(batch.weight, torch.tensor([by_id[e.pair_id] for e in encoded]))


def test_confidence_weight_hand_values():
    from types import SimpleNamespace as V

    from alignloop.labeling.labeler import confidence_weight

    # a/b/tie votes of confidence 3, 2, 1 -> (3 + 2 + 1) / 3 / 3 = 2/3; both_bad is left out
    votes = [V(choice="a", confidence=3), V(choice="tie", confidence=2), V(choice="b", confidence=1),
             V(choice="both_bad", confidence=1)]
    assert confidence_weight(votes) == pytest.approx(2 / 3)
    assert confidence_weight([V(choice="a", confidence=3)]) == 1.0
    assert confidence_weight([]) == 1.0


def test_pair_weight_option_is_validated():
    from alignloop.config import ConfigError

    with pytest.raises(ConfigError, match="pair_weight"):
        config_from_dict({"labeling": {"aggregation": {"pair_weight": "votes"}}})
    with pytest.raises(ConfigError, match="simpo_gamma"):
        config_from_dict({"train": {"loss": "simpo", "simpo_gamma": -1}})


@pytest.mark.slow
def test_simpo_round_still_reports_kl_to_base(tmp_path):
    """One round of the tiny loop with SimPO: the trainer skips the reference pass, and the
    drift report still has finite KL estimates to the base model and to the reference (the
    evaluation scores its samples under those models itself)."""
    from .test_loop import run_cli

    run_dir = tmp_path / "run"
    r = run_cli(run_dir, "--set", "train.loss=simpo", "--set", "train.beta=2.0",
                "--set", "loop.rounds=1")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((run_dir / "round_000" / "report" / "report.json").read_text())
    for key in ("kl_to_base", "kl_to_reference"):
        value = report[key]["k1"]["sequence"]["value"]
        assert value is not None and math.isfinite(value), key
    log = _log(run_dir / "round_000")
    assert abs(log[0]["loss"] - math.log(2)) > 1e-3   # SimPO's loss, not DPO's log 2 at step 0
