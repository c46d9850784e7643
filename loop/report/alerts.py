"""Alerts of a round report, and the loop's gates: both read a finished report.json.

Alerts are advice written into the report (thresholds in `ReportConfig`, 0 = off).
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


def _num(x) -> str:
    return "?" if _bad(x) else f"{x:.2f}"


def slice_drops(report: dict, *, min_samples: int) -> list[dict]:
    """How far each slice fell against the previous policy, for slices with >= `min_samples`.

    Two measures, each where the report has it (win-rate slices first, then latent ones):
    - "win_rate": drop = 0.5 - the slice's judge win rate against the previous policy
      (ties half), n = its comparisons; value = the win rate.
    - "latent_reward": drop = the fall of the slice's mean latent reward from the
      previous round, n = this round's policy samples of the slice; value = the change.
    Each: {slice, measure, value, drop, n, message}. A drop < 0 means the slice
    improved; callers compare `drop` with their own threshold. Missing numbers are
    left out.
    """
    out = []
    for s, w in (get_path(report, "win_rate_vs_previous", "by_slice") or {}).items():
        v, n = w.get("value"), w.get("n", 0)
        if n >= min_samples and not _bad(v):
            out.append({"slice": s, "measure": "win_rate", "value": v, "drop": 0.5 - v, "n": n,
                        "message": f"slice '{s}': win rate against the previous policy {v:.2f} "
                                   f"(95% CI {_num(w.get('lo'))}-{_num(w.get('hi'))}, n={n})"})
    deltas = get_path(report, "latent_reward", "delta_vs_previous", "by_slice") or {}
    for s, d in deltas.items():
        n = get_path(report, "latent_reward", "models", "policy", "by_slice", s, "n") or 0
        if n >= min_samples and not _bad(d):
            out.append({"slice": s, "measure": "latent_reward", "value": d, "drop": -d, "n": n,
                        "message": f"slice '{s}': mean latent reward fell by {-d:.3g} from the "
                                   f"previous round (n={n})"})
    return out


def alerts(report: dict, thresholds: ReportConfig) -> list[dict]:
    """Alerts from a round report and a `ReportConfig` (each threshold 0 = off).

    kl_budget: KL(policy || reference), k1 per sequence, above `alert_kl_to_reference`.
    length_blowup: mean policy length / the previous round's (or, with no previous
    round, the base model's) above `length_blowup`.
    slice_regression: a slice of `slice_drops` (>= `min_slice_samples` samples) that fell
    by more than `alert_slice_drop`: win rate against the previous policy below 0.5 -
    `alert_slice_drop`, or mean latent reward down by more than `alert_slice_drop`.
    annotator_agreement / judge_agreement: human Krippendorff's alpha, or the judge-human
    Cohen's kappa, below `agreement_floor`.
    Each alert: {kind, message, value, threshold, slice, drop}; `drop` is how far a
    regressed slice fell (0.5 - win rate, or the latent-reward decrease), else None.
    The kinds are part of the report.json contract.
    """
    out: list[dict] = []

    def add(kind: str, message: str, value: float, threshold: float, slice: str | None = None,
            drop: float | None = None):
        out.append({"kind": kind, "message": message, "value": float(value),
                    "threshold": float(threshold), "slice": slice,
                    "drop": None if drop is None else float(drop)})

    t = thresholds
    kl = get_path(report, "kl_to_reference", "k1", "sequence", "value")
    if t.alert_kl_to_reference > 0 and not _bad(kl) and kl > t.alert_kl_to_reference:
        add("kl_budget", f"KL(policy || reference) is {kl:.3g} nats per response, over the "
            f"budget of {t.alert_kl_to_reference:g}", kl, t.alert_kl_to_reference)
    ratio, against = get_path(report, "length", "ratio_vs_previous"), "the previous round"
    if _bad(ratio):
        ratio, against = get_path(report, "length", "ratio_vs_base"), "the base model"
    if t.length_blowup > 0 and not _bad(ratio) and ratio > t.length_blowup:
        add("length_blowup", f"mean response length is {ratio:.2f}x that of {against} "
            f"(limit {t.length_blowup:g}x)", ratio, t.length_blowup)
    if t.alert_slice_drop > 0:
        for d in slice_drops(report, min_samples=t.min_slice_samples):
            if d["drop"] > t.alert_slice_drop:
                add("slice_regression", d["message"], d["value"],
                    NO_DROP[d["measure"]] - t.alert_slice_drop, d["slice"], drop=d["drop"])
    if t.agreement_floor > 0:
        alpha = get_path(report, "labels", "human_alpha")
        if not _bad(alpha) and alpha < t.agreement_floor:
            add("annotator_agreement", f"annotators' Krippendorff's alpha {alpha:.2f} is below "
                f"the floor {t.agreement_floor:g}", alpha, t.agreement_floor)
        kappa = get_path(report, "labels", "judge_human", "kappa")
        if not _bad(kappa) and kappa < t.agreement_floor:
            add("judge_agreement", f"judge-human Cohen's kappa {kappa:.2f} is below the floor "
                f"{t.agreement_floor:g}", kappa, t.agreement_floor)
    return out


def gate_verdict(report: dict, gate: GateConfig, *, min_slice_samples: int) -> dict:
    """{"tripped", "reason", "action"} of the loop's gate on a round report (state.json's
    "gate" record).

    Trips when KL(policy || base) (k1, nats per response) is above `gate.max_kl_to_base`,
    or when a slice with >= `min_slice_samples` samples fell by more than
    `gate.max_slice_drop` (`slice_drops`); each threshold 0 = that gate off. `reason`
    joins the reasons with "; "; `action` is `gate.action` when tripped, else "".
    Independent of the report's alerts and of their thresholds.
    """
    reasons = []
    kl = get_path(report, "kl_to_base", "k1", "sequence", "value")
    if gate.max_kl_to_base > 0 and not _bad(kl) and kl > gate.max_kl_to_base:
        reasons.append(f"KL to base {kl:.2f} > budget {gate.max_kl_to_base}")
    if gate.max_slice_drop > 0:
        reasons += [d["message"] for d in slice_drops(report, min_samples=min_slice_samples)
                    if d["drop"] > gate.max_slice_drop]
    return {"tripped": bool(reasons), "reason": "; ".join(reasons),
            "action": gate.action if reasons else ""}
