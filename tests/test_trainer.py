"""The DPO trainer end to end on the tiny random model: invariances, resume, the reference cache."""

import json

import pytest
import torch
from alignloop.config import config_from_dict
from alignloop.data import read_pairs
from alignloop.records import Pair
from alignloop.training.batching import TokenizationError
from alignloop.training.trainer import FAIL_AT_STEP_ENV, train_dpo
from safetensors.torch import load_file

TINY = "builtin:tiny-random"


@pytest.fixture(scope="module")
def pairs():
    return read_pairs("builtin:demo-pairs", limit=16)[0]


def _cfg(**train):
    base = {"learning_rate": 1e-3, "batch_size": 8, "grad_accum": 1, "max_steps": 2,
            "seed": 0, "lr_schedule": "constant"}
    base.update(train)
    return config_from_dict({"model": {"name": TINY}, "train": base})


def _train(pairs, out, cfg=None, **kw):
    cfg = cfg or _cfg()
    return train_dpo(pairs, out_dir=out, policy=cfg.model.name, model_cfg=cfg.model,
                     data_cfg=cfg.data, train_cfg=cfg.train, progress=False, **kw)


def _weights(result):
    return load_file(result.policy_dir / "model.safetensors")


def _assert_same_weights(a, b, atol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0)


def test_accumulation_invariance(pairs, tmp_path):
    # batch 8 x accumulation 1 == batch 2 x accumulation 4 (same pairs per step, same mean loss)
    a = _train(pairs, tmp_path / "a", _cfg(batch_size=8, grad_accum=1))
    b = _train(pairs, tmp_path / "b", _cfg(batch_size=2, grad_accum=4))
    _assert_same_weights(_weights(a), _weights(b), atol=1e-5)
    assert a.metrics["loss"] == pytest.approx(b.metrics["loss"], abs=1e-5)


