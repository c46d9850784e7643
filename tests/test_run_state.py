"""Run state, stage markers, config-change refusal; prompt pool; failure slices."""

import json
from dataclasses import astuple

import pytest
from alignloop.config import config_from_dict
from alignloop.generation import PromptItem
from alignloop.prompt_pool import PromptError, load_pool, read_prompts
from alignloop.rounds.loop import stage_names
from alignloop.rounds.state import Run, RunError, status_table
from alignloop.stages.slices import choose_failures, pick_prompts, slice_stats


def test_stage_runs_once_and_records_outputs(tmp_path):
    run = Run(tmp_path, config_from_dict({}), stage_names=stage_names)
    calls = []

    def work():
        calls.append(1)
        (run.round_dir(0) / "out.txt").write_text("hello")

    assert run.stage(0, "assemble", work, ["out.txt"]) is True
    assert Run(tmp_path, config_from_dict({}), stage_names=stage_names).stage(0, "assemble", work, ["out.txt"]) is False
    assert len(calls) == 1
    state = json.loads((tmp_path / "state.json").read_text())
    info = state["rounds"]["0"]["stages"]["assemble"]
    assert info["status"] == "done" and info["outputs"]["out.txt"]["bytes"] == 5
    # a missing output makes the stage run again
    (run.round_dir(0) / "out.txt").unlink()
    assert run.stage(0, "assemble", work, ["out.txt"]) is True
    assert "assemble" in status_table(tmp_path, stage_names)


@pytest.mark.parametrize("text, why", [
    ('{"rounds": {', "is not a readable run state (Expecting"),
    ("[]", "is not a run state (no 'rounds' mapping)"),
    ('{"rounds": 3}', "is not a run state (no 'rounds' mapping)"),
])
def test_a_state_file_that_is_not_one_is_refused_by_name_and_left_as_it_is(tmp_path, text, why):
    from alignloop.report.inputs import previous_round
    from alignloop.report.write import write_run_report

    (tmp_path / "state.json").write_text(text)
    for use in (lambda: Run(tmp_path, config_from_dict({}), stage_names=stage_names),
                lambda: status_table(tmp_path, stage_names), lambda: write_run_report(tmp_path),
                lambda: previous_round(tmp_path, 1)):
        with pytest.raises(RunError, match=f"state.json {why}".replace("(", r"\(").replace(")", r"\)")
                           .replace("[", r"\[")):
            use()
    assert (tmp_path / "state.json").read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_interrupted_stage_is_redone(tmp_path):
    run = Run(tmp_path, config_from_dict({}), stage_names=stage_names)

    def boom():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run.stage(0, "train", boom, [])
    info = Run(tmp_path, config_from_dict({}), stage_names=stage_names).round_state(0)["stages"]["train"]
    assert (info["status"], info["error"]) == ("stopped", "KeyboardInterrupt")
    assert run.stage(0, "train", lambda: None, []) is True


def test_a_failed_stage_says_so_and_why_in_status(tmp_path):
    # before, a stage that raised stayed "running" in status for ever; a slice name with
    # a terminal escape in the error is shown escaped
    run = Run(tmp_path, config_from_dict({}), stage_names=stage_names)

    def boom():
        raise ValueError("bad slice \x1b]0;PWNED\x07 label\nsecond line")

    with pytest.raises(ValueError):
        run.stage(0, "report", boom, [])
    info = json.loads((tmp_path / "state.json").read_text())["rounds"]["0"]["stages"]["report"]
    assert info["status"] == "failed"
    assert info["error"] == "ValueError: bad slice \x1b]0;PWNED\x07 label second line"
    table = status_table(tmp_path, stage_names)
    assert "report failed: ValueError: bad slice \\x1b]0;PWNED\\x07 label second line" in table
    assert "\x1b" not in table and "\x07" not in table
    assert run.stage(0, "report", lambda: None, []) is True          # a rerun retries it
    assert "failed" not in status_table(tmp_path, stage_names)


