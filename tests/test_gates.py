"""The loop's gates judge a round report on their own numbers, not on the report's alerts."""

import json

import pytest
from alignloop.config import GateConfig, config_from_dict
from alignloop.report import build_round_report, gate_verdict, load_round, slice_drops
from alignloop.report.alerts import slice_checks

from .fake_run import make_fake_run


def _report(kl=0.5, win=0.5, n=20, delta=0.0, alerts=(), p_win=None, p_delta=None):
    """A report.json reduced to what the gates read (slice 's'); p_*: the p-values of "it
    fell" (absent when None, as in reports written before them)."""
    w = {"value": win, "lo": 0.3, "hi": 0.6, "n": n}
    if p_win is not None:
        w["p_not_below"] = p_win
    change = None if p_delta is None else {"by_slice": {"s": {"p_not_below": p_delta}}}
    return {"kl_to_base": {"k1": {"sequence": {"value": kl}}},
            "win_rate_vs_previous": {"by_slice": {"s": w}},
            "latent_reward": {"delta_vs_previous": {"by_slice": {"s": delta}},
                              "change_vs_previous": change,
                              "models": {"policy": {"by_slice": {"s": {"n": n}}}}},
            "alerts": list(alerts)}


def test_slice_drops_measure_both_falls():
    drops = slice_drops(_report(win=0.4, delta=-0.2), min_samples=10)
    assert [(d["slice"], d["measure"]) for d in drops] == [("s", "win_rate"), ("s", "latent_reward")]
    assert drops[0]["drop"] == pytest.approx(0.1) and drops[0]["value"] == 0.4
    assert drops[1]["drop"] == pytest.approx(0.2) and drops[1]["n"] == 20
    assert drops[0]["message"] == "slice 's': win rate against the previous policy 0.40 " \
                                  "(95% CI 0.30-0.60, n=20)"
    assert drops[1]["message"] == "slice 's': mean latent reward fell by 0.2 from the previous " \
                                  "round (n=20)"
    assert slice_drops(_report(win=0.1, delta=-1), min_samples=21) == []      # too few samples
    assert slice_drops({"win_rate_vs_previous": {"available": False}}, min_samples=1) == []


def test_gate_trips_on_kl():
    v = gate_verdict(_report(kl=2.1), GateConfig(max_kl_to_base=2.0, action="stop"),
                     min_slice_samples=8)
    assert v == {"tripped": True, "reason": "KL to base 2.10 > budget 2.0", "action": "stop",
                 "held": ""}


def test_gate_trips_on_slice_drops_without_any_alert():
    # the report has no alert at all (alert_slice_drop = 0): the gate still sees the drop
    gate = GateConfig(max_slice_drop=0.05, action="rollback")
    v = gate_verdict(_report(win=0.4, delta=-0.2), gate, min_slice_samples=8)
    assert v["tripped"] and v["action"] == "rollback"
    assert v["reason"] == ("slice 's': win rate against the previous policy 0.40 (95% CI 0.30-0.60, "
                           "n=20); slice 's': mean latent reward fell by 0.2 from the previous "
                           "round (n=20)")
    both = gate_verdict(_report(kl=3.0, win=0.4), GateConfig(max_kl_to_base=2.0, max_slice_drop=0.05),
                        min_slice_samples=8)
    assert both["reason"].startswith("KL to base 3.00 > budget 2.0; slice 's'")
    assert both["action"] == "flag"


def test_gate_not_tripped_under_thresholds_and_zero_is_off():
    gate = GateConfig(max_kl_to_base=2.0, max_slice_drop=0.15, action="stop")
    untripped = {"tripped": False, "reason": "", "action": "", "held": ""}
    assert gate_verdict(_report(kl=1.9, win=0.4, delta=-0.1), gate, min_slice_samples=8) == untripped
    # too few samples in the slice to judge it
    assert gate_verdict(_report(win=0.0, n=5), gate, min_slice_samples=8) == untripped
    off = GateConfig(max_kl_to_base=0.0, max_slice_drop=0.0, action="stop")
    assert gate_verdict(_report(kl=99.0, win=0.0, delta=-9.0), off, min_slice_samples=1) == untripped
    # a report without the numbers (no eval) never trips a gate
    assert gate_verdict({"kl_to_base": {"available": False, "reason": "no eval"}}, gate,
                        min_slice_samples=1) == untripped
    # the gate ignores the report's alerts
    alert = {"kind": "slice_regression", "slice": "s", "drop": 0.4, "message": "m"}
    assert gate_verdict(_report(alerts=[alert]), gate, min_slice_samples=8) == untripped


def test_gate_trips_on_a_regressed_slice_of_a_real_report_with_alerts_off(tmp_path):
    run = make_fake_run(tmp_path, rounds=2, regress_slice="bad_news")
    cfg = config_from_dict({"labeling": {"human": {"budget": 12}},
                            "report": {"n_boot": 100, "alert_slice_drop": 0.0}})
    report = build_round_report(load_round(run, 1), cfg)
    assert not any(a["kind"] == "slice_regression" for a in report["alerts"])
    v = gate_verdict(report, GateConfig(max_slice_drop=0.05, action="rollback"),
                     min_slice_samples=cfg.report.min_slice_samples)
    assert v["tripped"] and v["action"] == "rollback"
    assert "slice 'bad_news'" in v["reason"]
    assert "complaint" not in v["reason"] and "greeting" not in v["reason"]


