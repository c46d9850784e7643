"""The README's results table reads the generation benchmark's rows as they are written now;
benchmark entry points refuse bad arguments before running anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import summary  # noqa: E402


def _row(setting: str, e2e: float, ceiling: float = 0.1) -> dict:
    return {"setting": setting, "e2e_round_tps": e2e, "ceiling_fraction": ceiling, "in_flight": 64}


def test_generation_rows_judge_each_backend_against_the_plain_loop():
    rows = [_row("plain-fp32", 20.0), _row("hf-fp32", 59.0, ceiling=0.36),
            _row("vllm-fp32-eager", 61.0), {"setting": "vllm-bf16-eager", "error": "boom"}]
    got = {target: (measured, met) for target, measured, met in summary._generation({}, rows)}
    assert got["vllm-fp32-eager >= 3x the plain generate loop, end to end per round"] == ("3.05x", True)
    assert got["hf-fp32 >= 3x the plain generate loop, end to end per round"] == ("2.95x", False)
    assert got[">= 35% of the compute ceiling (hf fp32, 64 in flight)"] == ("36%", True)


def test_generation_rows_without_a_plain_loop_claim_no_speed_up():
    got = summary._generation({}, [_row("hf-fp32", 100.0, ceiling=0.2)])
    assert [(m, ok) for _, m, ok in got] == [("20%", False)]


BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("args, message", [
    (["loop_timing.py", "--before", "no-such-rev", "--config", "configs/tiny.yaml"],
     "--before: 'no-such-rev' is not a commit"),
    (["loop_timing.py", "--config", "configs/no-such.yaml", "--set-after", "loop.rounds=1"],
     "--config: no such file"),
    (["loop_timing.py", "--config", "configs/tiny.yaml"], "nothing to compare"),
    (["reward_kl_frontier.py", "--seeds", "0"], "--seeds: must be >= 1"),
])
def test_bad_benchmark_arguments_are_refused_by_name_and_write_nothing(args, message):
    results = BENCH / "results"
    before = {p.name: p.stat().st_mtime_ns for p in results.iterdir()}
    out = subprocess.run([sys.executable, str(BENCH / args[0]), *args[1:]], cwd=BENCH.parent,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert {p.name: p.stat().st_mtime_ns for p in results.iterdir()} == before
