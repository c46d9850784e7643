"""The DPO trainer end to end on the tiny random model: invariances, resume, the reference cache,
the data plan."""

import json
import math

import pytest
import torch
from alignloop.config import TrainConfig, config_from_dict, field_docs
from alignloop.data import read_pairs
from alignloop.models import load_model
from alignloop.records import Pair
from alignloop.training import checkpoints
from alignloop.training.batching import TokenizationError
from alignloop.training.trainer import FAIL_AT_STEP_ENV, _plan_run, train_dpo

TINY = "builtin:tiny-random"


@pytest.fixture(scope="module")
def pairs():
    return read_pairs("builtin:demo-pairs", limit=16)[0]


def _cfg(**train):
    base = {"learning_rate": 1e-3, "batch_size": 8, "grad_accum": 1, "max_steps": 2,
            "seed": 0, "lr_schedule": "constant"}
    base.update(train)
    # The invariances here are float32's (`auto` is bf16-mixed on a CPU with bf16 units);
    # bf16-mixed is held against fp32 in test_bf16_numerics.py.
    return config_from_dict({"model": {"name": TINY, "precision": "fp32"}, "train": base})


def _train(pairs, out, cfg=None, **kw):
    cfg = cfg or _cfg()
    return train_dpo(pairs, out_dir=out, policy=cfg.model.name, model_cfg=cfg.model,
                     data_cfg=cfg.data, train_cfg=cfg.train, progress=False, **kw)


def _weights(result):
    """The trained policy's weights (a LoRA policy: its base with the adapter merged in)."""
    return {k: v for k, v in load_model(str(result.policy_dir)).state_dict().items()}


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
    for key in ("grad_norm", "lr", "logps/chosen", "rewards/accuracy"):
        assert key in log[0]
    # the wall-clock measures are beside the log, so that the log repeats byte for byte
    timing = [json.loads(x) for x in (tmp_path / "run/train_timing.jsonl").read_text().splitlines()]
    assert [t["step"] for t in timing] == [1, 2, 3]
    assert all(t["tokens_per_s"] > 0 and t["step_time_s"] > 0 for t in timing)
    assert not {"tokens_per_s", "step_time_s"} & set(log[0])


def _resume_cfg(**train):
    # how often checkpoints are saved is no part of the run: every variant below trains
    # the same steps as `straight`, and may resume a checkpoint written under another
    return _cfg(max_steps=4, batch_size=4, lr_schedule="linear", warmup_steps=1, **train)


@pytest.fixture(scope="module")
def straight(pairs, tmp_path_factory):
    """An uninterrupted run: its weights, and its step log with the steps timed."""
    out = tmp_path_factory.mktemp("straight")
    return _weights(_train(pairs, out, _resume_cfg())), _log_rows(out)


def _log_rows(out):
    """(train_log.jsonl's bytes, the steps train_timing.jsonl times)."""
    timing = (out / "train_timing.jsonl").read_text().splitlines()
    return (out / "train_log.jsonl").read_bytes(), [json.loads(x)["step"] for x in timing]


def _kill_at(pairs, out, cfg, step, monkeypatch):
    monkeypatch.setenv(FAIL_AT_STEP_ENV, str(step))
    with pytest.raises(RuntimeError, match="fault injection"):
        _train(pairs, out, cfg)
    monkeypatch.delenv(FAIL_AT_STEP_ENV)


def _checkpoint_step(out):
    return json.loads((out / "checkpoint/trainer_state.json").read_text())["step"]


def test_resume_equals_uninterrupted(pairs, tmp_path, monkeypatch, straight):
    weights, log = straight
    cfg = _resume_cfg(save_every=1, save_every_s=0)
    _kill_at(pairs, tmp_path, cfg, 2, monkeypatch)
    assert _checkpoint_step(tmp_path) == 2
    resumed = _train(pairs, tmp_path, cfg)
    assert resumed.reference_reused
    _assert_same_weights(weights, _weights(resumed), atol=0)   # bit for bit
    assert _log_rows(tmp_path) == log and log[1] == [1, 2, 3, 4]
    assert not (tmp_path / "checkpoint").exists()


