"""The round driver's wiring: the stage table, which policy a round starts from, preflight
checks, the held-out leak check, a run made before the restructure resuming, and the tiny
loop with a driver's own queue and the `apl` selection strategy."""

import json
import shutil
from pathlib import Path

import pytest
from alignloop import artifacts as A
from alignloop.config import load_config
from alignloop.errors import HeldoutLeak
from alignloop.generation import PromptItem
from alignloop.prompt_pool import PromptPool
from alignloop.rounds import Loop
from alignloop.rounds.loop import ONLINE, ROUND0, stage_names
from alignloop.rounds.state import RunError

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
FIXTURE = ROOT / "tests" / "fixtures" / "premove_tiny_run"
FAST = ["loop.eval_prompts=6", "loop.prompts_per_round=4", "generation.n=3",
        "generation.max_new_tokens=8", "train.max_steps=2", "labeling.human.budget=4"]


def test_one_table_names_each_stage_and_its_outputs_once():
    assert stage_names(0) == ("assemble", "reference", "train", "eval", "report")
    assert stage_names(1) == ("slices", "generate", "judge", "label", "assemble", "reference",
                              "train", "eval", "report")
    outputs = [o for s in ONLINE for o in s.outputs]
    assert len(outputs) == len(set(outputs))
    assert {s.name: s.outputs for s in ROUND0}["train"] == (A.POLICY, A.TRAIN_LOG)


def _with_gates(tmp_path, gates: dict[int, str]) -> Loop:
    loop = Loop(load_config(TINY), tmp_path)
    for k, action in gates.items():
        loop.state.round_state(k)["gate"] = {"tripped": bool(action), "reason": "x",
                                             "action": action}
    return loop


def test_a_rolled_back_round_hands_on_its_start(tmp_path):
    loop = _with_gates(tmp_path, {0: "", 1: "rollback", 2: ""})
    assert loop.start_round(2) == 0                       # round 1 was rolled back
    assert loop.policy(1) == str(loop.rdir(0) / "policy")
    assert loop.policy(2) == str(loop.rdir(2) / "policy")
    assert loop.reference(2) == str(loop.rdir(0) / "policy")   # reference.mode: previous
    flagged = _with_gates(tmp_path / "f", {0: "", 1: "flag"})
    assert flagged.start_round(2) == 1                    # a flag does not roll back
    all_back = _with_gates(tmp_path / "b", {0: "rollback"})
    assert all_back.start_round(1) is None and all_back.policy(0) == "builtin:tiny-random"


def test_slice_metric_without_a_pointwise_judge_fails_in_preflight(tmp_path):
    cfg = load_config(TINY, ["labeling.judges=[{kind: embedding_ensemble}]"])
    with pytest.raises(RunError, match="loop.slices.metric"):
        Loop(cfg, tmp_path).run()
    assert not (tmp_path / "round_000").exists()
    # one round needs no slices: the same config runs round 0 alone
    Loop(cfg, tmp_path).preflight(1)


def test_a_queue_database_in_a_missing_folder_is_refused_before_anything_is_made(tmp_path):
    # a mistyped sqlite path had its missing folders created (`/nonexistent/dir/`)
    missing = tmp_path / "no" / "such" / "q.db"
    cfg = load_config(TINY, [*FAST, f"labeling.human.db=sqlite:///{missing}"])
    with pytest.raises(RunError, match=r"cannot open the queue database .*q.db: .*such is not "
                                       r"a folder \(config key 'labeling.human.db'\)"):
        Loop(cfg, tmp_path / "run").run()
    assert not (tmp_path / "no").exists() and not (tmp_path / "run").exists()
    (tmp_path / "no" / "such").mkdir(parents=True)
    Loop(cfg, tmp_path / "run").preflight(1)        # the folder exists: accepted
    assert missing.exists()


def test_invalid_static_pairs_are_refused_before_the_run_directory_exists(tmp_path):
    # refused in preflight, the run leaves no directory behind: the corrected config (or
    # the error's own advice, on_invalid=skip) then starts the run instead of being
    # refused as a config change against a round that never ran
    from alignloop.data import DataError

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Hi", "chosen": "Hello", "rejected": "Go"}\n'
                   '{"prompt": "Yo", "chosen": "Hey"}\n')
    run_dir = tmp_path / "run"
    cfg = load_config(TINY, [f"data.path={bad}", *FAST])
    with pytest.raises(DataError, match=r"bad.jsonl row 2: missing field 'rejected'"):
        Loop(cfg, run_dir).run(rounds=1)
    assert not run_dir.exists()
    skip = load_config(TINY, [f"data.path={bad}", "data.on_invalid=skip", *FAST])
    loop = Loop(skip, run_dir)
    loop.preflight(1, static_pairs=True)          # the same file, the row dropped: accepted


