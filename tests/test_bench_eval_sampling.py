"""benchmarks/eval_sampling.py: its table, and arguments refused before anything runs.
(The timing itself is the benchmark's; `sample_each`'s behaviour is tested in
tests/test_generation_sample_each.py.)"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import eval_sampling  # noqa: E402

META = {"machine": "test machine", "cpu": "test CPU", "date": "2026-12-07", "tokens": 128,
        "repeats": 3, "command": "python benchmarks/eval_sampling.py"}


def test_table_gives_both_ways_and_their_ratio():
    r = {"dtype": "bfloat16", "slots": 64, "samples": 96,
         "tokens": {"separate": 8000, "together": 7900},
         "median_s": {"separate": 20.0, "together": 16.0}, "speedup": 1.25, "same_tokens": 90}
    md = eval_sampling.table(r, META)
    assert "| two sample calls | 20.0 | 8,000 | 400 |" in md
    assert "| one batch (`sample_each`) | 16.0 | 7,900 | 494 |" in md
    assert "**1.25x** the two calls; 90 of 96 samples" in md
    assert "48 prompts" in md and "bfloat16, 64 slots" in md


@pytest.mark.parametrize("arg", ["--prompts", "--tokens", "--repeats"])
def test_a_count_below_one_is_refused_before_any_model_loads(monkeypatch, capsys, arg):
    monkeypatch.setattr(sys, "argv", ["eval_sampling.py", arg, "0"])
    monkeypatch.setattr(eval_sampling, "measure", lambda *a: pytest.fail("measured"))
    with pytest.raises(SystemExit):
        eval_sampling.main()
    assert f"argument {arg}: must be >= 1" in capsys.readouterr().err