def test_default_config_checkpoints_by_time_and_resumes(pairs, tmp_path, monkeypatch, straight):
    # the default `save_every_s` (no `save_every`): a clock that moves 10 minutes per look
    # makes every step a long one
    assert TrainConfig().save_every == 0 and TrainConfig().save_every_s == 600
    clock = iter(range(0, 10**6, 600))
    monkeypatch.setattr(checkpoints, "_now", lambda: next(clock))
    _kill_at(pairs, tmp_path, _resume_cfg(), 3, monkeypatch)
    assert _checkpoint_step(tmp_path) == 3
    monkeypatch.undo()
    resumed = _train(pairs, tmp_path, _resume_cfg())
    _assert_same_weights(straight[0], _weights(resumed), atol=0)
    assert _log_rows(tmp_path) == straight[1]


def test_resume_continues_a_log_cut_by_the_kill(pairs, tmp_path, monkeypatch, straight):
    # checkpoint after step 2, killed after step 3 was logged and while step 4 was being
    # written: the log restarts from the checkpoint's copy, so it ends as the uninterrupted one
    cfg = _resume_cfg(save_every=2, save_every_s=0)
    _kill_at(pairs, tmp_path, cfg, 3, monkeypatch)
    assert _checkpoint_step(tmp_path) == 2
    for name in ("train_log.jsonl", "train_timing.jsonl"):
        with open(tmp_path / name, "a") as f:
            f.write('{"step": 4, "epoch": 1.0, "lo')
    _train(pairs, tmp_path, _resume_cfg())   # another checkpoint cadence is the same run
    assert _log_rows(tmp_path) == straight[1]


def test_checkpoint_schedule_by_steps_and_by_time(monkeypatch):
    class OneProcess:
        num_processes = 1

    now = [0.0]
    monkeypatch.setattr(checkpoints, "_now", lambda: now[0])
    by_time = checkpoints.CheckpointSchedule(OneProcess(), every_steps=0, every_s=600)
    due = []
    for step, t in enumerate([100, 599, 600, 700, 1300], start=1):
        now[0] = t
        due.append(by_time.due(step))
        if due[-1]:
            by_time.saved()
    assert due == [False, False, True, False, True]   # 600 s since the start, then since a save
    by_steps = checkpoints.CheckpointSchedule(OneProcess(), every_steps=2, every_s=0)
    now[0] = 10**6
    assert [by_steps.due(s) for s in range(1, 6)] == [False, True, False, True, False]


def test_max_steps_is_the_exact_step_count_and_overrides_epochs():
    lengths = list(range(10, 26))                       # 16 pairs, 4 steps of 4 per pass

    def plan(**kw):
        steps, per_epoch, total = _plan_run(lengths, TrainConfig(batch_size=4, seed=3, **kw), 1)
        assert per_epoch == 4
        return steps[:total]

    one_pass = plan(epochs=1)
    assert len(plan(epochs=2)) == 8
    more = plan(max_steps=10, epochs=5)                 # passes 1, 2 and half of 3; epochs ignored
    assert len(more) == 10 and more[:4] == one_pass and more[4:8] == plan(epochs=2)[4:]
    assert sorted(i for step in more[4:8] for mb in step for i in mb) == list(range(16))
    assert more[4:8] != one_pass                         # the second pass in a new order
    assert plan(max_steps=2, epochs=5) == one_pass[:2]  # fewer than one pass: stops part way
    assert "exactly" in field_docs()["train.max_steps"]   # and the docs say so


def test_checkpoint_of_another_run_is_refused(pairs, tmp_path, monkeypatch):
    monkeypatch.setenv(FAIL_AT_STEP_ENV, "1")
    with pytest.raises(RuntimeError):
        _train(pairs, tmp_path / "run", _cfg(save_every=1, max_steps=2))
    monkeypatch.delenv(FAIL_AT_STEP_ENV)
    from alignloop.training.checkpoints import ForeignCheckpoint

    with pytest.raises(ForeignCheckpoint, match="different training run"):
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