def test_round_0_assembles_the_pairs_preflight_read(tmp_path, monkeypatch):
    # a large `hf:` dataset is loaded once per run, not once to check and again to use
    import alignloop.data as data
    import alignloop.stages.assemble as assemble

    reads = []
    real = data.read_pairs_from_config
    for module in (data, assemble):      # the stage holds its own reference to the reader
        monkeypatch.setattr(module, "read_pairs_from_config",
                            lambda cfg: reads.append(cfg.path) or real(cfg))
    loop = Loop(load_config(TINY, FAST), tmp_path / "run")
    loop.preflight(1)
    loop.rdir(0).mkdir(parents=True)
    train = loop.assemble_static(0)
    assert len(reads) == 1 and train
    assert loop.assemble_static(0) == train      # a resumed round reads them again
    assert len(reads) == 2


def test_a_held_out_prompt_reaching_generation_is_an_error(tmp_path):
    from alignloop.stages.slices import mine_slices

    cfg = load_config(TINY)
    shared = PromptItem("p1", "A shared prompt?", "complaint")
    pool = PromptPool(train=[shared, PromptItem("p2", "Another?", "complaint")],
                      eval=[shared, PromptItem("p3", "Held out?", "complaint")])
    values = [{"prompt_id": p, "value": 0.0} for p in ("p1", "p3")]
    with pytest.raises(HeldoutLeak, match="p1"):
        mine_slices(tmp_path, cfg=cfg.loop.slices.__class__(min_size=1), pool=pool,
                    previous_eval=values, used=set(), prompts_per_round=4, seed=0, round=1)


def test_no_rankable_slice_says_why(tmp_path):
    """The message said "4 slices ranked" when none could be: each had fewer evaluated
    prompts than min_size."""
    from alignloop.errors import RoundEnded
    from alignloop.stages.slices import mine_slices

    cfg = load_config(TINY)
    pool = PromptPool(train=[PromptItem(f"t{i}", f"Train {i}?", s) for i, s in
                             enumerate(("complaint", "order"))],
                      eval=[PromptItem(f"e{i}", f"Held out {i}?", s) for i, s in
                            enumerate(("complaint", "order"))])
    values = [{"prompt_id": f"e{i}", "value": 0.0} for i in range(2)]
    with pytest.raises(RoundEnded, match=r"none of the 2 slices could be ranked: each had fewer "
                                         r"than loop.slices.min_size \(3\)"):
        mine_slices(tmp_path, cfg=cfg.loop.slices.__class__(min_size=3, by="tag"), pool=pool,
                    previous_eval=values, used=set(), prompts_per_round=4, seed=0, round=1)


def test_a_run_made_before_the_restructure_resumes(tmp_path):
    """The fixture is a tiny run made by alignloop 50966ba (before loop/ became subpackages,
    with the old config key names), killed inside round 0's reference stage."""
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    before = json.loads((run / "state.json").read_text())["rounds"]["0"]["stages"]["assemble"]
    old = {name: (run / "round_000" / name).read_bytes()
           for name in (A.PAIRS, A.HELDOUT_PAIRS, A.REFERENCE_LOGPS)}
    cfg = load_config(TINY, ["loop.rounds=1"])
    summary = Loop(cfg, run).run()
    assert summary["rounds"] == [0]
    state = json.loads((run / "state.json").read_text())["rounds"]["0"]
    assert state["stages"]["assemble"] == before            # done before the move: not redone
    assert all(state["stages"][s]["status"] == "done" for s in stage_names(0))
    # the interrupted reference stage was redone by today's code, with the same bytes as the
    # old code wrote before it was killed (in fp32, as then: the recorded `dtype: auto` is
    # bf16-mixed today on a CPU with fast bf16, whose reference log-probs differ in the bits)
    from alignloop.placement import placement_for

    fp32 = placement_for(cfg.model).precision == "fp32"
    for name, data in old.items():
        if fp32 or name != A.REFERENCE_LOGPS:
            assert (run / "round_000" / name).read_bytes() == data, name
    # today's assemble stage writes the pairs the old code recorded in state.json
    fresh = Loop(load_config(TINY), tmp_path / "fresh")
    fresh.rdir(0).mkdir(parents=True)
    fresh.assemble_static(0)
    for name, info in before["outputs"].items():
        assert A.file_sha256(fresh.rdir(0) / name)[:16] == info["sha256"], name


