"""`alignloop status RUN_DIR`: per round, where it ran, the generation backend
`generation.backend` resolved to, and the policy the round started (and sampled) from with
how vLLM served it (`generation.policy_weights`). A real two-round run of the tiny config
(hf: its head size has no vLLM-CPU kernel) through the CLI (slow: ~2 min under load);
then the round record the `vllm` backend writes for that run's policies (`backend_record`,
computed on the real checkpoints), which `status` shows the same way. By default: the
records as `Loop.run_round` writes them, read back by `status`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from alignloop.cli import main
from alignloop.config import GenerationConfig
from alignloop.generation import backend_record
from alignloop.placement import Placement

ROOT = Path(__file__).resolve().parents[1]
FAST = ["loop.eval_prompts=4", "loop.prompts_per_round=4", "generation.n=2",
        "generation.max_new_tokens=6", "train.max_steps=1", "labeling.human.budget=0"]


def _round_lines(out: str, k: int) -> list[str]:
    return [line.strip() for line in out.splitlines() if line.split()[:1] == [str(k)]]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    sets = [x for s in [*FAST, "generation.backend=auto"] for x in ("--set", s)]
    assert main(["-q", "run", str(ROOT / "configs" / "tiny.yaml"), "--run-dir", str(run),
                 "--rounds", "2", *sets]) == 0
    return run


@pytest.mark.slow
def test_status_shows_each_rounds_backend_and_policy(run_dir, capsys):
    capsys.readouterr()
    assert main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    state = json.loads((run_dir / "state.json").read_text())["rounds"]
    for k, start in ((0, "builtin:tiny-random"), (1, "round_000/policy")):
        rec = state[str(k)]["generation"]
        # the hf sampler holds the weights the placement resolved to on this machine: bf16
        # where the probe chose bf16 mixed precision, float32 elsewhere
        bf16 = state[str(k)]["placement"]["precision"] in ("bf16-mixed", "bf16")
        dtype = "bfloat16" if bf16 else "float32"
        assert rec == {"requested": "auto", "backend": "hf", "dtype": dtype}
        setup = _round_lines(out, k)[-1]
        assert setup.endswith(f"generation hf {dtype} (auto), policy {start}"), out


@pytest.mark.slow
def test_status_shows_how_vllm_served_each_policy(run_dir, capsys):
    """The record a vLLM machine writes for these rounds (a full checkpoint; a LoRA policy
    merged), computed on the run's real policies, shown by `status`."""
    path = run_dir / "state.json"
    saved = path.read_text()
    state = json.loads(saved)
    cfg, place = GenerationConfig(backend="vllm", vllm_lora="off"), Placement("cpu", "fp32")
    for k in (0, 1):
        start = state["rounds"][str(k)]["start"]
        state["rounds"][str(k)]["generation"] = backend_record(cfg, "builtin:tiny-random",
                                                               place, policy=start)
    assert state["rounds"]["1"]["generation"] == {
        "requested": "vllm", "backend": "vllm", "dtype": "float32", "policy_weights": "full"}
    state["rounds"]["1"]["generation"]["policy_weights"] = "merged"   # a LoRA run's
    try:
        path.write_text(json.dumps(state))
        capsys.readouterr()
        assert main(["status", str(run_dir)]) == 0
        out = capsys.readouterr().out
    finally:
        path.write_text(saved)
    assert _round_lines(out, 0)[-1].endswith(
        "generation vllm float32, policy builtin:tiny-random as full weights"), out
    assert _round_lines(out, 1)[-1].endswith(
        "generation vllm float32, policy round_000/policy as merged weights"), out


def test_status_reads_the_round_records(tmp_path, capsys):
    """The default-suite check: a state.json with the records `Loop.run_round` writes (a
    round started from a run directory elsewhere, one served as a LoRA adapter)."""
    other = tmp_path / "elsewhere" / "round_002" / "policy"
    state = {"rounds": {
        "0": {"stages": {}, "start": "Qwen/Qwen2.5-0.5B-Instruct",
              "placement": {"device": "cuda", "precision": "bf16-mixed"},
              "generation": {"requested": "vllm", "backend": "vllm", "dtype": "bfloat16",
                             "policy_weights": "full"}},
        "1": {"stages": {}, "start": str(tmp_path / "run" / "round_000" / "policy"),
              "generation": {"requested": "auto", "backend": "vllm", "dtype": "bfloat16",
                             "policy_weights": "adapter"}},
        "2": {"stages": {}, "start": str(other),
              "generation": {"requested": "auto", "backend": "hf", "dtype": "float32"}}}}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "state.json").write_text(json.dumps(state))
    assert main(["status", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert _round_lines(out, 0)[-1].endswith(
        "placement cuda bf16-mixed, generation vllm bfloat16, policy "
        "Qwen/Qwen2.5-0.5B-Instruct as full weights"), out
    assert _round_lines(out, 1)[-1].endswith(
        "generation vllm bfloat16 (auto), policy round_000/policy as a LoRA adapter"), out
    assert _round_lines(out, 2)[-1].endswith(f"generation hf float32 (auto), policy {other}")


def test_status_of_no_run_names_the_file(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) != 0
    assert "state.json" in capsys.readouterr().err