def test_lora_writes_its_adapter_and_base(pairs, tmp_path):
    cfg = config_from_dict({"model": {"name": TINY, "lora": {"enabled": True, "r": 4}},
                            "train": {"max_steps": 1, "learning_rate": 1e-2, "batch_size": 8}})
    result = _train(pairs[:8], tmp_path / "lora", cfg)
    assert (result.policy_dir / "adapter_config.json").exists()
    assert not (result.policy_dir / "model.safetensors").exists()
    assert (result.policy_dir / "alignloop_base.json").read_text().count(TINY) == 1
    assert _weights(result).keys() == load_model(TINY).state_dict().keys()


def test_too_long_pair_names_file_and_row(pairs, tmp_path):
    long = Pair(prompt="hi", chosen="word " * 600, rejected="no", origin="mine.jsonl row 7")
    with pytest.raises(TokenizationError, match="mine.jsonl row 7: .*max_length=512"):
        _train([*pairs[:4], long], tmp_path / "x")
    cfg = config_from_dict({"model": {"name": TINY}, "data": {"on_invalid": "skip"},
                            "train": {"max_steps": 1, "batch_size": 4}})
    result = _train([*pairs[:4], long], tmp_path / "y", cfg)
    assert result.n_pairs == 4 and sum(result.skipped.values()) == 1


def test_skipped_pairs_are_counted_under_their_own_reason():
    # a response over max_length was counted as "prompt", the long-prompt reason's key
    from alignloop.models import load_tokenizer
    from alignloop.training.batching import encode_pairs

    rows = [Pair(prompt="hi", chosen="word " * 100, rejected="no"),
            Pair(prompt="long " * 100, chosen="yes", rejected="no"),
            Pair(prompt="hi", chosen="same", rejected="same"),
            Pair(prompt="hi", chosen="yes", rejected="no")]
    encoded, skipped = encode_pairs(rows, load_tokenizer(TINY), max_length=90,
                                    max_prompt_length=60, truncation="error", on_invalid="skip")
    assert len(encoded) == 1
    assert skipped == {"over max_length": 1, "prompt over max_prompt_length": 1,
                       "identical tokens": 1}


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_gives_the_same_weights(pairs, tmp_path, lora):
    def cfg(gc):
        return config_from_dict({"model": {"name": TINY, "lora": {"enabled": lora, "r": 4},
                                           "precision": "fp32"},
                                 "train": {"max_steps": 1, "batch_size": 4, "learning_rate": 1e-2,
                                           "gradient_checkpointing": gc}})
    a = _train(pairs[:4], tmp_path / "plain", cfg(False))
    b = _train(pairs[:4], tmp_path / "gc", cfg(True))
    _assert_same_weights(_weights(a), _weights(b), atol=1e-6)
    assert a.metrics["grad_norm"] > 0
    assert b.metrics["grad_norm"] == pytest.approx(a.metrics["grad_norm"], rel=1e-5)


def test_a_diverging_run_stops_without_saving_a_policy(pairs, tmp_path):
    # a learning rate this large sends the weights far out after one step: the next step's
    # gradient is NaN, and the run stops there instead of saving a NaN policy and exiting 0
    from alignloop.errors import TrainingDiverged

    with pytest.raises(TrainingDiverged, match=r"training diverged: loss .*, gradient norm nan .*learning_rate 1e\+30"):
        _train(pairs, tmp_path / "t", _cfg(learning_rate=1e30, max_steps=3))
    assert not (tmp_path / "t" / "policy").exists()


def test_config_refuses_non_finite_numbers_and_reads_exponents_without_a_dot():
    from alignloop.config import ConfigError

    for text, value in ((".inf", math.inf), ("-.inf", -math.inf), (".nan", math.nan),
                        ("1e999", math.inf)):
        with pytest.raises(ConfigError, match=r"'train.learning_rate': expected a finite number"):
            config_from_dict({"train": {"learning_rate": value}}, [])     # as YAML reads it
        with pytest.raises(ConfigError, match=r"'train.beta': expected a finite number"):
            config_from_dict({}, [f"train.beta={text}"])
    # YAML 1.1 reads 5e-7 (no dot) as a string: in a config file it is the number
    assert config_from_dict({"train": {"learning_rate": "5e-7"}}, []).train.learning_rate == 5e-7