def test_tiny_loop_with_a_memory_queue_and_apl_selection(tmp_path):
    """A driver script's own LabelQueue (here the in-memory one: the run stops to wait for
    labels, the driver collects them, the run resumes) and `apl` selection, which needs the
    policy's and its reference's log-probs inside the judge stage."""
    from alignloop.labeling.handoff import MemoryQueue, WaitingForLabels

    cfg = load_config(TINY, [*FAST, "labeling.selection.strategy=apl",
                             "loop.simulate_labels=false", "labeling.human.wait=exit"])
    queue = MemoryQueue()
    with pytest.raises(WaitingForLabels):
        Loop(cfg, tmp_path, queue=queue).run()
    assert queue.items, "pairs routed to people reached the driver's queue"
    for person in ("ann", "bob"):   # both prefer the shorter response
        queue.answer(person, lambda it: "a" if len(it.a) <= len(it.b) else "b")
    summary = Loop(cfg, tmp_path, queue=queue).run()
    assert summary["rounds"] == [0, 1], summary
    candidates = A.read_parquet(tmp_path / "round_001" / A.CANDIDATES)
    assert any(r["selected"] for r in candidates)
    labels = A.read_parquet(tmp_path / "round_001" / A.LABELS)
    assert {lab["annotator"] for lab in labels if lab["source"] == "human"} == {"ann", "bob"}
    assert not (tmp_path / "queue.db").exists()
    # run_round makes run's checks: a changed config is refused, a skipped round too
    changed = load_config(TINY, [*FAST, "labeling.selection.strategy=apl", "train.beta=0.9",
                                 "loop.simulate_labels=false", "labeling.human.wait=exit"])
    before = _tree(tmp_path)
    with pytest.raises(RunError, match=r"round 0 ran with a different config \(changed: "
                                       r"train.beta\)"):
        Loop(changed, tmp_path, queue=queue).run_round(2)
    with pytest.raises(RunError, match=r"round 2 is not done in .*: run_round\(3\) runs "
                                       r"round 3 only; run\(rounds=4\)"):
        Loop(cfg, tmp_path, queue=queue).run_round(3)
    assert _tree(tmp_path) == before and not (tmp_path / "round_003").exists()


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_python_api_refuses_wrong_arguments_before_writing(tmp_path):
    """Loop(dict), a run directory that is a file, run(rounds=0) and run_round under
    another process's lock: each a clear error, and nothing written."""
    import fcntl
    import os

    from alignloop.config import config_from_dict

    cfg = load_config(TINY, FAST)
    with pytest.raises(TypeError, match="Loop takes a Config, got dict: build one with "
                                        "alignloop.config.load_config"):
        Loop({"model": {"name": "builtin:tiny-random"}}, tmp_path / "r")
    with pytest.raises(TypeError, match="Loop takes the run directory as a path, got NoneType"):
        Loop(cfg, None)
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for where in (afile, afile / "sub"):
        with pytest.raises(RunError, match=f"run directory {where}: {afile} is a file"):
            Loop(cfg, where)
    assert afile.read_text() == "mine"
    for bad in (0, -5, "2", True):
        with pytest.raises(RunError, match=r"rounds must be a whole number >= 1"):
            Loop(cfg, tmp_path / "r").run(rounds=bad)
    with pytest.raises(RunError, match=r"round 0 is not done in .*: run_round\(2\)"):
        Loop(cfg, tmp_path / "r").run_round(2)
    assert not (tmp_path / "r").exists()
    held = tmp_path / "held"
    held.mkdir()
    fd = os.open(held, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)       # another process's run_lock
        with pytest.raises(RunError, match="another alignloop process"):
            Loop(cfg, held).run_round(0)
    finally:
        os.close(fd)
    assert list(held.iterdir()) == []
    for bad, match in (("train.beta=0.2", "overrides must be a list"),
                       ({"train.beta": 0.2}, "overrides must be a list"),
                       (("train.beta", 0.2), "overrides must be a list")):
        with pytest.raises(TypeError, match=match):
            load_config(TINY, bad)
    with pytest.raises(TypeError, match="load_config takes the path of a YAML file, got dict; "
                                        "for a mapping use config_from_dict"):
        load_config({"train": {"beta": 0.2}})
    assert config_from_dict({"train": {"beta": 0.2}}, ["train.beta=0.3"]).train.beta == 0.3


