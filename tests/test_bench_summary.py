"""The README's results table reads the generation benchmark's rows as they are written now."""

from __future__ import annotations

import sys
from pathlib import Path

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