def test_changed_config_is_refused_naming_the_key_unless_redone(tmp_path):
    run = Run(tmp_path, config_from_dict({}), stage_names=stage_names)
    run.check_config()
    run.begin()
    run.stage(0, "assemble", lambda: None, [])
    run.stage(1, "slices", lambda: None, [])
    more_rounds = Run(tmp_path, config_from_dict({"loop": {"rounds": 7}}), stage_names=stage_names)
    more_rounds.check_config()  # extending a run is fine
    cadence = Run(tmp_path, config_from_dict({"train": {"save_every": 5, "save_every_s": 60}}),
                  stage_names=stage_names)
    cadence.check_config()  # so is saving checkpoints more or less often
    changed = Run(tmp_path, config_from_dict({"train": {"beta": 0.3}}), stage_names=stage_names)
    with pytest.raises(RunError, match="round 0 ran with a different config .changed: train.beta"):
        changed.check_config()
    with pytest.raises(RunError, match="round 0 ran"):
        changed.check_config(redo=changed.plan_redo("1:slices"))   # round 0 is not redone
    for bad, why in (("0:slices", "round 0 has no stage 'slices'"), ("5:train", "round 5 has not started"),
                     ("abc", "expected ROUND:STAGE"), ("1", "expected ROUND:STAGE")):
        with pytest.raises(RunError, match=why):
            changed.plan_redo(bad)
    redo = changed.plan_redo("0:assemble")
    changed.check_config(redo=redo)
    changed.begin(redo)
    assert "assemble" not in changed.round_state(0)["stages"]
    assert "1" not in changed.state["rounds"]
    # a round that ended (no failure slice, say) is run again when redone, not skipped
    changed.stage(0, "assemble", lambda: None, [])
    changed.end_round(0, "no failure slice")
    again = Run(tmp_path, config_from_dict({"train": {"beta": 0.3}}), stage_names=stage_names)
    again.begin(again.plan_redo("0:reference"))
    assert "ended" not in again.round_state(0)


@pytest.mark.parametrize("recorded, now, same", [("auto", {}, True), ("float32", {"precision": "fp32"}, True),
                                                  ("bfloat16", {"precision": "bf16-mixed"}, True),
                                                  ("float32", {}, False), ("float16", {}, False)])
def test_a_run_recorded_with_model_dtype_compares_after_migration(tmp_path, recorded, now, same):
    """A run directory from before `model.precision` (its flat config has `model.dtype`, its
    hash another value) resumes when the config means the same, and is refused otherwise."""
    run = Run(tmp_path, config_from_dict({}), stage_names=stage_names)
    run.begin()
    run.stage(0, "assemble", lambda: None, [])
    flat = json.loads((tmp_path / ".config_flat.json").read_text())
    del flat["model.precision"], flat["model.device"]
    flat["model.dtype"] = recorded
    (tmp_path / ".config_flat.json").write_text(json.dumps(flat))
    run.state["rounds"]["0"]["config_hash"] = "an-older-hash"
    run.save()
    resumed = Run(tmp_path, config_from_dict({"model": now}), stage_names=stage_names)
    if same:
        resumed.check_config()
    else:
        with pytest.raises(RunError, match=r"changed: model\.precision\)"):
            resumed.check_config()


