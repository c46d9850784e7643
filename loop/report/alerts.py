"""Alerts of a round report, and the loop's gates: both read a finished report.json.

Alerts are advice written into the report (thresholds in `ReportConfig`, 0 = off);
a check that cannot run (turned off, a number missing, a slice with too few samples)
is written into the report as skipped, with the reason, never dropped silently.
Gates decide what the loop does next (`GateConfig`: flag, stop, or roll back). Each
computes its own condition from the report's numbers: a gate never reads the
alerts, so turning an alert off never turns a gate off. Both find regressed slices
with `slice_drops`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from alignloop.report.lookup import get_path

if TYPE_CHECKING:
    from alignloop.config import GateConfig, ReportConfig

# the value of each slice measure when the slice did not move
NO_DROP = {"win_rate": 0.5, "latent_reward": 0.0}


def _bad(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _p(x) -> float | None:
    return None if _bad(x) else float(x)


def _num(x) -> str:
    return "?" if _bad(x) else f"{x:.2f}"


def slice_checks(report: dict) -> list[dict]:
    """How far each slice fell against the previous policy, however few its samples.

    Two measures, each where the report has it (win-rate slices first, then latent ones):
    - "win_rate": drop = 0.5 - the slice's judge win rate against the previous policy
      (ties half), n = its comparisons; value = the win rate.
    - "latent_reward": drop = the fall of the slice's mean latent reward from the
      previous round, n = this round's policy samples of the slice; value = the change;
      `before` and `after` are the two means.
    Each: {slice, measure, value, drop, n, p, message}; `p` is the one-sided bootstrap
    p-value of "the slice fell" (`p_not_below` of its win rate against 0.5, or of its
    latent reward's change paired by prompt against 0), None where the report has none
    (fewer than 2 prompts, or a report from before these were written). A drop < 0 means the slice
    improved; callers compare `drop` with their own threshold and `n` with their own
    minimum (`slice_drops`). Missing numbers are left out.
    """
    out = []
    for s, w in (get_path(report, "win_rate_vs_previous", "by_slice") or {}).items():
        v, n = w.get("value"), w.get("n", 0)
        if not _bad(v):
            out.append({"slice": s, "measure": "win_rate", "value": v, "drop": 0.5 - v, "n": n,
                        "p": _p(w.get("p_not_below")),
                        "message": f"slice '{s}': win rate against the previous policy {v:.2f} "
                                   f"(95% CI {_num(w.get('lo'))}-{_num(w.get('hi'))}, n={n})"})
    deltas = get_path(report, "latent_reward", "delta_vs_previous", "by_slice") or {}
    for s, d in deltas.items():
        n = get_path(report, "latent_reward", "models", "policy", "by_slice", s, "n") or 0
        if not _bad(d):
            out.append({"slice": s, "measure": "latent_reward", "value": d, "drop": -d, "n": n,
                        "p": _p(get_path(report, "latent_reward", "change_vs_previous",
                                         "by_slice", s, "p_not_below")),
                        "before": get_path(report, "latent_reward", "models", "previous",
                                           "by_slice", s, "value"),
                        "after": get_path(report, "latent_reward", "models", "policy",
                                          "by_slice", s, "value"),
                        "message": f"slice '{s}': mean latent reward fell by {-d:.3g} from the "
                                   f"previous round (n={n})"})
    return out


def slice_drops(report: dict, *, min_samples: int) -> list[dict]:
    """The `slice_checks` of slices with >= `min_samples` samples: fewer make the estimate
    too noisy to judge."""
    return [d for d in slice_checks(report) if d["n"] >= min_samples]


class Checks:
    """What the alert checks of a report found: `alerts`, and `skipped`, the checks that
    could not run (off, a number missing, too few samples) with the reason."""

    def __init__(self):
        self.alerts: list[dict] = []
        self.skipped: list[dict] = []

    def alert(self, kind: str, message: str, value: float, threshold: float,
              slice: str | None = None, drop: float | None = None) -> None:
        self.alerts.append({"kind": kind, "message": message, "value": float(value),
                            "threshold": float(threshold), "slice": slice,
                            "drop": None if drop is None else float(drop)})

    def skip(self, kind: str, reason: str, *, slice: str | None = None,
             measure: str | None = None, n: int | None = None, value: float | None = None,
             would_alert: bool | None = None) -> None:
        self.skipped.append({"kind": kind, "reason": reason, "slice": slice, "measure": measure,
                             "n": n, "value": None if _bad(value) else float(value),
                             "would_alert": would_alert})


def _why_missing(report: dict, section: str, what: str) -> str:
    """Why `what` (a number of `section`) is missing: the section's reason, or "undefined"."""
    reason = get_path(report, section, "reason")
    return f"no {what}: {reason}" if reason else f"no {what} (undefined for this round)"


def _off(t: ReportConfig, name: str) -> str:
    return f"off: report.{name} = {getattr(t, name):g}"


def _check_kl(report: dict, t: ReportConfig, c: Checks) -> None:
    if t.alert_kl_to_reference <= 0:
        return c.skip("kl_budget", _off(t, "alert_kl_to_reference"))
    kl = get_path(report, "kl_to_reference", "k1", "sequence", "value")
    if _bad(kl):
        return c.skip("kl_budget", _why_missing(report, "kl_to_reference", "KL to the reference"))
    if kl > t.alert_kl_to_reference:
        c.alert("kl_budget", f"KL(policy || reference) is {kl:.3g} nats per response, over the "
                f"budget of {t.alert_kl_to_reference:g}", kl, t.alert_kl_to_reference)


def _check_length(report: dict, t: ReportConfig, c: Checks) -> None:
    if t.length_blowup <= 0:
        return c.skip("length_blowup", _off(t, "length_blowup"))
    ratio, against = get_path(report, "length", "ratio_vs_previous"), "the previous round"
    if _bad(ratio):
        ratio, against = get_path(report, "length", "ratio_vs_base"), "the base model"
    if _bad(ratio) and not get_path(report, "length", "available"):
        return c.skip("length_blowup", _why_missing(report, "length", "response lengths"))
    if _bad(ratio):
        return c.skip("length_blowup", "no mean length to compare with: neither the previous "
                      "round's nor the base model's samples")
    if ratio > t.length_blowup:
        c.alert("length_blowup", f"mean response length is {ratio:.2f}x that of {against} "
                f"(limit {t.length_blowup:g}x)", ratio, t.length_blowup)


def _skip_small_slice(d: dict, t: ReportConfig, c: Checks) -> None:
    n, s = d["n"], d["slice"]
    if d["measure"] == "win_rate":
        what = f"win rate against the previous policy {d['value']:.2f} over {n} comparisons"
    else:
        what = (f"mean latent reward {_num(d.get('before'))} → {_num(d.get('after'))} "
                f"({d['value']:+.3g}) over {n} samples")
    c.skip("slice_regression", f"slice '{s}' not checked: {what}, fewer than "
           f"report.min_slice_samples = {t.min_slice_samples}", slice=s, measure=d["measure"],
           n=n, value=d["value"], would_alert=bool(d["drop"] > t.alert_slice_drop))


def _check_slices(report: dict, t: ReportConfig, c: Checks) -> None:
    if t.alert_slice_drop <= 0:
        return c.skip("slice_regression", _off(t, "alert_slice_drop"))
    if get_path(report, "win_rate_vs_previous", "by_slice") is None:
        c.skip("slice_regression", _why_missing(report, "win_rate_vs_previous",
                                                "win rate against the previous policy"),
               measure="win_rate")
    if get_path(report, "latent_reward", "delta_vs_previous") is None:
        why = get_path(report, "latent_reward", "previous_reason")
        c.skip("slice_regression", f"no latent reward of the previous policy: {why}" if why else
               _why_missing(report, "latent_reward", "latent reward"), measure="latent_reward")
    for d in slice_checks(report):
        if d["n"] < t.min_slice_samples:
            _skip_small_slice(d, t, c)
        elif d["drop"] > t.alert_slice_drop:
            line = NO_DROP[d["measure"]] - t.alert_slice_drop
            past = (f"below the alert line {line:.2f}" if d["measure"] == "win_rate"
                    else f"more than report.alert_slice_drop = {t.alert_slice_drop:g}")
            p = ("no p-value" if d["p"] is None
                 else f"one-sided bootstrap p = {d['p']:.3g} (the share of resamples in "
                 "which it did not fall)")
            latent = _latent_beside(report, d["slice"]) if d["measure"] == "win_rate" else ""
            c.alert("slice_regression", f"{d['message']}: {past}; {p}{latent}", d["value"], line,
                    d["slice"], drop=d["drop"])


def _latent_beside(report: dict, name: str) -> str:
    """"; its latent reward changed by +0.079 (95% CI -0.21 to 0.43) ..." beside a slice's
    win-rate fall, so the judge's verdict can be read against the latent measure; "" where
    the report has no paired latent change for the slice."""
    e = get_path(report, "latent_reward", "change_vs_previous", "by_slice", name) or {}
    v, lo, hi = e.get("value"), e.get("lo"), e.get("hi")
    if _bad(v):
        return ""
    ci = "" if _bad(lo) or _bad(hi) else f" (95% CI {lo:+.3g} to {hi:+.3g})"
    return (f"; its mean latent reward changed by {v:+.3g}{ci} from the previous policy's, "
            "paired by prompt")


def _check_base(report: dict, t: ReportConfig, c: Checks) -> None:
    """The policy loses to the base model it started from: the judge's win rate against the
    base is below the threshold with the whole 95% interval below it."""
    if t.alert_win_rate_vs_base <= 0:
        return c.skip("loses_to_base", _off(t, "alert_win_rate_vs_base"))
    w = get_path(report, "win_rate_vs_base", "overall") or {}
    v, hi, limit = w.get("value"), w.get("hi"), t.alert_win_rate_vs_base
    if _bad(v):
        return c.skip("loses_to_base", _why_missing(report, "win_rate_vs_base",
                                                    "win rate against the base model"))
    if _bad(hi):
        if v < limit:
            c.skip("loses_to_base", f"win rate against the base model {v:.2f} is below "
                   f"{limit:g} but has no 95% interval (fewer than 2 prompts): a loss cannot be "
                   "told from noise", n=w.get("n"), value=v)
        return
    if hi < limit:
        fell = get_path(report, "implicit_reward", "likelihood_displacement")
        c.alert("loses_to_base", f"this round's policy loses to the base model: judge win rate "
                f"{v:.2f} (95% CI {_num(w.get('lo'))}-{_num(hi)}, n={w.get('n')}) is below "
                f"{limit:g}" + ("; the chosen responses' log-prob fell below the base model's "
                                "(likelihood displacement)" if fell else ""), v, limit)


def _why_no_agreement(labels: dict, kind: str) -> str:
    if labels.get("available") is False:
        return labels.get("reason") or "no labels"
    if kind == "judge_agreement":
        return (get_path(labels, "judge_human", "reason") or "the judge or the human majority "
                "chose the same side on every item both judged")
    if not labels.get("human_votes"):
        return "no human votes this round"
    return "no item has votes from two annotators, or every vote is the same answer"


def _check_agreement(report: dict, t: ReportConfig, c: Checks) -> None:
    labels = get_path(report, "labels") or {}
    for kind, name, value in (
            ("annotator_agreement", "annotators' Krippendorff's alpha", labels.get("human_alpha")),
            ("judge_agreement", "judge-human Cohen's kappa",
             get_path(labels, "judge_human", "kappa"))):
        if t.agreement_floor <= 0:
            c.skip(kind, _off(t, "agreement_floor"))
        elif _bad(value):
            c.skip(kind, f"no {name}: {_why_no_agreement(labels, kind)}")
        elif value < t.agreement_floor:
            ci = _kappa_ci(labels) if kind == "judge_agreement" else ""
            c.alert(kind, f"{name} {value:.2f}{ci} is below the floor {t.agreement_floor:g}",
                    value, t.agreement_floor)


def _kappa_ci(labels: dict) -> str:
    """" (95% CI -0.71 to 0.30 over 16 items)" for the judge-human kappa, "" without one."""
    jh = labels.get("judge_human") or {}
    lo, hi = jh.get("kappa_lo"), jh.get("kappa_hi")
    if _bad(lo) or _bad(hi):
        return ""
    return f" (95% CI {lo:.2f} to {hi:.2f} over {jh.get('items')} items)"


def check_report(report: dict, thresholds: ReportConfig) -> Checks:
    """Every alert check on a round report, with a `ReportConfig` (each threshold 0 = off).

    kl_budget: KL(policy || reference), k1 per sequence, above `alert_kl_to_reference`.
    length_blowup: mean policy length / the previous round's (or, with no previous
    round, the base model's) above `length_blowup`.
    slice_regression: a slice of `slice_drops` (>= `min_slice_samples` samples) that fell
    by more than `alert_slice_drop`: win rate against the previous policy below 0.5 -
    `alert_slice_drop`, or mean latent reward down by more than `alert_slice_drop`.
    loses_to_base: the judge's win rate against the base model below
    `alert_win_rate_vs_base`, its whole 95% interval too.
    annotator_agreement / judge_agreement: human Krippendorff's alpha, or the judge-human
    Cohen's kappa, below `agreement_floor`.
    Each alert: {kind, message, value, threshold, slice, drop}; `drop` is how far a
    regressed slice fell (0.5 - win rate, or the latent-reward decrease), else None.
    Each skipped check: {kind, reason, slice, measure, n, value, would_alert}:
    `would_alert` is true when the number crosses the threshold and only the reason (a
    slice with too few samples) kept it from alerting. The kinds are part of the
    report.json contract.
    """
    c = Checks()
    for check in (_check_kl, _check_length, _check_slices, _check_base, _check_agreement):
        check(report, thresholds, c)
    return c


def alerts(report: dict, thresholds: ReportConfig) -> list[dict]:
    """The alerts of `check_report`."""
    return check_report(report, thresholds).alerts


def gate_verdict(report: dict, gate: GateConfig, *, min_slice_samples: int) -> dict:
    """{"tripped", "reason", "action", "held"} of the loop's gate on a round report
    (state.json's "gate" record).

    Trips when KL(policy || base) (k1, nats per response) is above `gate.max_kl_to_base`,
    or when a slice with >= `min_slice_samples` samples fell by more than
    `gate.max_slice_drop` (`slice_drops`); each threshold 0 = that gate off. With
    `gate.slice_confidence` c > 0 such a fall trips the gate only when it is also
    significant: its p-value (`slice_checks`) below (1 - c) / m, m = the slice checks
    judged this round (Bonferroni: the chance that any slice of a round that changed
    nothing trips the gate stays below 1 - c). A fall that is not, or cannot be tested
    (no p-value), goes into `held`, with its p-value. `reason` and `held` join their
    messages with "; "; `action` is `gate.action` when tripped, else "".
    Independent of the report's alerts and of their thresholds.
    """
    reasons, held = [], []
    kl = get_path(report, "kl_to_base", "k1", "sequence", "value")
    if gate.max_kl_to_base > 0 and not _bad(kl) and kl > gate.max_kl_to_base:
        reasons.append(f"KL to base {kl:.2f} > budget {gate.max_kl_to_base}")
    if gate.max_slice_drop > 0:
        judged = slice_drops(report, min_samples=min_slice_samples)
        alpha = (1 - gate.slice_confidence) / max(len(judged), 1)
        for d in judged:
            if d["drop"] <= gate.max_slice_drop:
                continue
            if gate.slice_confidence <= 0:
                reasons.append(d["message"])
            elif d["p"] is None:
                held.append(f"{d['message']}: no p-value, so not tested")
            elif d["p"] < alpha:
                reasons.append(f"{d['message']}, p = {d['p']:.3g} < {alpha:.3g}")
            else:
                held.append(f"{d['message']}, p = {d['p']:.3g} >= {alpha:.3g}: not significant")
    return {"tripped": bool(reasons), "reason": "; ".join(reasons),
            "action": gate.action if reasons else "", "held": "; ".join(held)}
