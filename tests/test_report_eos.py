"""The share of responses that end by EOS (rather than at max_new_tokens) in the round
report, the run report and the demo table, from eval tables whose finish reasons are
crafted so the shares are known by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from alignloop.artifacts import write_parquet
from alignloop.evaluation import SAMPLES, read_samples
from alignloop.report import write_round_report, write_run_report

from .fake_run import make_fake_run

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import demo_figures  # noqa: E402

# fake_run: 24 prompts p000..p023 x 2 samples per model (48 rows each)
RULES = {
    # round 0 policy: every prompt with i % 4 == 0 is cut (6 prompts x 2 = 12), and the
    # second sample of p001 and p013 is cut too: 48 - 12 - 2 = 34 end by EOS -> 34/48
    (0, "policy"): lambda i, s: i % 4 != 0 and not (i % 12 == 1 and s == 1),
    # round 1 policy: i % 6 == 0 cut (4 prompts x 2 = 8): 40/48
    (1, "policy"): lambda i, s: i % 6 != 0,
    # the base model: only p000..p005 end by EOS: 12/48
    (0, "base"): lambda i, s: i < 6,
    (1, "base"): lambda i, s: i < 6,
}
EXPECTED = {(0, "policy"): 34 / 48, (1, "policy"): 40 / 48, (0, "base"): 12 / 48}


def _craft(run: Path, k: int) -> None:
    """Rewrite round k's finish reasons by RULES, and add temperature-1 `policy_kl` rows that
    are all cut: they are KL samples, not what users see, and must not count."""
    rdir = run / f"round_{k:03d}"
    rows = read_samples(rdir)
    for r in rows:
        i = int(r["prompt_id"][1:])
        r["finish_reason"] = "stop" if RULES[(k, r["model"])](i, r["sample_index"]) else "length"
    kl_rows = [{**r, "model": "policy_kl", "finish_reason": "length"}
               for r in rows if r["model"] == "policy"]
    write_parquet(rdir / SAMPLES, rows + kl_rows)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = make_fake_run(tmp_path_factory.mktemp("eos"), rounds=2)
    for k in (0, 1):
        _craft(run, k)
        write_round_report(run, k)
    write_run_report(run)
    return run


def _report(run: Path, k: int) -> dict:
    return json.loads((run / f"round_{k:03d}/report/report.json").read_text())


def test_ends_by_eos_share_per_model_with_an_interval_over_prompts(run):
    r0, r1 = _report(run, 0)["length"], _report(run, 1)["length"]
    p0, b0 = r0["ends_by_eos"]["policy"], r0["ends_by_eos"]["base"]
    assert p0["value"] == pytest.approx(EXPECTED[(0, "policy")]) and p0["n"] == 48
    assert b0["value"] == pytest.approx(EXPECTED[(0, "base")]) and b0["n"] == 48
    assert r1["ends_by_eos"]["policy"]["value"] == pytest.approx(EXPECTED[(1, "policy")])
    # "previous" in round 1 is round 0's policy
    assert r1["ends_by_eos"]["previous"]["value"] == pytest.approx(EXPECTED[(0, "policy")])
    # the bootstrap resamples prompts: an interval around the value, not a point
    assert p0["lo"] < p0["value"] < p0["hi"] and b0["lo"] < b0["value"] < b0["hi"]
    # the length table's share agrees with the estimate
    assert r0["models"]["policy"]["share_stop"] == pytest.approx(p0["value"])
    assert r0["models"]["policy"]["share_length"] == pytest.approx(1 - p0["value"])


def test_ends_by_eos_in_round_and_run_markdown_and_html(run):
    md = (run / "round_000/report/report.md").read_text()
    policy_row = next(line for line in md.splitlines() if "Ends by EOS, this policy" in line)
    base_row = next(line for line in md.splitlines() if "Ends by EOS, base model" in line)
    assert "| 0.708 |" in policy_row and "| 48 |" in policy_row
    assert "| 0.25 |" in base_row
    assert "Ends by EOS, this policy" in (run / "round_000/report/report.html").read_text()
    run_html = (run / "report.html").read_text()
    assert "ends by EOS" in run_html and ">0.833<" in run_html


def test_demo_table_shows_the_share_per_round_and_whether_it_rises(run):
    fig = demo_figures.collect(run)
    assert [r["ends_by_eos"] for r in fig["rounds"]] == pytest.approx(
        [EXPECTED[(0, "policy")], EXPECTED[(1, "policy")]])
    assert fig["base"]["ends_by_eos"] == pytest.approx(EXPECTED[(0, "base")])
    md, targets = demo_figures.render(fig)
    lines = md.splitlines()
    assert lines[0].endswith("| ends by EOS | gate |")
    assert lines[2].startswith("| base model |") and lines[2].endswith("| 25% | - |")
    assert lines[3].startswith("| 0 |") and lines[3].endswith("| 71% | kept |")
    assert lines[4].startswith("| 1 |") and lines[4].endswith("| 83% | kept |")
    assert targets["eos_rise"] is True
    assert "rises from round 0 to round 1: **met** (71% → 83%; base model 25%)" in md
    assert f"max_new_tokens = {fig['max_new_tokens']} tokens" in md


def test_demo_table_says_when_the_share_does_not_rise(run):
    fig = demo_figures.collect(run)
    fig["rounds"][1]["ends_by_eos"] = fig["rounds"][0]["ends_by_eos"] - 0.1
    md, targets = demo_figures.render(fig)
    assert targets["eos_rise"] is False and "**not met** (71% → 61%" in md


def test_demo_table_shows_a_rolled_back_round_and_judges_the_kept_ones(run):
    """A round whose gate tripped with rollback is shown as such, and the never-falls target
    looks only at kept rounds: a fall into a rolled-back round does not count, a fall
    between kept rounds does."""
    fig = demo_figures.collect(run)
    r0, r1 = fig["rounds"]
    r0["latent_failing"], r1["latent_failing"] = 1.0, 0.8
    md, targets = demo_figures.render(fig)
    assert targets["kept_never_falls"] is False and "next (a rolled-back round is not kept): " \
        "**not met**" in md
    state = {"gate": {"tripped": True, "action": "rollback", "reason": "slice fell"}}
    r1["gate"] = demo_figures._gate(state)
    md, targets = demo_figures.render(fig)
    assert r1["gate"] == "rolled back" and md.splitlines()[4].endswith("| rolled back |")
    assert targets["kept_never_falls"] is True