def _pool_file(tmp_path, rows):
    path = tmp_path / "pool.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_pool_split_and_bad_rows(tmp_path):
    pool = load_pool("builtin:demo-prompts")
    assert len(pool.train) > 200 and len(pool.eval) > 50
    assert not {p.prompt_id for p in pool.train} & {p.prompt_id for p in pool.eval}
    assert len({p.slice for p in pool.eval}) >= 6
    with pytest.raises(PromptError, match=r"row 2: no 'prompt' field \(the row has \['text'\]"):
        load_pool(_pool_file(tmp_path, [{"prompt": "hi"}, {"text": "x"}]))
    with pytest.raises(PromptError, match="row 2: missing or empty 'prompt'"):
        load_pool(_pool_file(tmp_path, [{"prompt": "hi"}, {"prompt": ""}]))
    # a .json prompt file holds a list of rows, as a pairs file may
    listed = tmp_path / "pool.json"
    listed.write_text(json.dumps([{"prompt": f"q{i}?", "split": s}
                                  for i, s in enumerate(["train", "eval"])]))
    assert [len(x) for x in astuple(load_pool(listed))] == [1, 1]
    listed.write_text('[{"prompt": "q?"}, 3]')
    with pytest.raises(PromptError, match="pool.json row 2: the row is a int"):
        read_prompts(listed)
    listed.write_text('{"prompt": "q?"}')
    with pytest.raises(PromptError, match="pool.json: holds a JSON dict"):
        read_prompts(listed)
    with pytest.raises(PromptError, match="row 1: 'split' must be train or eval"):
        load_pool(_pool_file(tmp_path, [{"prompt": "hi", "split": "dev"}]))
    (tmp_path / "broken.parquet").write_text("not parquet")
    with pytest.raises(PromptError, match="broken.parquet: not a readable parquet file"):
        load_pool(tmp_path / "broken.parquet")
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(PromptError, match="dir.jsonl is a directory, not a file of rows"):
        load_pool(tmp_path / "dir.jsonl")
    for slice_ in ("a\x1b[31mred", "two\nlines", "rtl\u202eevil", "zero\u200bwidth"):
        with pytest.raises(PromptError, match=r"row 1: 'slice' contains a control or invisible"):
            load_pool(_pool_file(tmp_path, [{"prompt": "hi", "slice": slice_}]))
    rows = [{"prompt": f"question {i}"} for i in range(200)]
    split = load_pool(_pool_file(tmp_path, rows), eval_share=0.25)
    assert 30 < len(split.eval) < 70     # by id, about a quarter


def test_failure_slices_and_prompt_choice_never_touch_held_out_prompts():
    values = {f"e{i}": (0.2 if i < 5 else 0.8 if i < 10 else 0.5) for i in range(12)}
    slice_of = {f"e{i}": ("complaint" if i < 5 else "thanks" if i < 10 else "tiny") for i in range(12)}
    stats = slice_stats(values, slice_of, min_size=3)
    assert {s.name: s.n for s in stats} == {"complaint": 5, "thanks": 5, "tiny": 2}
    fails = choose_failures(stats, select="count", count=1, threshold=0.5)
    assert [s.name for s in fails] == ["complaint"]
    assert "min_size" in next(s for s in stats if s.name == "tiny").why
    fails2 = choose_failures(slice_stats(values, slice_of, min_size=1), select="threshold",
                             count=1, threshold=0.6)
    assert {s.name for s in fails2} == {"complaint", "tiny"}

    train = [PromptItem(f"t{i}", f"p{i}", "complaint" if i % 2 else "thanks") for i in range(20)]
    slice_of.update({it.prompt_id: it.slice for it in train})
    chosen = pick_prompts(train, slice_of, fails, 6, used={"t1", "t3"}, seed=0)
    assert len(chosen) == 6 and all(it.slice == "complaint" for it in chosen)
    assert not {it.prompt_id for it in chosen} & {"t1", "t3"}        # unused ones first
    assert not {it.prompt_id for it in chosen} & set(values)          # never a held-out prompt
    assert pick_prompts(train, slice_of, [], 6, used=set(), seed=0) == []


@pytest.mark.parametrize("name", ["tiny", "quick", "demo", "hh-vllm"])
def test_shipped_configs_load(name):
    from pathlib import Path

    from alignloop.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml")
    assert cfg.loop.rounds >= 2 and cfg.labeling.judges


def test_prompt_quota_follows_shortfall_from_the_best_slice():
    from alignloop.stages.slices import SliceStat

    fails = [SliceStat("order_status", 10, 0.96, True), SliceStat("bad_news", 5, 1.01, True)]
    train = [PromptItem(f"t{i}", f"p{i}", "order_status" if i % 2 else "bad_news")
             for i in range(60)]
    slice_of = {it.prompt_id: it.slice for it in train}
    chosen = pick_prompts(train, slice_of, fails, 24, used=set(), seed=0, best=1.79)
    counts = {s: sum(it.slice == s for it in chosen) for s in ("order_status", "bad_news")}
    # shortfalls 0.83 and 0.78: close to an even split, not everything to the worst one
    assert counts == {"order_status": 12, "bad_news": 12} or abs(counts["order_status"] - 12) <= 1