def test_a_simulated_vote_depends_on_seed_annotator_and_item_only():
    """What a panel bot votes on an item does not depend on the order the queue showed the
    two responses in, nor on what it labeled before (its draws come from `item_rng`)."""
    from alignloop.demo.labelers import panel_answerers
    from alignloop.labeling.queue.simulate import item_rng

    bot = panel_answerers("demo", 1)[0]
    prompt, x, y = "My order is late.", "I'm so sorry, it ships today!", "Not our problem."
    for item in (f"item-{i}" for i in range(20)):
        ab, _ = bot.answer(prompt, x, y, item_rng(0, "bot", item))
        ba, _ = bot.answer(prompt, y, x, item_rng(0, "bot", item))
        assert {"a": x, "b": y}[ab] == {"a": y, "b": x}[ba]
    draws = [item_rng(s, "bot", "item-1").random() for s in (0, 0, 1)]
    assert draws[0] == draws[1] != draws[2]


def test_a_round_without_pairs_says_whether_people_were_waited_for(tmp_path):
    """"no labeled pair came out of this round (see candidates.parquet ...)" after a wait
    that ran out: the votes people gave later were never used, and nothing said how."""
    from alignloop.artifacts import write_parquet
    from alignloop.errors import RoundEnded
    from alignloop.stages.assemble import assemble_online

    write_parquet(tmp_path / "candidates.parquet", [
        {"item_id": f"i{n}", "selected": True, "decision": d}
        for n, d in enumerate(("human", "human", "drop"))])
    write_parquet(tmp_path / "labels.parquet", [{"item_id": "i0", "source": "judge"}])
    with pytest.raises(RoundEnded) as e:
        assemble_online(tmp_path, new=[], earlier=[], round=2, replay_share=0.5, seed=0)
    assert str(e.value) == (
        "no labeled pair came out of this round (0 selected pairs labeled by the judges, 1 "
        "dropped (see candidates.parquet for why); 2 routed to people, who gave votes on 0); "
        "once people have labeled them, rerun with --redo-from 2:label to use their votes")


def test_an_edited_held_out_prompt_is_refused_before_the_next_round(tmp_path):
    """Only the pool's path was part of the config: held-out prompts edited between rounds
    were evaluated as they now read, and the drift figures compared other prompts."""
    from alignloop.prompt_pool import load_pool
    from alignloop.rounds.preflight import check_heldout_unchanged
    from alignloop.stages.evaluate import eval_items

    pool = tmp_path / "pool.jsonl"
    shutil.copy(ROOT / "loop" / "demo" / "data" / "demo_prompts.jsonl", pool)
    sets = [*FAST, f"loop.prompts={pool}", "labeling.human.budget=0",
            "labeling.selection.strategy=max_min"]
    Loop(load_config(TINY, sets), tmp_path / "run").run(rounds=1)
    first = eval_items(load_pool(pool), 6)[0].prompt_id
    original = pool.read_text()
    edited = [json.loads(line) for line in original.splitlines()]
    for row in edited:
        if row["prompt_id"] == first:
            row["prompt"] = "EDITED: a different question about cats"
    pool.write_text("".join(json.dumps(r) + "\n" for r in edited))
    before = _tree(tmp_path / "run")
    with pytest.raises(RunError, match=rf"the held-out prompts round 0 evaluated have changed "
                                       rf"\(1 edited \({first}\)\); every round is compared"):
        Loop(load_config(TINY, sets), tmp_path / "run").run(rounds=2)
    assert _tree(tmp_path / "run") == before
    pool.write_text(original)              # restored: the run may go on
    check_heldout_unchanged(Loop(load_config(TINY, sets), tmp_path / "run"))