def test_slice_checks_keep_small_slices_that_slice_drops_leave_to_the_report():
    # the gates judge only slices with enough samples; the report lists the rest as skipped
    checks = slice_checks(_report(win=0.29, n=5, delta=-0.34))
    assert [(d["measure"], d["n"]) for d in checks] == [("win_rate", 5), ("latent_reward", 5)]
    assert slice_drops(_report(win=0.29, n=5, delta=-0.34), min_samples=8) == []
    assert slice_drops(_report(win=0.29, n=8), min_samples=8)[0]["value"] == 0.29


def test_slice_checks_carry_the_p_values_of_the_report():
    checks = slice_checks(_report(win=0.3, delta=-0.2, p_win=0.04, p_delta=float("nan")))
    assert [d["p"] for d in checks] == [0.04, None]          # NaN (no interval) -> None
    assert [d["p"] for d in slice_checks(_report(win=0.3, delta=-0.2))] == [None, None]


def test_interval_gate_trips_only_on_significant_falls_with_bonferroni_over_the_checks():
    gate = GateConfig(max_slice_drop=0.1, slice_confidence=0.95, action="rollback")
    # two checks judged (win rate, latent reward): alpha = 0.05 / 2 = 0.025 each
    v = gate_verdict(_report(win=0.3, delta=-0.2, p_win=0.001, p_delta=0.2), gate,
                     min_slice_samples=8)
    assert v["tripped"] and v["action"] == "rollback"
    assert v["reason"] == ("slice 's': win rate against the previous policy 0.30 (95% CI "
                           "0.30-0.60, n=20), p = 0.001 < 0.025")
    assert v["held"] == ("slice 's': mean latent reward fell by 0.2 from the previous round "
                         "(n=20), p = 0.2 >= 0.025: not significant")
    # p = 0.03 would pass a single 95% test; corrected for two checks it does not
    v = gate_verdict(_report(win=0.3, delta=0.1, p_win=0.03, p_delta=0.9), gate,
                     min_slice_samples=8)
    assert not v["tripped"] and v["action"] == "" and "p = 0.03 >= 0.025" in v["held"]
    # a fall under max_slice_drop is neither tripped nor held, however significant
    v = gate_verdict(_report(win=0.45, p_win=0.0, p_delta=0.5), gate, min_slice_samples=8)
    assert v == {"tripped": False, "reason": "", "action": "", "held": ""}
    # no p-value: not tested, and said so
    v = gate_verdict(_report(win=0.3), gate, min_slice_samples=8)
    assert not v["tripped"] and v["held"].endswith("no p-value, so not tested")
    # the point gate (slice_confidence 0) trips on the same report
    point = GateConfig(max_slice_drop=0.1, action="rollback")
    assert gate_verdict(_report(win=0.3, p_win=0.03), point, min_slice_samples=8)["tripped"]


def test_slice_confidence_is_checked():
    with pytest.raises(Exception, match="slice_confidence"):
        GateConfig(slice_confidence=1.0)
    with pytest.raises(Exception, match="slice_confidence"):
        config_from_dict({"loop": {"gate": {"slice_confidence": -0.5}}})


def _gate_on_fake(tmp_path, confidence, **eval_kw):
    run = make_fake_run(tmp_path, rounds=2, regress_slice="bad_news", **eval_kw)
    cfg = config_from_dict({"labeling": {"human": {"budget": 12}},
                            "report": {"n_boot": 400, "alert_slice_drop": 0.0}})
    report = build_round_report(load_round(run, 1), cfg)
    gate = GateConfig(max_slice_drop=0.05, slice_confidence=confidence, action="rollback")
    return report, gate_verdict(report, gate, min_slice_samples=cfg.report.min_slice_samples)


def test_interval_gate_on_real_reports_trips_on_a_clear_fall_and_holds_a_faint_one(tmp_path):
    # a clear fall (latent -0.3 per round against a sample sd of 0.2): significant
    report, v = _gate_on_fake(tmp_path / "clear", 0.95)
    change = report["latent_reward"]["change_vs_previous"]["by_slice"]["bad_news"]
    assert change["value"] < -0.2 and change["p_not_below"] < 0.01
    win = report["win_rate_vs_previous"]["by_slice"]["bad_news"]
    assert win["p_not_below"] < 0.01
    assert v["tripped"] and "slice 'bad_news'" in v["reason"] and "complaint" not in v["reason"]
    # a faint one (-0.03 per round): the point gate rolls back, the interval gate holds it
    report, v = _gate_on_fake(tmp_path / "faint", 0.95, reward_gain=0.01)
    assert not v["tripped"] and "slice 'bad_news'" in v["held"]
    assert "not significant" in v["held"]
    point = gate_verdict(report, GateConfig(max_slice_drop=0.05, action="rollback"),
                         min_slice_samples=8)
    assert point["tripped"]


def test_status_and_run_report_say_what_the_gate_held_back(tmp_path):
    from alignloop.report.html import run_status
    from alignloop.rounds.loop import stage_names
    from alignloop.rounds.state import status_table

    held = "slice 's': win rate against the previous policy 0.30, p = 0.2 >= 0.025: not significant"
    state = {"version": 1, "rounds": {"1": {"stages": {}, "gate": {
        "tripped": False, "reason": "", "action": "", "held": held}}}}
    (tmp_path / "state.json").write_text(json.dumps(state))
    assert f"    1  gate held (not significant): {held}" in status_table(tmp_path, stage_names)
    assert run_status(state, [1]) == [
        f"Round 1: the gate held back falls it could not tell from noise: {held}."]
    # a record from before `held` existed reads as before
    state["rounds"]["1"]["gate"].pop("held")
    (tmp_path / "state.json").write_text(json.dumps(state))
    assert "held" not in status_table(tmp_path, stage_names)
    assert not any("held back" in line for line in run_status(state, [1]))