@pytest.mark.parametrize("rows, what", [
    ([{"prompt_id": "a", "prompt": "first?"}, {"prompt_id": "b", "prompt": "x?"},
      {"prompt_id": "a", "prompt": "second?"}], "rows 1 and 3: the same prompt_id 'a'"),
    ([{"prompt": "same?"}, {"prompt": "same?"}], "rows 1 and 2: the same prompt (no prompt_id)"),
])
def test_a_repeated_prompt_id_names_both_rows(tmp_path, rows, what):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for read in (read_prompts, load_pool):
        with pytest.raises(PromptError, match=what.replace("(", r"\(").replace(")", r"\)")):
            read(path)


def test_a_rounds_prompts_file_read_back_gives_its_prompts(tmp_path):
    # round_*/prompts.parquet stores every prompt as JSON; passed back (e.g. to `generate`)
    # it gives the prompts, not their JSON text; a user's own parquet stays as written
    from alignloop import artifacts as A
    from alignloop.stages.slices import read_prompt_items, write_prompt_items

    chat = [{"role": "user", "content": "Where is my order?"}]
    items = [PromptItem("p1", "Say hi.", "greeting"), PromptItem("p2", chat, "order_status"),
             PromptItem("p3", '"quoted"', "")]
    write_prompt_items(tmp_path / "prompts.parquet", items)
    assert read_prompts(tmp_path / "prompts.parquet") == items
    assert read_prompt_items(tmp_path / "prompts.parquet") == items
    own = [{"prompt_id": "a", "prompt": '"quoted"', "slice": "s"},
           {"prompt_id": "b", "prompt": "plain text", "slice": "s"}]
    A.write_parquet(tmp_path / "own.parquet", own)
    assert [p.prompt for p in read_prompts(tmp_path / "own.parquet")] == ['"quoted"',
                                                                         "plain text"]


def test_a_training_copy_of_a_held_out_prompt_is_left_out_and_said(tmp_path, caplog):
    """The split was checked by prompt_id only: a copy of a held-out prompt under another
    id was generated for, trained on, and still evaluated as held out."""
    rows = [{"prompt_id": "d0", "prompt": "Where is my gift card?", "split": "eval"},
            {"prompt_id": "d1", "prompt": [{"role": "user", "content": "Refund?"}],
             "split": "eval"},
            {"prompt_id": "t0", "prompt": "Hello there", "split": "train"},
            {"prompt_id": "dtrain", "prompt": "Where is my gift card?", "split": "train"},
            {"prompt_id": "ctrain", "prompt": [{"role": "user", "content": "Refund?"}],
             "split": "train"}]
    with caplog.at_level("WARNING", logger="alignloop"):
        pool = load_pool(_pool_file(tmp_path, rows))
    assert [it.prompt_id for it in pool.train] == ["t0"]
    assert [it.prompt_id for it in pool.eval] == ["d0", "d1"]
    assert "left out 2 training prompts whose text is a held-out prompt's: dtrain (= d0), " \
           "ctrain (= d1)" in caplog.text


def test_a_nul_in_a_prompt_is_refused_naming_the_row(tmp_path):
    # no queue database stores NUL: it failed at round 1's label stage, naming a queue item
    for prompt in ("bad\x00prompt", [{"role": "user", "content": "bad\x00prompt"}]):
        path = _pool_file(tmp_path, [{"prompt": "fine", "split": "eval"},
                                     {"prompt": prompt, "split": "train"}])
        for read in (read_prompts, load_pool):
            with pytest.raises(PromptError, match=r"pool.jsonl row 2: 'prompt' contains a NUL "
                                                  r"character \(U\+0000\) at position 3"):
                read(path)