def test_one_step_lowers_loss_and_changes_weights(pairs, tmp_path):
    from alignloop.models import load_model

    start = {k: v.clone() for k, v in load_model(TINY).state_dict().items()}
    result = _train(pairs[:8], tmp_path / "run", _cfg(max_steps=3, learning_rate=3e-3))
    log = [json.loads(line) for line in (tmp_path / "run/train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert log[0]["loss"] == pytest.approx(0.693147, abs=1e-5)  # policy == reference at step 0
    assert log[-1]["loss"] < log[0]["loss"] - 0.01              # same 8 pairs every step
    assert log[-1]["rewards/margin"] > 0
    trained = _weights(result)
    changed = [k for k in trained if not torch.equal(trained[k], start[k.removeprefix("model.") if k not in start else k])]
    assert changed, "no weight changed"
    for key in ("grad_norm", "lr", "tokens_per_s", "logps/chosen", "rewards/accuracy"):
        assert key in log[0]


def test_resume_equals_uninterrupted(pairs, tmp_path, monkeypatch):
    cfg = _cfg(max_steps=4, batch_size=4, save_every=1, lr_schedule="linear", warmup_steps=1)
    straight = _train(pairs, tmp_path / "straight", cfg)
    monkeypatch.setenv(FAIL_AT_STEP_ENV, "2")
    with pytest.raises(RuntimeError, match="fault injection"):
        _train(pairs, tmp_path / "resumed", cfg)
    assert (tmp_path / "resumed/checkpoint/trainer_state.json").exists()
    monkeypatch.delenv(FAIL_AT_STEP_ENV)
    resumed = _train(pairs, tmp_path / "resumed", cfg)
    assert resumed.reference_reused
    _assert_same_weights(_weights(straight), _weights(resumed), atol=1e-6)
    steps = [json.loads(x)["step"] for x in (tmp_path / "resumed/train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert not (tmp_path / "resumed/checkpoint").exists()


def test_checkpoint_of_another_run_is_refused(pairs, tmp_path, monkeypatch):
    monkeypatch.setenv(FAIL_AT_STEP_ENV, "1")
    with pytest.raises(RuntimeError):
        _train(pairs, tmp_path / "run", _cfg(save_every=1, max_steps=2))
    monkeypatch.delenv(FAIL_AT_STEP_ENV)
    with pytest.raises(RuntimeError, match="different training run"):
        _train(pairs, tmp_path / "run", _cfg(save_every=1, max_steps=2, beta=0.5))


def test_reference_cache_reused_only_when_valid(pairs, tmp_path, caplog):
    import logging

    import pyarrow.parquet as pq

    caplog.set_level(logging.INFO, logger="alignloop.training")
    first = _train(pairs, tmp_path / "run", _cfg(max_steps=1))
    assert not first.reference_reused
    assert f"reference log-probs: 0 pairs cached, {len(pairs)} computed" in caplog.text
    cache = tmp_path / "run/reference_logps.parquet"
    table = pq.read_table(cache)
    assert table.num_rows == len(pairs) and set(table.column("reference_hash").to_pylist()) == {first.reference_hash}
    again = _train(pairs, tmp_path / "run", _cfg(max_steps=1))
    assert again.reference_reused
    assert f"reference log-probs: {len(pairs)} pairs cached, 0 computed" in caplog.text
    # a cache written for other reference weights is recomputed, never reused
    rows = table.to_pylist()
    for r in rows:
        r["reference_hash"] = "0" * 16
        r["chosen_logps"] = 123.0
    from alignloop.artifacts import write_parquet
    write_parquet(cache, rows)
    third = _train(pairs, tmp_path / "run", _cfg(max_steps=1))
    assert not third.reference_reused
    assert pq.read_table(cache).column("chosen_logps").to_pylist() == table.column("chosen_logps").to_pylist()


def test_other_reference_model(pairs, tmp_path):
    # train once, then use that policy as the reference of a second run (the loop's refresh)
    first = _train(pairs, tmp_path / "r0", _cfg(max_steps=1))
    cfg = _cfg(max_steps=1)
    second = train_dpo(pairs, out_dir=tmp_path / "r1", policy=str(first.policy_dir),
                       reference=str(first.policy_dir), model_cfg=cfg.model, data_cfg=cfg.data,
                       train_cfg=cfg.train, progress=False)
    # policy == reference at the start: the first loss is log 2
    log = json.loads((tmp_path / "r1/train_log.jsonl").read_text().splitlines()[0])
    assert log["loss"] == pytest.approx(0.693147, abs=1e-5)
    assert second.reference_hash != first.reference_hash


@pytest.mark.parametrize("loss", ["ipo", "hinge", "soft", "rdpo"])
def test_every_loss_trains(pairs, tmp_path, loss):
    soft_pairs = [Pair(**{**p.__dict__, "p_chosen": 0.8}) for p in pairs[:8]]
    result = _train(soft_pairs, tmp_path / loss, _cfg(loss=loss, max_steps=2, rpo_alpha=0.1,
                                                       flip_rate_per_pair=(loss == "rdpo")))
    assert torch.isfinite(torch.tensor(result.metrics["loss"]))


def test_lora_writes_adapter_and_merged_copy(pairs, tmp_path):
    cfg = config_from_dict({"model": {"name": TINY, "lora": {"enabled": True, "r": 4}},
                            "train": {"max_steps": 1, "learning_rate": 1e-2, "batch_size": 8}})
    result = _train(pairs[:8], tmp_path / "lora", cfg)
    assert (result.policy_dir / "adapter" / "adapter_config.json").exists()
    assert (result.policy_dir / "model.safetensors").exists()


def test_too_long_pair_names_file_and_row(pairs, tmp_path):
    long = Pair(prompt="hi", chosen="word " * 600, rejected="no", origin="mine.jsonl row 7")
    with pytest.raises(TokenizationError, match="mine.jsonl row 7: .*max_length=512"):
        _train([*pairs[:4], long], tmp_path / "x")
    cfg = config_from_dict({"model": {"name": TINY}, "data": {"on_invalid": "skip"},
                            "train": {"max_steps": 1, "batch_size": 4}})
    result = _train([*pairs[:4], long], tmp_path / "y", cfg)
    assert result.n_pairs == 4 and sum(result.skipped.values()) == 1


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_gives_the_same_weights(pairs, tmp_path, lora):
    def cfg(gc):
        return config_from_dict({"model": {"name": TINY, "lora": {"enabled": lora, "r": 4}},
                                 "train": {"max_steps": 1, "batch_size": 4, "learning_rate": 1e-2,
                                           "gradient_checkpointing": gc}})
    a = _train(pairs[:4], tmp_path / "plain", cfg(False))
    b = _train(pairs[:4], tmp_path / "gc", cfg(True))
    _assert_same_weights(_weights(a), _weights(b), atol=1e-6)
    assert a.metrics["grad_norm"] > 0
    assert b.metrics["grad_norm"] == pytest.approx(a.metrics["grad_norm"], rel=1e-5)
