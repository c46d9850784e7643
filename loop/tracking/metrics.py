"""What a tracker is sent: a training step's scalars and a round's scalars and text.

    step_scalars(row, round)     one train_log.jsonl line -> {"train/loss": ..., ...}
    round_scalars(report, gate)  a round's report.json and gate verdict -> {"round/...": ...}:
                                 the headline estimates with their 95% intervals (the
                                 rows of report.md's headline table), length drift, label
                                 statistics, alert counts, the gate
    round_text(report, gate)     the alerts and the gate verdict as Markdown
"""

from __future__ import annotations

import math

from alignloop.report.lookup import get_path

HEADLINE = (
    ("kl_to_reference", ("kl_to_reference", "k1", "sequence")),
    ("kl_to_reference_per_token", ("kl_to_reference", "k1", "per_token")),
    ("kl_to_base", ("kl_to_base", "k1", "sequence")),
    ("kl_to_base_per_token", ("kl_to_base", "k1", "per_token")),
    ("win_rate_vs_previous", ("win_rate_vs_previous", "overall")),
    ("win_rate_vs_base", ("win_rate_vs_base", "overall")),
    ("latent_reward", ("latent_reward", "models", "policy", "overall")),
    ("implicit_reward_accuracy", ("implicit_reward", "accuracy")),
    ("implicit_reward_margin", ("implicit_reward", "margin")),
)
"""(tag, path in report.json) of each headline estimate {value, lo, hi, n}: report.md's
headline table (`alignloop.report.markdown.headline_rows`), k1 KL as there."""

NUMBERS = (
    ("length_ratio_vs_previous", ("length", "ratio_vs_previous")),
    ("length_ratio_vs_base", ("length", "ratio_vs_base")),
    ("mean_tokens", ("length", "models", "policy", "mean_tokens")),
    ("distinct_2", ("degeneration", "models", "policy", "distinct_2")),
    ("labels/candidates", ("labels", "candidates")),
    ("labels/human_votes", ("labels", "human_votes")),
    ("labels/routed_share", ("labels", "routed_share")),
    ("labels/budget_used", ("labels", "budget_used")),
    ("labels/judge_human_kappa", ("labels", "judge_human", "kappa")),
    ("labels/human_alpha", ("labels", "human_alpha")),
    ("train/steps", ("train", "steps")),
)
"""(tag, path) of single numbers in report.json."""


def _number(x) -> float | None:
    if isinstance(x, bool):
        return float(x)
    if isinstance(x, (int, float)) and math.isfinite(x):
        return float(x)
    return None


def step_scalars(row: dict, round: int | None) -> dict[str, float]:
    """One train_log.jsonl line as tracker scalars ("step" is the axis, not a value)."""
    out = {f"train/{k}": x for k, v in row.items()
           if k != "step" and (x := _number(v)) is not None}
    if round is not None:
        out["train/round"] = float(round)
    return out


def round_scalars(report: dict, gate: dict | None) -> dict[str, float]:
    """A round's headline numbers, label statistics, alerts and gate (tags `round/...`)."""
    out: dict[str, float] = {}
    for tag, path in HEADLINE:
        est = get_path(report, *path)
        for part, suffix in (("value", ""), ("lo", "_lo"), ("hi", "_hi")):
            if (v := _number(get_path(est, part))) is not None:
                out[f"round/{tag}{suffix}"] = v
    for tag, path in NUMBERS:
        if (v := _number(get_path(report, *path))) is not None:
            out[f"round/{tag}"] = v
    for source, n in sorted((get_path(report, "labels", "pairs_by_source") or {}).items()):
        out[f"round/labels/pairs_{source}"] = float(n)
    alerts = report.get("alerts") or []
    out["round/alerts"] = float(len(alerts))
    for kind in sorted({a["kind"] for a in alerts}):
        out[f"round/alerts/{kind}"] = float(sum(a["kind"] == kind for a in alerts))
    if gate is not None:
        out["round/gate_tripped"] = float(bool(gate.get("tripped")))
    return out


def round_text(report: dict, gate: dict | None) -> str:
    """The round's alerts and gate verdict as Markdown."""
    alerts = report.get("alerts") or []
    lines = [f"**Round {report.get('round')}**: {len(alerts)} alert(s)"]
    lines += [f"- {a['kind']}: {a['message']}" for a in alerts]
    if gate is not None:
        verdict = (f"tripped ({gate.get('reason')}) -> {gate.get('action')}"
                   if gate.get("tripped") else "passed")
        lines.append(f"\nGate: {verdict}")
    return "\n".join(lines)
