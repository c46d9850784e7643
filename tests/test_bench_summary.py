"""The README's results table reads the generation benchmark's rows as they are written now;
benchmark entry points refuse bad arguments before running anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import summary  # noqa: E402


def _row(setting: str, e2e: float, ceiling: float = 0.1, in_flight: int = 64) -> dict:
    return {"setting": setting, "e2e_round_tps": e2e, "ceiling_fraction": ceiling,
            "in_flight": in_flight}


def test_generation_rows_judge_each_backend_against_the_plain_loop():
    rows = [_row("plain-fp32", 20.0), _row("hf-fp32", 59.0, ceiling=0.36),
            _row("vllm-fp32-eager", 61.0), {"setting": "vllm-bf16-eager", "error": "boom"},
            _row("hf-bf16", 90.0, ceiling=0.22), _row("hf-bf16", 95.0, 0.347, in_flight=128)]
    got = {target: (measured, met) for target, measured, met in summary._generation({}, rows)}
    assert got["vllm-fp32-eager >= 3x the plain generate loop, end to end per round"] == ("3.05x", True)
    assert got["hf-fp32 >= 3x the plain generate loop, end to end per round"] == ("2.95x", False)
    assert got[">= 35% of the compute ceiling (hf fp32, 64 in flight)"] == ("36.0%", True)
    assert got[">= 35% of the compute ceiling (hf bf16, 64 in flight)"] == ("22.0%", False)
    # each in-flight count is its own row, and 34.7% is not rounded up into a met 35%
    assert got[">= 35% of the compute ceiling (hf bf16, 128 in flight)"] == ("34.7%", False)


def test_generation_rows_without_a_plain_loop_claim_no_speed_up():
    got = summary._generation({}, [_row("hf-fp32", 100.0, ceiling=0.2)])
    assert [(m, ok) for _, m, ok in got] == [("20.0%", False)]


def test_the_machine_column_names_the_cpu_where_a_benchmark_recorded_it():
    assert summary.machine({"machine": "x86_64, 2 cores", "cpu": "AMD EPYC: avx512_bf16"}) == \
        "x86_64, 2 cores; AMD EPYC: avx512_bf16"
    assert summary.machine({"machine": "x86_64, 2 cores", "cpu_flags": "Xeon: amx_bf16"}) == \
        "x86_64, 2 cores; Xeon: amx_bf16"
    assert summary.machine({"machine": "x86_64, 2 cores"}) == "x86_64, 2 cores"
    assert summary.machine({}) == "-"


BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("args, message", [
    (["loop_timing.py", "--before", "no-such-rev", "--config", "configs/tiny.yaml"],
     "--before: 'no-such-rev' is not a commit"),
    (["loop_timing.py", "--config", "configs/no-such.yaml", "--set-after", "loop.rounds=1"],
     "--config: no such file"),
    (["loop_timing.py", "--config", "configs/tiny.yaml"], "nothing to compare"),
    (["reward_kl_frontier.py", "--seeds", "0"], "--seeds: must be >= 1"),
    (["reward_kl_frontier.py", "--betas", "0.1,x"], "--betas: comma-separated numbers expected"),
    (["reward_kl_frontier.py", "--betas", "0,0.1"], "--betas: every beta must be > 0"),
    (["reward_kl_frontier.py", "--saved", "no-such.json"],
     "--saved: no-such.json: not a reward_kl_frontier results file"),
    (["demo_figures.py", "no-such-run"], "run: no-such-run/state.json does not exist"),
    (["demo_figures.py", "runs/demo", "extra"], "unrecognized arguments: extra"),
    (["summary.py", "--size", "full"], "unrecognized arguments: --size full"),
    (["dpo_throughput.py", "--size", "full", "--name", "../x"], "--name: '../x' is not a plain"),
    (["generation_throughput.py", "--name", "a/b"], "--name: 'a/b' is not a plain"),
    (["dpo_passes.py", "--name", ".hidden"], "--name: '.hidden' is not a plain"),
])
def test_bad_benchmark_arguments_are_refused_by_name_and_write_nothing(args, message):
    results = BENCH / "results"
    before = {p.name: p.stat().st_mtime_ns for p in results.iterdir()}
    out = subprocess.run([sys.executable, str(BENCH / args[0]), *args[1:]], cwd=BENCH.parent,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert {p.name: p.stat().st_mtime_ns for p in results.iterdir()} == before


@pytest.mark.parametrize("script", ["demo_figures.py", "summary.py"])
def test_help_prints_usage_and_writes_nothing(script):
    """These two once read their arguments by position: `--help` was taken for a run
    directory (or ignored) and the README and results were rewritten."""
    watched = [*(BENCH / "results").iterdir(), BENCH.parent / "README.md"]
    before = {p: p.stat().st_mtime_ns for p in watched}
    out = subprocess.run([sys.executable, str(BENCH / script), "--help"], cwd=BENCH.parent,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("usage:"), out.stderr
    assert {p: p.stat().st_mtime_ns for p in watched} == before


def test_bf16_rows_compare_like_for_like_and_report_a_ceiling_bound_as_nothing():
    by = {"alignloop": {"tokens_per_s": 200.0}, "trl-default": {"tokens_per_s": 60.0, "peak_rss_mb": 7000},
          "alignloop-bf16": {"tokens_per_s": 300.0, "peak_rss_mb": 6500, "mfu_bf16": 0.31}}
    got = {t: (m, ok) for t, m, ok in summary._dpo_bf16("full", by, full=True)}
    assert got["full: bf16-mixed >= 4x TRL's default (bf16) tokens/s"] == ("5.0x", True)
    assert got["full: bf16-mixed >= 2x alignloop fp32 tokens/s (cold epoch)"] == ("1.50x", False)
    assert got["full fine-tune bf16-mixed MFU >= 30% of the bf16 peak"] == ("31%", True)
    assert got["full: bf16-mixed peak memory <= TRL's default"][1] is True
    bound = {"alignloop-bf16": {"tokens_per_s_at_most": 0.6}}   # no step in the time limit
    assert summary._dpo_bf16("LoRA", bound, full=False) == []


def test_frontier_rows_state_the_paired_gap_or_that_no_hybrid_point_matched():
    best = {"kl": 3.04, "reward_failing": 0.5}
    comparisons = {
        "hybrid": {"matched": {"kl": 2.9}, "above_everywhere": True, "offline_best": best,
                   "diff": {"value": 0.12, "lo": 0.03, "hi": 0.21}},
        "hybrid_base": {"matched": None, "above_everywhere": False, "offline_best": best},
    }
    got = summary._frontier({"target_met": {"hybrid": True, "hybrid_base": False}},
                            {"comparisons": comparisons})
    assert got[0][1:] == ("above everywhere: yes; at offline's best (KL 3.0): +0.120 [+0.030, +0.210]",
                          True)
    assert got[1][1:] == ("no point at or below offline's best KL", False)
    assert "reference = base" in got[1][0]


def test_the_summary_reads_the_full_size_then_the_target_cells_then_the_quick_pass(tmp_path):
    assert summary.result_file("label_noise", tmp_path) is None
    for part in (".quick", ".target", ""):
        (tmp_path / f"label_noise{part}.json").write_text("{}")
        assert summary.result_file("label_noise", tmp_path) == tmp_path / f"label_noise{part}.json"


def test_a_result_measured_on_several_machines_names_each_with_its_seeds():
    meta = {"machine": "AMD EPYC, 2 cores", "measured": [
        {"seeds": [0, 1, 2], "by": "Intel Xeon, 2 cores; 2026-12-04"},
        {"seeds": [3], "by": "AMD EPYC, 2 cores; 2026-12-05"}]}
    assert summary.machine(meta) == ("seeds 0-2: Intel Xeon, 2 cores; 2026-12-04; "
                                     "seed 3: AMD EPYC, 2 cores; 2026-12-05")
    meta["measured"] = meta["measured"][1:]       # one machine: the plain machine column
    assert summary.machine(meta) == "AMD EPYC, 2 cores"


def test_compiled_rows_are_held_to_the_same_targets_against_both_fp32s():
    by = {"alignloop": {"tokens_per_s": 269.0}, "alignloop-compiled": {"tokens_per_s": 317.0},
          "alignloop-bf16-compiled": {"tokens_per_s": 693.0, "mfu_bf16": 0.26}}
    got = {t: (m, ok) for t, m, ok in summary._dpo_compiled("full", by, full=True)}
    assert got == {
        "full: bf16-mixed with train.compile >= 2x alignloop compiled fp32 tokens/s": ("2.19x", True),
        "full: bf16-mixed with train.compile >= 2x alignloop eager fp32 tokens/s": ("2.58x", True),
        "full fine-tune bf16-mixed with train.compile MFU >= 30% of the bf16 peak": ("26%", False)}
    slow = {**by, "alignloop-compiled": {"tokens_per_s": 400.0}}
    assert ("1.73x", False) in [(m, ok) for _, m, ok in summary._dpo_compiled("LoRA", slow, full=False)]
    assert summary._dpo_compiled("full", {"alignloop": {"tokens_per_s": 1.0}}, full=True) == []
