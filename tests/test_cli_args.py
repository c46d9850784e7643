"""Out-of-range flags are usage errors that name the flag, before anything is opened,
started or written (`alignloop.cli.argtypes`)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
from alignloop.cli.argtypes import number, whole


def test_whole_and_number_take_their_range_and_refuse_the_rest():
    assert whole(0, 65535)("0") == 0 and whole(1)("12") == 12
    for parse, bad, why in [(whole(1), "0", "must be 1 or more, got 0"),
                            (whole(0, 65535), "65536", "must be from 0 to 65535, got 65536"),
                            (whole(0), "1.5", "must be a whole number, got '1.5'"),
                            (number(0, 1), "1.01", "must be at least 0 and at most 1, got 1.01"),
                            (number(0, above=True), "0", "must be above 0, got 0"),
                            (number(0, above=True), "inf", "must be above 0, got inf"),
                            (number(0, 1), "nan", "got nan"),
                            (number(0, 1), "half", "must be a number, got 'half'")]:
        with pytest.raises(argparse.ArgumentTypeError, match=why):
            parse(bad)
    assert number(0, 1)("0") == 0.0 and number(0, above=True)("0.5") == 0.5


@pytest.mark.parametrize("args, message", [
    (["queue", "serve", "--gold-rate", "2"], "argument --gold-rate: must be at least 0 and at most 1"),
    (["queue", "serve", "--lease-seconds", "-5"], "argument --lease-seconds: must be above 0"),
    (["queue", "serve", "--workers", "0"], "argument --workers: must be 1 or more"),
    (["queue", "serve", "--port", "99999"], "argument --port: must be from 0 to 65535"),
    (["queue", "serve", "--max-body-bytes", "0"], "argument --max-body-bytes: must be 1 or more"),
    (["queue", "import", "pairs.jsonl", "--round", "-1"], "argument --round: must be 0 or more"),
    (["queue", "import", "pairs.jsonl", "--votes-required", "0"],
     "argument --votes-required: must be 1 or more"),
    (["queue", "simulate", "--annotators", "0"], "argument --annotators: must be 1 or more"),
    (["report", "run", "--round", "-2"], "argument --round: must be 0 or more"),
])
def test_out_of_range_flags_are_refused_by_name_and_leave_nothing(tmp_path, args, message):
    run_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "alignloop.cli", *args, "--run-dir", str(run_dir)]
                         if args[0] == "queue" else [sys.executable, "-m", "alignloop.cli", *args],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert list(tmp_path.iterdir()) == []
