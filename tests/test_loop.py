"""The round driver end to end on the tiny config: two rounds with the demo panel labeling
through a real queue server, kill-and-resume (one run killed twice in the default tier, at
every stage in the slow one), reference modes, config changes, and bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from alignloop.artifacts import read_parquet
from alignloop.config import load_config
from alignloop.report import validate_report
from alignloop.rounds import Loop
from alignloop.rounds.loop import stage_names
from alignloop.rounds.state import RunError

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
# smaller than tiny.yaml so that the many subprocess runs below stay quick
FAST = ["loop.eval_prompts=6", "loop.prompts_per_round=4", "generation.n=3",
        "generation.max_new_tokens=8", "train.max_steps=2", "labeling.human.budget=4"]


def run_cli(run_dir: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    sets = [x for s in FAST for x in ("--set", s)]
    return subprocess.run([sys.executable, "-m", "alignloop.cli", "-q", "run", str(TINY),
                           "--run-dir", str(run_dir), *sets, *extra],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("baseline") / "run"   # the runs compared are all "run"
    r = run_cli(run_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir


def test_two_rounds_end_to_end(baseline):
    run = baseline
    state = json.loads((run / "state.json").read_text())
    for k, stages in (("0", stage_names(0)), ("1", stage_names(1))):
        assert all(state["rounds"][k]["stages"][s]["status"] == "done" for s in stages)
    r0, r1 = run / "round_000", run / "round_001"
    for name in ("pairs.parquet", "reference_logps.parquet", "policy/config.json",
                 "train_log.jsonl", "eval/samples.parquet", "report/report.json",
                 "report/report.md", "report/report.html"):
        assert (r0 / name).exists() and (r1 / name).exists(), name
    for name in ("slices.json", "prompts.parquet", "generations.parquet", "candidates.parquet",
                 "labels.parquet"):
        assert (r1 / name).exists(), name
    assert (run / "report.html").exists() and (run / "queue.db").exists()
    for r in (r0, r1):
        validate_report(json.loads((r / "report" / "report.json").read_text()))
    # round 1 started from round 0's policy and trained against it (reference.mode previous)
    assert state["rounds"]["1"]["reference"] == str(r0 / "policy")
    # the panel labeled through the queue: human votes are in labels.parquet, soft labels
    labels = read_parquet(r1 / "labels.parquet")
    assert {x["annotator"] for x in labels if x["source"] == "human"} >= {"panel-warm"}
    pairs = read_parquet(r1 / "pairs.parquet")
    assert any(p["source"] == "human" and 0.5 < p["p_chosen"] < 1 for p in pairs)


def test_held_out_prompts_never_reach_generation_or_training(baseline):
    held = {r["prompt_id"] for r in read_parquet(baseline / "round_000/eval/samples.parquet")}
    from alignloop.prompt_pool import load_pool

    pool_eval = {it.prompt_id for it in load_pool("builtin:demo-prompts").eval}
    assert held <= pool_eval
    r1 = baseline / "round_001"
    assert not {r["prompt_id"] for r in read_parquet(r1 / "prompts.parquet")} & pool_eval
    assert not {r["prompt_id"] for r in read_parquet(r1 / "generations.parquet")} & pool_eval
    eval_prompts = {json.dumps(it.prompt, sort_keys=True)
                    for it in load_pool("builtin:demo-prompts").eval}
    for name in ("round_000/pairs.parquet", "round_001/pairs.parquet"):
        for p in read_parquet(baseline / name):
            assert json.dumps(json.loads(p["prompt"]), sort_keys=True) not in eval_prompts


ALL_STAGES = [f"0:{s}" for s in stage_names(0)] + [f"1:{s}" for s in stage_names(1)]
# The default tier kills one run at these stages in turn; the slow tier one run per stage.
QUICK = ("0:train", "1:label")


# Wall-clock measures, the one file of a round that is not the same in every run.
TIMED = {"train_timing.jsonl"}


def artifacts(run_dir: Path) -> dict[str, str]:
    """The sha256 of every file of the rounds (reports, plots and model cards included)
    but the step timings and dot-files (markers, temporary names). Runs compared must have
    run directories of the same name: the model cards name the run by it."""
    import hashlib

    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.glob("round_*/**/*"))
            if p.is_file() and p.name not in TIMED and not p.name.startswith(".")}


def assert_same_artifacts(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    assert [n for n in want if got[n] != want[n]] == [], "files that differ byte for byte"


@pytest.mark.slow
def test_same_config_and_seed_give_the_same_artifacts(baseline, tmp_path):
    """Two uninterrupted runs, the simulated panel labeling through the real queue server:
    every file of the rounds is the same byte for byte (labels, pairs, policy, reports and
    plots), the step timings aside.
    Slow tier: the default tier's kill-and-resume test compares a run made by three other
    processes with the same baseline, which fails on any unrepeatable stage too."""
    again = run_cli(tmp_path / "run")
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_artifacts(artifacts(tmp_path / "run"), artifacts(baseline))


def kill_at(run_dir: Path, where: str) -> None:
    """Run (or resume) the loop in `run_dir` until the process exits inside stage `where`."""
    killed = run_cli(run_dir, env={"ALIGNLOOP_FAIL_AT": where})
    assert killed.returncode == 3 and "fault injection" in killed.stderr, killed.stderr[-3000:]
    k, stage = where.split(":")
    assert json.loads((run_dir / "state.json").read_text())["rounds"][k]["stages"][stage][
        "status"] == "running"


def test_killed_twice_and_resumed_gives_the_same_artifacts(baseline, tmp_path):
    """One run killed inside round 0's training, resumed and killed again inside round 1's
    labeling (the queue's votes in), then resumed to the end: every artifact equals the
    uninterrupted run's. Both kills in one run cost one run, not two."""
    run = tmp_path / "run"
    for where in QUICK:
        kill_at(run, where)
    resumed = run_cli(run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_artifacts(artifacts(run), artifacts(baseline))


@pytest.mark.slow
@pytest.mark.parametrize("where", ALL_STAGES)
def test_kill_and_resume_at_every_stage(baseline, tmp_path, where):
    run = tmp_path / "run"
    kill_at(run, where)
    resumed = run_cli(run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_artifacts(artifacts(run), artifacts(baseline))


def test_changed_config_refused_then_redone(baseline, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(baseline, run)
    r = run_cli(run, "--set", "train.beta=0.25")
    assert r.returncode == 2 and "train.beta" in r.stderr and "--redo-from" in r.stderr
    cfg = load_config(TINY, [*FAST, "train.beta=0.25", "loop.rounds=1"])
    Loop(cfg, run).run(redo_from="0:report")           # only the report is redone
    state = json.loads((run / "state.json").read_text())
    assert state["rounds"]["0"]["stages"]["report"]["status"] == "done"
    assert "1" not in state["rounds"]                  # later rounds are forgotten


def test_a_change_is_judged_by_the_rounds_that_read_it(baseline, tmp_path):
    """Any changed key counted as "round 0 changed", so `--redo-from 1:judge` with another
    selection strategy was refused, and a run paused with `wait: exit` could not go on with
    `wait: block`. Now round 0 ignores keys only online rounds read, and how the loop waits
    is no part of any round."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(baseline, run)

    def check(*sets, redo=None):
        Loop(load_config(TINY, [*FAST, *sets]), run).state.check_config(redo=redo)

    check("labeling.human.wait=exit", "labeling.human.wait_timeout_s=5",     # nothing to redo
          "labeling.human.lease_minutes=30")
    with pytest.raises(RunError, match=r"round 1 ran with a different config \(changed: "
                                       r"labeling.selection.strategy\)"):
        check("labeling.selection.strategy=max_min")
    check("labeling.selection.strategy=max_min", redo=(1, "judge"))          # round 0 kept
    with pytest.raises(RunError, match="round 0 ran with a different config"):
        check("generation.temperature=0.5", redo=(1, "judge"))                # round 0 samples


def _tree(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_changed_output_is_refused_before_anything_runs(baseline, tmp_path):
    """A done stage's file that changed since (an edit, a bad copy) would feed the later
    stages: the rerun refuses it, naming the file and the --redo-from that recomputes it,
    and writes nothing; the report, which `alignloop report` renders again, is not checked."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(baseline, run)
    (run / "round_001/report/report.md").write_text("edited")
    pairs = run / "round_001/pairs.parquet"
    pairs.write_bytes(pairs.read_bytes() + b"\0")
    before = _tree(run)
    r = run_cli(run)
    assert r.returncode == 2, r.stderr[-3000:]
    assert f"{pairs} changed since round 1's stage assemble wrote it" in r.stderr
    assert "--redo-from 1:assemble" in r.stderr
    assert _tree(run) == before
    loop = Loop(load_config(TINY, FAST), run)
    loop.state.check_outputs(redo=(1, "assemble"))        # redone from there: not checked
    with pytest.raises(RunError, match="pairs.parquet changed"):
        loop.state.check_outputs(redo=(1, "reference"))


def test_one_process_per_run_directory(baseline, tmp_path):
    """Two processes in one run both trained every round into the same policy and appended
    to the same step log. While one holds the run, another `run`, `report` or `prune` is
    refused and writes nothing; `status` tells a running stage from one whose process died."""
    import shutil

    from alignloop.rounds.state import run_lock, status_table

    run = tmp_path / "run"
    shutil.copytree(baseline, run)
    state = json.loads((run / "state.json").read_text())
    state["rounds"]["1"]["stages"]["train"]["status"] = "running"   # as a kill leaves it
    (run / "state.json").write_text(json.dumps(state))
    before = _tree(run)
    assert "1  train      stopped" in status_table(run, stage_names)
    with run_lock(run):
        assert "1  train      running" in status_table(run, stage_names)
        for cmd in (["run", str(TINY), "--run-dir", str(run)], ["report", str(run)],
                    ["prune", str(run)]):
            r = subprocess.run([sys.executable, "-m", "alignloop.cli", "-q", *cmd],
                               capture_output=True, text=True, timeout=600)
            assert r.returncode == 2, (cmd, r.stderr[-2000:])
            assert "another alignloop process is using this run directory" in r.stderr, cmd
        assert _tree(run) == before


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["base", "ema"])
def test_reference_modes(tmp_path, mode):
    r = run_cli(tmp_path, "--set", f"reference.mode={mode}", "--set", "reference.ema_weight=0.5")
    assert r.returncode == 0, r.stderr[-3000:]
    state = json.loads((tmp_path / "state.json").read_text())
    ref = state["rounds"]["1"]["reference"]
    if mode == "base":
        assert ref == "builtin:tiny-random"
        return
    assert ref == str(tmp_path / "round_001" / "reference")
    from alignloop.models import load_model

    base = load_model("builtin:tiny-random").state_dict()
    pol = load_model(str(tmp_path / "round_000" / "policy")).state_dict()
    ema = load_model(ref).state_dict()
    name = "model.layers.0.mlp.up_proj.weight"
    assert ((ema[name] - (0.5 * base[name] + 0.5 * pol[name])).abs().max()) < 1e-6


def test_lora_rounds_keep_adapters_that_chain_and_load(tmp_path):
    """With LoRA each round's policy/ is its adapter on the previous round's policy (a
    relative base, so the run can move); every policy loads as merged weights; the
    merged cache a vLLM backend would build is what `alignloop prune` removes."""
    import torch
    from alignloop.models import ADAPTER_BASE_FILE, load_model, merged_model_dir

    r = run_cli(tmp_path, "--set", "model.lora.enabled=true", "--set", "model.lora.r=4")
    assert r.returncode == 0, r.stderr[-3000:]
    p0, p1 = tmp_path / "round_000" / "policy", tmp_path / "round_001" / "policy"
    for p in (p0, p1):
        assert (p / "adapter_model.safetensors").is_file() and not (p / "model.safetensors").exists()
    assert json.loads((p0 / ADAPTER_BASE_FILE).read_text()) == {"base": "builtin:tiny-random"}
    assert json.loads((p1 / ADAPTER_BASE_FILE).read_text()) == {"base": "./../../round_000/policy"}
    base, m0, m1 = (load_model(x).state_dict() for x in ("builtin:tiny-random", str(p0), str(p1)))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(base[name], m0[name]) and not torch.equal(m0[name], m1[name])

    merged = merged_model_dir(str(p1))
    assert torch.equal(load_model(str(merged)).state_dict()[name], m1[name])
    pruned = subprocess.run([sys.executable, "-m", "alignloop.cli", "prune", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert pruned.returncode == 0 and "round_001/policy/merged" in pruned.stdout, pruned.stderr
    assert not merged.exists() and (p1 / "adapter_model.safetensors").is_file()


def test_empty_failure_slices_end_the_round_cleanly(tmp_path):
    # a threshold nothing is below: no failing slice, so round 1 says so and stops
    r = run_cli(tmp_path, "--set", "loop.slices.select=threshold",
                "--set", "loop.slices.threshold=-1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "no failure slice" in r.stdout
    state = json.loads((tmp_path / "state.json").read_text())
    assert "no failure slice" in state["rounds"]["1"]["ended"]
    assert json.loads((tmp_path / "round_001" / "slices.json").read_text())["chosen"] == []


def test_bad_input_is_named(tmp_path):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": "hi", "chosen": "a", "rejected": "b"}\n{"prompt": "x"}\n')
    r = run_cli(tmp_path / "r1", "--set", f"data.path={bad}")
    assert r.returncode == 2 and "row 2" in r.stderr
    r = run_cli(tmp_path / "r2", "--set", "model.name=/nonexistent/model")
    assert r.returncode == 2 and "/nonexistent/model" in r.stderr
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"prompt": "hello", "split": "train"}\n{"prompt": 3}\n')
    r = run_cli(tmp_path / "r3", "--set", f"loop.prompts={pool}")
    assert r.returncode == 2 and "row 2" in r.stderr
    (tmp_path / "a_file").write_text("not a directory")
    r = run_cli(tmp_path / "r4", "--set", f"labeling.human.db=sqlite:///{tmp_path}/a_file/q.db")
    assert r.returncode == 2 and "cannot open the queue database" in r.stderr
    r = run_cli(tmp_path / "r5", "--set", "labeling.human.db=postgresql+psycopg://x@127.0.0.1:1/db")
    assert r.returncode == 2 and "127.0.0.1:1" in r.stderr


def test_config_change_is_refused_in_process(baseline, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(baseline, run)
    with pytest.raises(RunError, match="generation.n"):
        Loop(load_config(TINY, [*FAST, "generation.n=2"]), run).run()


@pytest.mark.parametrize("action", ["stop", pytest.param("rollback", marks=pytest.mark.slow)])
def test_kl_gate(tmp_path, action):
    # fp32 pinned: the gate trips on k1, an unbiased estimate from 6 samples that can come
    # out negative when the policy barely moved; the fixture's fp32 step moves it enough,
    # while under bf16-mixed (auto on an AMX Xeon) it measured -0.01 and nothing tripped
    r = run_cli(tmp_path, "--set", "loop.gate.max_kl_to_base=1e-6", "--set",
                f"loop.gate.action={action}", "--set", "model.precision=fp32")
    assert r.returncode == 0, r.stderr[-3000:]
    state = json.loads((tmp_path / "state.json").read_text())
    gate = state["rounds"]["0"]["gate"]
    assert gate["tripped"] and "KL to base" in gate["reason"] and gate["action"] == action
    if action == "stop":
        assert "gate tripped" in r.stdout and "1" not in state["rounds"]
    else:  # round 1 starts from, and refers to, the starting model again
        assert state["rounds"]["1"]["start"] == "builtin:tiny-random"
        assert state["rounds"]["1"]["reference"] == "builtin:tiny-random"


def test_cluster_slices_group_prompts_by_topic():
    from alignloop.generation import PromptItem
    from alignloop.stages.slices import cluster_labels

    shoes = [f"Do the running shoes in size {n} fit wide feet?" for n in range(38, 44)]
    refunds = [f"I was promised a refund for order {n} and it never arrived." for n in range(6)]
    items = [PromptItem(f"p{i}", t) for i, t in enumerate(shoes + refunds)]
    labels = cluster_labels(items, n_clusters=2, seed=0)
    assert len({labels[f"p{i}"] for i in range(6)}) == 1
    assert len({labels[f"p{i}"] for i in range(6, 12)}) == 1
    assert labels["p0"] != labels["p6"]


def test_a_judges_only_loop_with_an_uncertainty_strategy_is_warned(tmp_path, caplog):
    """A new user's judges-only loop (no human budget) under the default `uncertainty`
    strategy stopped at round 1 with no pair: every pick was one the judges could not
    decide, and nobody else labels. Preflight says so, and writes nothing."""
    import logging

    cfg = load_config(TINY, [*FAST, "labeling.human.budget=0",
                             "labeling.selection.strategy=uncertainty"])
    with caplog.at_level(logging.WARNING, logger="alignloop"):
        Loop(cfg, tmp_path / "run").preflight(2)
    assert "a loop of judges alone wants max_min" in caplog.text
    assert not (tmp_path / "run").exists()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="alignloop"):
        Loop(load_config(TINY, FAST), tmp_path / "run").preflight(2)     # people label: fine
    assert "judges alone" not in caplog.text
