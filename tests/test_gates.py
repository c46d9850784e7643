"""The loop's gates judge a round report on their own numbers, not on the report's alerts."""

import pytest
from alignloop.config import GateConfig, config_from_dict
from alignloop.report import build_round_report, gate_verdict, load_round, slice_drops
from alignloop.report.alerts import slice_checks

from .fake_run import make_fake_run


def _report(kl=0.5, win=0.5, n=20, delta=0.0, alerts=()):
    """A report.json reduced to what the gates read (slice 's')."""
    return {"kl_to_base": {"k1": {"sequence": {"value": kl}}},
            "win_rate_vs_previous": {"by_slice": {"s": {"value": win, "lo": 0.3, "hi": 0.6,
                                                        "n": n}}},
            "latent_reward": {"delta_vs_previous": {"by_slice": {"s": delta}},
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
    assert v == {"tripped": True, "reason": "KL to base 2.10 > budget 2.0", "action": "stop"}


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
    untripped = {"tripped": False, "reason": "", "action": ""}
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
