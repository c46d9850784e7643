"""Round and run drift reports on a synthetic run directory, on a really trained round, and
in a real browser (headless Chromium)."""

import copy
import io
import json
import os
import shutil
from html import escape
from pathlib import Path

import numpy as np
import pytest
from alignloop.config import config_from_dict, dump_config
from alignloop.report import (
    MissingRunConfig,
    ReportSchemaError,
    build_round_report,
    load_round,
    previous_round,
    validate_report,
    write_round_report,
    write_run_report,
)
from alignloop.report.html import render_round_html
from alignloop.report.markdown import KL_K1_NOTE, LATENT_REWARD_NOTE, fmt, render_markdown

from .fake_run import SCRIPT, make_fake_run, write_fake_eval

CHROMIUM = "/usr/bin/chromium"
ROUND_SECTIONS = ["Summary", "Training", "Drift: KL divergence", "Win rates", "Per slice",
                  "Length and degeneration", "Implicit reward", "Labels", "Examples"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two complete rounds; round 1 regresses on `bad_news` and trips a (stop) gate."""
    run = make_fake_run(tmp_path_factory.mktemp("fake"), rounds=2, gate_round=1,
                        regress_slice="bad_news")
    for k in (0, 1):
        write_round_report(run, k)
    write_run_report(run)
    return run


def _report(run, k):
    return json.loads((run / f"round_{k:03d}/report/report.json").read_text())


def test_round_reports_validate_and_hold_every_section(run):
    r0, r1 = _report(run, 0), _report(run, 1)
    for r in (r0, r1):
        validate_report(r)
        assert r["schema_version"] == 2
        for key in ("kl_to_reference", "kl_to_base", "win_rate_vs_base", "latent_reward", "length",
                    "degeneration", "implicit_reward", "labels", "train"):
            assert r[key]["available"], (r["round"], key, r[key])
    # round 0 has no previous policy, and its labels are static pairs only
    assert r0["win_rate_vs_previous"] == {"available": False, "reason": "round 0 has no previous policy"}
    assert r0["labels"]["pairs_by_source"] == {"static": 16} and "static" in r0["labels"]["note"]
    assert r0["latent_reward"]["models"]["previous"] is None
    assert r1["win_rate_vs_previous"]["available"]
    # the fake policy moves ~0.3 nats per response from its reference, (k + 1) * 0.3 from base
    kl = r1["kl_to_reference"]["k1"]["sequence"]
    assert kl["lo"] < kl["value"] < kl["hi"] and 0.2 < kl["value"] < 0.4
    assert 0.45 < r1["kl_to_base"]["k1"]["sequence"]["value"] < 0.75
    assert r1["train"]["log"] == "../train_log.jsonl" and r1["train"]["steps"] == 6
    assert (run / "round_001/report" / r1["train"]["log"]).resolve() == \
        (run / "round_001/train_log.jsonl").resolve()
    # the base model is sampled in round 0 only here too: later rounds read it from there
    assert set(r1["length"]["models"]) == {"policy", "previous", "base"}
    assert set(r1["latent_reward"]["delta_vs_previous"]["by_slice"]) == {"bad_news", "complaint", "greeting"}
    assert r1["labels"]["human_votes"] > 0 and r1["labels"]["human_budget"] == 12
    for name in ("report.md", "report.html", "training.png", "kl.png", "win_rates.png"):
        assert (run / "round_001/report" / name).exists(), name


def test_regressed_slice_and_low_agreement_alert(run):
    kinds = {(a["kind"], a["slice"]) for a in _report(run, 1)["alerts"]}
    assert ("slice_regression", "bad_news") in kinds
    assert not any(k == "slice_regression" and s != "bad_news" for k, s in kinds)


def test_markdown_has_the_headline_numbers(run):
    r, md = _report(run, 1), (run / "round_001/report/report.md").read_text()
    kl = r["kl_to_reference"]["k1"]["sequence"]
    assert f"| {fmt(kl['value'])} | {fmt(kl['lo'])} – {fmt(kl['hi'])} |" in md
    assert fmt(r["win_rate_vs_previous"]["overall"]["value"]) in md
    assert fmt(r["implicit_reward"]["accuracy"]["value"]) in md
    for heading in ("## Alerts", "## Headline", "## Per slice", "## Labels", "## Training"):
        assert heading in md
    assert "**slice_regression**" in md


def _alert_kinds(run, k, **report_cfg):
    cfg = config_from_dict({"labeling": {"human": {"budget": 12}},
                            "report": {"n_boot": 100, **report_cfg}})
    return [a["kind"] for a in build_round_report(load_round(run, k), cfg)["alerts"]]


def test_alerts_fire_when_thresholds_are_crossed_and_not_otherwise(run):
    quiet = {"alert_slice_drop": 0.0, "agreement_floor": 0.0}
    assert _alert_kinds(run, 1, alert_kl_to_reference=5.0, **quiet) == []
    assert _alert_kinds(run, 1, alert_kl_to_reference=0.1, **quiet) == ["kl_budget"]
    assert _alert_kinds(run, 1, alert_kl_to_reference=0.0, **quiet) == []          # 0: off
    assert "annotator_agreement" in _alert_kinds(run, 1, agreement_floor=0.99)


def test_length_blowup_against_base_in_round_zero(tmp_path):
    run = make_fake_run(tmp_path, rounds=1, length_scale=3.0)
    assert "length_blowup" in _alert_kinds(run, 0)
    assert "length_blowup" not in _alert_kinds(run, 0, length_blowup=5.0)


def test_schema_rejects_broken_reports(run):
    good = _report(run, 1)
    bad = copy.deepcopy(good)
    del bad["kl_to_base"]
    with pytest.raises(ReportSchemaError, match="kl_to_base"):
        validate_report(bad)
    bad = copy.deepcopy(good)
    bad["kl_to_reference"]["k1"]["sequence"]["value"] = "big"
    with pytest.raises(ReportSchemaError, match="kl_to_reference/k1/sequence/value"):
        validate_report(bad)
    bad = copy.deepcopy(good)
    bad["alerts"].append({"kind": "vibes"})
    with pytest.raises(ReportSchemaError, match="alerts"):
        validate_report(bad)


def test_missing_artifacts_become_reasons_not_crashes(tmp_path):
    run = make_fake_run(tmp_path, rounds=2)
    shutil.rmtree(run / "round_000")                       # the previous round is gone
    (run / "round_001/eval/heldout_pairs.parquet").unlink()
    (run / "round_001/train_log.jsonl").unlink()
    r = json.loads(write_round_report(run, 1).read_text())
    assert r["latent_reward"]["previous_reason"] == "round 0 does not exist in this run directory"
    assert r["latent_reward"]["delta_vs_previous"] is None
    assert r["implicit_reward"]["reason"].startswith("no eval/heldout_pairs.parquet")
    assert r["train"] == {"available": False, "reason": "no train_log.jsonl (training has not run)"}
    assert r["length"]["ratio_vs_previous"] is None
    # a round with nothing but pairs: every section says why it is empty
    (run / "round_002").mkdir()
    shutil.copy(run / "round_001/pairs.parquet", run / "round_002/pairs.parquet")
    r = json.loads(write_round_report(run, 2).read_text())
    assert not r["kl_to_reference"]["available"] and not r["win_rate_vs_base"]["available"]
    assert r["labels"]["available"] and r["alerts"] == []


def _gate(run, k, action):
    state = json.loads((run / "state.json").read_text())
    state["rounds"][str(k)]["gate"] = {"tripped": True, "action": action, "reason": "test"}
    (run / "state.json").write_text(json.dumps(state))


def test_previous_round_steps_back_over_rolled_back_rounds(tmp_path):
    run = make_fake_run(tmp_path, rounds=4)
    assert [previous_round(run, k) for k in range(4)] == [None, 0, 1, 2]
    _gate(run, 0, "rollback")
    _gate(run, 1, "stop")                                  # tripped, but its policy is kept
    _gate(run, 2, "rollback")
    assert [previous_round(run, k) for k in range(5)] == [None, None, 1, 1, 3]
    (run / "state.json").unlink()                          # no state: the round before
    assert [previous_round(run, k) for k in range(3)] == [None, 0, 1]


def test_report_after_a_rollback_compares_with_the_policy_it_started_from(tmp_path):
    run = make_fake_run(tmp_path, rounds=3)
    _gate(run, 1, "rollback")                              # round 2 starts from round 0's policy
    r0 = json.loads(write_round_report(run, 0).read_text())
    r2 = json.loads(write_round_report(run, 2).read_text())
    validate_report(r2)
    assert r2["inputs"]["previous_samples"] == "../../round_000/eval/samples.parquet"
    assert r2["latent_reward"]["models"]["previous"] == r0["latent_reward"]["models"]["policy"]
    assert r2["length"]["models"]["previous"] == r0["length"]["models"]["policy"]
    assert any("round 2 started from round 0's policy" in n for n in r2["notes"])
    assert "previous policy (round 0)" in (run / "round_002/report/report.html").read_text()
    # an explicit `previous` wins over state.json
    r2 = json.loads(write_round_report(run, 2, previous=1).read_text())
    assert r2["inputs"]["previous_samples"] == "../../round_001/eval/samples.parquet"
    assert r2["notes"] == []
    # every earlier round rolled back: round 2 started from the base model
    _gate(run, 0, "rollback")
    assert load_round(run, 2).previous is None
    r2 = json.loads(write_round_report(run, 2).read_text())
    validate_report(r2)
    reason = r2["latent_reward"]["previous_reason"]
    assert reason.startswith("round 2 started from the base model")
    assert r2["win_rate_vs_previous"] == {"available": False, "reason": reason}
    assert r2["inputs"]["previous_samples"] is None
    assert r2["latent_reward"]["models"]["previous"] is None
    assert set(r2["length"]["models"]) == {"policy", "base"}


def test_a_run_without_config_yaml_is_refused_not_defaulted(tmp_path):
    run = make_fake_run(tmp_path, rounds=1)
    (run / "config.yaml").unlink()
    with pytest.raises(MissingRunConfig, match=r"config\.yaml not found.*pass the config"):
        write_round_report(run, 0)
    assert not (run / "round_000/report").exists()
    cfg = config_from_dict({"labeling": {"human": {"budget": 12}}, "report": {"n_boot": 100}})
    report = json.loads(write_round_report(run, 0, config=cfg).read_text())
    assert report["thresholds"]["n_boot"] == 100
    shutil.rmtree(run / "round_000/report")                # the run view says why, and goes on
    assert "not computed: the run directory has no config.yaml" in write_run_report(run).read_text()


def test_run_report_on_a_run_in_progress(tmp_path):
    run = make_fake_run(tmp_path, rounds=2, gate_round=1)
    write_round_report(run, 0)                             # round 1 has eval but no report yet
    (run / "round_002").mkdir()                            # round 2 has just started
    state = json.loads((run / "state.json").read_text())
    state["rounds"]["2"] = {"stages": {"slices": {"status": "done"}, "generate": {"status": "running"}}}
    (run / "state.json").write_text(json.dumps(state))
    html = write_run_report(run).read_text()
    assert 'href="round_000/report/report.html"' in html
    assert "computed here from eval artifacts" in html     # round 1
    assert "<td>2</td><td>slices: done, generate: running</td>" in html
    assert "in progress" in html
    assert "gate tripped (KL to base 2.1 over the budget 2.0); action stop" in html
    assert "Round 2: stage generate is running" in html
    assert not (run / "round_001/report").exists()          # computed, not written


def test_cli_report(run, capsys):
    from alignloop.cli import main

    assert main(["report", str(run), "--round", "1"]) == 0
    out = capsys.readouterr().out
    assert "round_001/report/report.html" in out and str(run / "report.html") in out
    assert main(["report", str(run / "nope")]) == 2


def test_report_of_a_really_trained_round(tmp_path):
    """A real DPO round on the tiny random model (2 steps): real train_log.jsonl and policy,
    eval artifacts from the fake generator; the report validates against the schema."""
    from alignloop.artifacts import write_parquet
    from alignloop.data import read_pairs
    from alignloop.training.trainer import train_dpo

    pairs = read_pairs("builtin:demo-pairs", limit=8)[0]
    cfg = config_from_dict({"model": {"name": "builtin:tiny-random"},
                            "train": {"learning_rate": 1e-3, "batch_size": 4, "max_steps": 2,
                                      "lr_schedule": "constant"}, "report": {"n_boot": 200}})
    run, rdir = tmp_path / "run", tmp_path / "run/round_000"
    result = train_dpo(pairs, out_dir=rdir, policy=cfg.model.name, model_cfg=cfg.model,
                       data_cfg=cfg.data, train_cfg=cfg.train, progress=False)
    dump_config(cfg, run / "config.yaml")
    write_parquet(rdir / "pairs.parquet", [p.to_row() for p in pairs])
    write_fake_eval(rdir, 0)
    report = json.loads(write_round_report(run, 0).read_text())
    validate_report(report)
    assert result.policy_dir.exists()
    assert report["train"]["steps"] == 2
    assert report["train"]["final"]["loss"] == pytest.approx(result.metrics["loss"])
    # the report holds no wall-clock figure; the step timings are beside the step log
    assert "tokens_per_s" not in report["train"] and "generated_at" not in report
    timing = [json.loads(x) for x in (rdir / "train_timing.jsonl").read_text().splitlines()]
    assert [t["step"] for t in timing] == [1, 2] and all(t["tokens_per_s"] > 0 for t in timing)
    log = [json.loads(x) for x in (rdir / "train_log.jsonl").read_text().splitlines()]
    assert not {"tokens_per_s", "step_time_s"} & {k for r in log for k in r}
    assert report["implicit_reward"]["beta"] == cfg.train.beta
    assert report["labels"]["pairs_by_source"] == {"static": 8}


# --------------------------------------------------------------------------- read by a newcomer


def _cfg(**report_cfg):
    return config_from_dict({"labeling": {"human": {"budget": 12}},
                             "report": {"n_boot": 100, **report_cfg}})


def test_a_slice_check_skipped_for_too_few_samples_is_reported_with_why(run):
    # bad_news fell (n=16 per measure) but min_slice_samples = 20: no alert, and the report
    # says which check was skipped, why, and that the number is past the threshold
    report = build_round_report(load_round(run, 1), _cfg(min_slice_samples=20))
    validate_report(report)
    assert not any(a["kind"] == "slice_regression" for a in report["alerts"])
    skipped = {(c["slice"], c["measure"]): c for c in report["skipped_checks"]
               if c["kind"] == "slice_regression"}
    bad = skipped[("bad_news", "latent_reward")]
    assert bad["would_alert"] is True and bad["n"] == 16 and bad["value"] < 0
    assert "fewer than report.min_slice_samples = 20" in bad["reason"]
    assert "mean latent reward " in bad["reason"] and " → " in bad["reason"]
    assert skipped[("bad_news", "win_rate")]["would_alert"] is True
    assert skipped[("greeting", "win_rate")]["would_alert"] is False     # it improved
    md = render_markdown(report)
    html = render_round_html(report, {}, [])
    assert f"- **slice_regression: {bad['reason']} — past the alert threshold**" in md
    assert f'<div class="skipped">slice_regression: {escape(bad["reason"])}' in html


def test_checks_that_cannot_run_say_why(run):
    r0 = _report(run, 0)
    reasons = {(c["kind"], c["measure"]): c["reason"] for c in r0["skipped_checks"]}
    assert reasons[("kl_budget", None)] == "off: report.alert_kl_to_reference = 0"
    assert reasons[("slice_regression", "win_rate")] == (
        "no win rate against the previous policy: round 0 has no previous policy")
    assert reasons[("judge_agreement", None)] == (
        "no judge-human Cohen's kappa: no human votes this round")
    md = (run / "round_000/report/report.md").read_text()
    assert "Checks skipped" in md and "- kl_budget: off: report.alert_kl_to_reference = 0" in md


def test_a_policy_that_loses_to_the_base_model_alerts(tmp_path, run):
    lost = make_fake_run(tmp_path, rounds=1, reward_gain=-0.07, samples=4)
    report = build_round_report(load_round(lost, 0), _cfg())
    validate_report(report)
    w = report["win_rate_vs_base"]["overall"]
    assert w["value"] < 0.4 and w["hi"] < 0.5                  # ~0.34 (0.27-0.42), n=96
    (alert,) = [a for a in report["alerts"] if a["kind"] == "loses_to_base"]
    assert alert["message"].startswith(f"this round's policy loses to the base model: judge "
                                       f"win rate {w['value']:.2f} (95% CI")
    assert alert["value"] == w["value"] and alert["threshold"] == 0.5
    off = build_round_report(load_round(lost, 0), _cfg(alert_win_rate_vs_base=0))
    assert "loses_to_base" not in [a["kind"] for a in off["alerts"]]
    assert {"kind": "loses_to_base", "reason": "off: report.alert_win_rate_vs_base = 0",
            "slice": None, "measure": None, "n": None, "value": None,
            "would_alert": None} in off["skipped_checks"]
    # round 0 of the shared run: 0.375 but its interval reaches 0.5, so no alert
    r0 = _report(run, 0)
    assert r0["win_rate_vs_base"]["overall"]["hi"] > 0.5
    assert "loses_to_base" not in [a["kind"] for a in r0["alerts"]]


def test_missing_values_carry_no_unit(run):
    md = (run / "round_000/report/report.md").read_text()
    html = (run / "round_000/report/report.html").read_text()
    assert _report(run, 0)["length"]["ratio_vs_previous"] is None
    for text in (md, html):
        assert "Mean length vs previous round: —; vs base: " in text
        assert "—x" not in text and "—%" not in text


def test_judge_human_agreement_on_no_items_says_why(run):
    r0 = _report(run, 0)
    assert r0["labels"]["judge_human"] == {"items": 0, "agreement": None, "kappa": None,
                                           "reason": "no human votes this round", "by_judge": {},
                                           "agreement_lo": None, "agreement_hi": None,
                                           "kappa_lo": None, "kappa_hi": None}
    assert _report(run, 1)["labels"]["judge_human"]["reason"] is None
    why = "— (no item had both a judge verdict and a human majority: no human votes this round)"
    md = (run / "round_000/report/report.md").read_text()
    html = (run / "round_000/report/report.html").read_text()
    assert f"| judges agree with the human majority (items sent to people) | {why} |" in md
    assert f"<td>{why}</td>" in html
    assert "of 0 items" not in md and "of 0 items" not in html


def test_k1_kl_and_latent_reward_are_explained_where_they_are_shown(run):
    html = (run / "report.html").read_text()
    assert "KL to base (k1), 95% interval</span><sup>1</sup>" in html
    assert f'title="{escape(KL_K1_NOTE)}"' in html and f"¹ {escape(KL_K1_NOTE)}" in html
    assert "can come out below 0" in KL_K1_NOTE and "unbiased" in KL_K1_NOTE
    kl = _report(run, 1)["kl_to_base"]["k1"]["sequence"]
    assert f"<td>{fmt(kl['value'])} ({fmt(kl['lo'])} – {fmt(kl['hi'])})</td>" in html
    assert f"² {escape(LATENT_REWARD_NOTE)}" in html
    assert "demo task" in LATENT_REWARD_NOTE and "ground-truth" in LATENT_REWARD_NOTE
    for page in ("round_001/report/report.html", "round_001/report/report.md"):
        text = (run / page).read_text()
        for note in (KL_K1_NOTE, LATENT_REWARD_NOTE):
            assert (escape(note) if page.endswith("html") else note) in text, (page, note)


def _figures(monkeypatch, draw) -> dict:
    """{title or y label: Figure} of the figures `draw` makes (`plots._png` captured)."""
    from alignloop.report import plots

    figs = {}

    def keep(fig):
        ax = fig.axes[0]
        figs[ax.get_title() or ax.get_ylabel()] = fig
        return b""

    monkeypatch.setattr(plots, "_png", keep)
    draw(plots)
    return figs


def test_latent_reward_legends_do_not_cover_the_plot(run, monkeypatch):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    reports = {k: _report(run, k) for k in (0, 1)}
    figs = {**_figures(monkeypatch, lambda p: p.run_figures(reports)),
            **_figures(monkeypatch, lambda p: p.round_figures(reports[1], []))}
    across_rounds = next(t for t in figs if t.startswith("Latent reward per slice"))
    for title in (across_rounds, "mean latent reward"):
        fig = figs[title]
        FigureCanvasAgg(fig).draw()                               # lays the figure out
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        (legend,) = [lg.get_window_extent(renderer) for lg in [*fig.legends, ax.get_legend()]
                     if lg is not None]
        assert not legend.overlaps(ax.get_window_extent(renderer)), title
        assert legend.y1 <= ax.get_tightbbox(renderer).y0 + 1, title   # below the x labels


def test_latent_reward_per_slice_points_are_spread_apart_at_each_round(run, monkeypatch):
    reports = {k: _report(run, k) for k in (0, 1)}
    fig = next(f for t, f in _figures(monkeypatch, lambda p: p.run_figures(reports)).items()
               if t.startswith("Latent reward per slice"))
    lines = [c.lines[0] for c in fig.axes[0].containers]    # each series' data line
    assert len(lines) >= 3                                  # overall and the slices
    for k in (0, 1):
        xs = sorted(float(ln.get_xdata()[k]) for ln in lines)
        assert len(set(xs)) == len(xs), xs                  # no two series on one x
        assert k - 0.2 <= xs[0] and xs[-1] <= k + 0.2, xs   # and all beside their round


def test_agreement_trend_draws_the_judge_intervals(monkeypatch):
    def report(kappa, lo, hi):
        return {"labels": {"human_alpha": 0.5, "judge_human": {
            "kappa": kappa, "kappa_lo": lo, "kappa_hi": hi,
            "agreement": 0.7, "agreement_lo": 0.44, "agreement_hi": 0.86}}}

    reports = {1: report(0.74, 0.38, 1.0), 2: report(0.38, -0.09, 0.85)}
    fig = next(f for t, f in _figures(monkeypatch, lambda p: p.run_figures(reports)).items()
               if t.startswith("Label agreement"))
    bars = {c.get_label(): c for c in fig.axes[0].containers}
    assert set(bars) == {"annotators' alpha", "judge-human kappa", "share judge = human majority"}
    (segments,) = bars["judge-human kappa"].lines[2]          # the vertical bars
    spans = sorted(y for seg in segments.get_segments() for y in sorted(seg[:, 1]))
    assert spans == pytest.approx(sorted([-0.09, 0.85, 0.38, 1.0]))
    (share,) = bars["share judge = human majority"].lines[2]
    assert all(tuple(sorted(seg[:, 1])) == pytest.approx((0.44, 0.86))
               for seg in share.get_segments())


def test_alert_messages_from_data_are_shown_as_written_in_markdown():
    # a slice name comes from a user's prompt file: in report.md and the model card it
    # must not become a link, an image, a heading or a table cell
    from alignloop.report.markdown import md_text

    name = "[click](javascript:alert(1)) <img src=x onerror=alert(1)> *x* a|b"
    shown = md_text(f"slice '{name}' fell\n# heading")
    assert shown == ("slice '\\[click\\](javascript:alert(1)) \\<img src=x onerror=alert(1)\\> "
                     "\\*x\\* a\\|b' fell \\# heading")


def test_slice_names_with_dollar_signs_are_drawn_as_written():
    # matplotlib reads text between two `$` as TeX math: "tier_$5_to_$10" failed savefig
    # and with it the report stage, on every resume
    from alignloop.report import plots

    est = {"value": 0.6, "lo": 0.4, "hi": 0.8}
    names = ["tier_$5_to_$10", "expensive ($$)", r"$\foo$ x"]
    report = {"latent_reward": {"available": True, "models": {"policy": {
                  "overall": est, "by_slice": {n: est for n in names}}}},
              "win_rate_vs_base": {"available": True, "overall": est,
                                   "by_slice": {n: est for n in names}}}
    for draw in (plots._latent, plots._win_rates):
        assert draw(report)[:4] == b"\x89PNG"
    figs = plots.run_figures({0: report, 1: report})
    assert figs["latent_reward"][:4] == b"\x89PNG"


# --------------------------------------------------------------------------- browser


def _browser():
    """Playwright driving Debian's chromium; missing pieces fail under CI, skip otherwise."""
    ci = bool(os.environ.get("CI"))
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if ci:
            pytest.fail("playwright is not installed; CI must run the browser tests", pytrace=False)
        pytest.skip("playwright is not installed (pip install playwright)")
    if not os.path.exists(CHROMIUM):
        msg = f"{CHROMIUM} not found (apt-get install -y chromium)"
        if ci:
            pytest.fail(f"{msg}; CI must run the browser tests", pytrace=False)
        pytest.skip(msg)
    return sync_playwright


def _open(sync_playwright, path: Path):
    """(title, h2 texts, screenshot png, page facts) of a file:// page."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(path.resolve().as_uri())
            facts = page.evaluate("""() => ({
                scripts: document.querySelectorAll('script').length,
                images: [...document.images].map(i => i.complete && i.naturalWidth > 0),
                examples: (document.getElementById('examples') || {}).innerText || ''})""")
            return (page.title(), page.locator("h2").all_inner_texts(),
                    page.screenshot(full_page=True), facts)
        finally:
            browser.close()


def _not_blank(png: bytes) -> float:
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
    return float(pixels.std())


def test_round_report_in_chromium(run):
    title, headings, png, facts = _open(_browser(), run / "round_001/report/report.html")
    assert title == "alignloop round 1 drift report"        # the response's <script> never ran
    assert headings == ROUND_SECTIONS
    assert _not_blank(png) > 20
    assert facts["scripts"] == 0
    assert facts["images"] and all(facts["images"]), facts["images"]
    assert SCRIPT in facts["examples"]                       # shown as text, escaped
    assert "&lt;script&gt;document.title" in (run / "round_001/report/report.html").read_text()


def test_run_report_in_chromium(run):
    title, headings, png, facts = _open(_browser(), run / "report.html")
    assert title == "alignloop run run"
    assert headings == ["Run status", "Trends across rounds", "Headline metrics by round", "Alerts"]
    assert _not_blank(png) > 20
    assert len(facts["images"]) == 5 and all(facts["images"])


def test_the_report_says_what_it_compares_with_and_what_the_gate_decides(tmp_path):
    from alignloop.report.alerts import gate_verdict

    run = make_fake_run(tmp_path, rounds=2, regress_slice="bad_news")
    (run / "round_001/slices.json").write_text(json.dumps({"chosen": ["bad_news"], "slices": []}))
    fit = {"temperature": 0.6, "ece_before": 0.2, "ece_after": 0.1, "n": 16, "note": ""}
    (run / "round_001/calibration.json").write_text(json.dumps({"this_round": {"python": fit}}))
    cfg = config_from_dict({"labeling": {"human": {"budget": 12}}, "report": {"n_boot": 200},
                            "loop": {"gate": {"max_kl_to_base": 0.3, "max_slice_drop": 0.1,
                                              "action": "rollback"}}})
    report = build_round_report(load_round(run, 1), cfg)
    validate_report(report)
    ctx = report["context"]
    assert (ctx["previous"], ctx["reference"], ctx["reference_mode"]) == (
        "round 0's policy", "round 0's policy", "previous")
    assert ctx["targeted_slices"] == ["bad_news"]
    # the gate as the loop will record it in state.json, with the thresholds it used
    verdict = gate_verdict(report, cfg.loop.gate, min_slice_samples=cfg.report.min_slice_samples)
    assert report["gate"] == {"max_kl_to_base": 0.3, "max_slice_drop": 0.1, "slice_confidence": 0.0,
                              "on_trip": "rollback", "min_slice_samples": 8, "slice_checks": 6,
                              "recorded": False, **verdict,
                              "kl_to_base": report["kl_to_base"]["k1"]["sequence"]["value"]}
    assert verdict["tripped"] and "KL to base" in verdict["reason"]
    # once the loop has recorded a verdict, the report shows that one
    state = json.loads((run / "state.json").read_text())
    state["rounds"]["1"]["gate"] = {"tripped": False, "reason": "", "action": "", "held": "x"}
    (run / "state.json").write_text(json.dumps(state))
    recorded = build_round_report(load_round(run, 1), cfg)["gate"]
    assert recorded["recorded"] and not recorded["tripped"] and recorded["held"] == "x"
    assert "as state.json records it" in render_markdown({**report, "gate": recorded})
    assert report["labels"]["calibration"] == {"python": fit}
    md = render_markdown(report)
    assert "> Previous: round 0's policy. Reference (the DPO log-ratio's): round 0's policy" in md
    assert "New pairs this round were sampled on the failure slices: bad\\_news." in md
    assert "of a budget of 0.3 nats/response" in md
    assert "Verdict (as the loop will record it): tripped" in md and ", so rollback" in md
    assert "python: T 0.6, ECE 0.2 → 0.1 (16 pairs)" in md
    assert "| bad_news (targeted) |" in md
    alert = next(a for a in report["alerts"] if a["kind"] == "slice_regression")
    assert "below the alert line 0.45" in alert["message"] and "bootstrap p = " in alert["message"]
    # the training row says it is the last step's batch
    assert report["train"]["pairs_per_step"] == 8 and report["train"]["epoch"] == 1.0
    assert "(batch of 8 pairs)" in md
    # round 0 compares with nothing before it; reference.mode base names the base model
    r0 = build_round_report(load_round(run, 0), cfg)["context"]
    assert (r0["previous"], r0["reference"], r0["targeted_slices"]) == (
        "none (round 0)", "the base model", None)
    base_cfg = config_from_dict({"labeling": {"human": {"budget": 12}}, "report": {"n_boot": 100},
                                 "reference": {"mode": "base"}})
    assert build_round_report(load_round(run, 1), base_cfg)["context"]["reference"] == "the base model"
    html = render_round_html(report, {}, [])
    assert "tripped (KL to base" in html and "Previous: round 0&#x27;s policy" in html


def test_a_damaged_calibration_file_is_named(tmp_path):
    run = make_fake_run(tmp_path, rounds=2)
    (run / "round_001/calibration.json").write_text("{not json")
    with pytest.raises(Exception, match="calibration.json: not readable JSON"):
        load_round(run, 1)


def test_examples_mark_a_response_cut_at_the_length_limit(tmp_path):
    from alignloop.report.sections import CUT, pick_examples

    run = make_fake_run(tmp_path, rounds=2, length_scale=2.0)     # some policy samples cut
    inp = load_round(run, 1)
    examples = pick_examples(inp, 30, 0)
    ends = {(r["prompt_id"], r["model"]): r["finish_reason"] for r in inp.samples
            if r["sample_index"] == 0}
    cut = [e for e in examples if ends[(e["prompt_id"], "policy")] == "length"]
    ended = [e for e in examples if ends[(e["prompt_id"], "policy")] == "stop"]
    assert cut and ended                                   # the fake run has both kinds
    assert all(e["current"].endswith(CUT) for e in cut)
    assert not any(e["current"].endswith(CUT) for e in ended)
