"""benchmarks/dpo_passes.py's table: per-pass times, the bf16/fp32 ratios, and the system
time and page faults that tell a cold pass from a warm one."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import dpo_passes  # noqa: E402

META = {"machine": "test machine", "cpu": "test CPU", "date": "2026-12-07",
        "command": "python benchmarks/dpo_passes.py --name dpo_passes.test"}


def _row(precision, passes, system=None, faults=None):
    row = {"precision": precision, "step_s": [[s / 2, s / 2] for s in passes],
           "tokens_per_pass": 1000}
    if system is not None:
        row |= {"system_s": system, "minor_faults": faults}
    return row


def test_table_shows_faults_and_both_ratios():
    md = dpo_passes.table([_row("fp32", [60.0, 50.0], [14.2, 0.4], [1_596_932, 0]),
                           _row("bf16-mixed", [30.0, 25.0], [13.9, 0.2], [1_644_989, 5_616])],
                          META)
    assert "| fp32 | 60.0 | 50.0 | 17 | 20 | 14.2 / 0.4 | 1,596,932 / 0 |" in md
    assert "| bf16-mixed | 30.0 | 25.0 | 33 | 40 | 13.9 / 0.2 | 1,644,989 / 5,616 |" in md
    assert "2.00x in pass 0, 2.00x in the last pass" in md


def test_results_from_before_the_fault_columns_still_render():
    md = dpo_passes.table([_row("fp32", [85.5, 74.2])], META)
    assert "| fp32 | 85.5 | 74.2 | 12 | 13 | - | - |" in md


def test_name_must_be_a_plain_file_name(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["dpo_passes.py", "--name", "../elsewhere"])
    with pytest.raises(SystemExit):
        dpo_passes.main()
    assert "not a plain file name" in capsys.readouterr().err


def test_compiled_rows_get_their_ratios_against_eager_and_compiled_fp32():
    rows = [_row("fp32", [60.0, 50.0]), _row("bf16-mixed", [30.0, 25.0]),
            _row("fp32" + dpo_passes.FIRST, [80.0, 40.0]), _row("fp32" + dpo_passes.CACHED, [45.0, 40.0]),
            _row("bf16-mixed" + dpo_passes.FIRST, [50.0, 20.0]),
            _row("bf16-mixed" + dpo_passes.CACHED, [24.0, 20.0])]
    md = dpo_passes.table(rows, META)
    assert "- bf16-mixed against fp32: 2.00x in pass 0, 2.00x in the last pass." in md
    assert ("- bf16-mixed compiled, cached against fp32 compiled, cached: 1.88x in pass 0, "
            "2.00x in the last pass.") in md
    assert "- bf16-mixed compiled, cached against fp32: 2.50x in pass 0, 2.50x in the last pass." in md
    assert "- bf16-mixed compiled, first compile against fp32: 1.20x in pass 0" in md
    assert "- bf16-mixed compiled, cached against bf16-mixed: 1.25x in pass 0" in md
    assert "| bf16-mixed compiled, first compile | 50.0 | 20.0 |" in md


def test_an_unknown_precision_is_refused_before_any_worker_runs(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["dpo_passes.py", "--precisions", "fp32,fp8"])
    monkeypatch.setattr(dpo_passes, "_run", lambda *a: pytest.fail("ran"))
    with pytest.raises(SystemExit):
        dpo_passes.main()
    assert "argument --precisions: unknown ['fp8']" in capsys.readouterr().err
