"""The report.json object of a round, section by section, from its `RoundInputs`.

report.json, schema version 2 (`schema.json`, checked by `validate_report`; version 1,
which older runs wrote, also had `generated_at` and the training speed: a report now holds
no wall-clock figure, so that the same config and seed give it byte for byte; the stage
times are in state.json and the step timings in train_timing.jsonl).
Every metric section is either `{"available": false, "reason": ...}` or
`{"available": true, ...}`; an estimate is `{"value", "lo", "hi", "n"}` with a
bootstrap 95% percentile interval over prompts (`alignloop.report.metrics`); undefined
numbers are null. Paths are relative to the report directory. "previous" is the
policy this round started from (`alignloop.report.inputs.previous_round`).

    schema_version, round, inputs {name: path | null}, notes [str],
    thresholds      the ReportConfig used
    kl_to_reference, kl_to_base
                    {against, estimator, k1 {sequence, per_token}, k3 {...}, n_samples,
                     n_prompts, dropped}: KL(policy || q) from this round's policy samples
    win_rate_vs_previous, win_rate_vs_base
                    {opponent, overall, by_slice {slice: est}}; est adds wins, ties,
                     losses, mean_p; ties count half; against the previous policy also
                     p_not_below (0.5), the p-value of "it lost" the gate can test
    latent_reward   {models {policy, base, previous: {overall, by_slice} | null},
                     delta_vs_previous {overall, by_slice} | null, change_vs_previous
                     {overall, by_slice: est + p_not_below} | null (paired by prompt),
                     previous_reason}
    length          {models {policy, base, previous: {n, mean_tokens, median_tokens,
                     share_stop, share_length, histogram {edges, counts}}},
                     ends_by_eos {policy, base, previous: est} (share_stop with its
                     interval), ratio_vs_previous, ratio_vs_base}
    degeneration    {models {name: {n, distinct_2, repeated_3gram_rate}}}
    implicit_reward {beta, n, accuracy, margin, logp_change_vs_base {chosen, rejected},
                     logp_change_vs_reference {...}, likelihood_displacement, by_slice}
    labels          `label_stats.label_stats` (sources, routing and why pairs were dropped,
                     budget, agreement overall and per judge and why it is missing, gold,
                     intransitivity), and `calibration`: each judge's fit on this round's
                     labels (calibration.json "this_round": temperature, ECE before/after)
    train           {steps, pairs_per_step, epoch, final {loss, margin, accuracy, ...}: the
                     last step's batch, log: "../train_log.jsonl"}
    context         {previous, reference, reference_mode, targeted_slices, judges}: what
                     the figures compare with, in words ("round 1's policy")
    gate            the loop's gate on this report: its thresholds (loop.gate, on_trip its
                     action), the slice checks it counts, KL to the base, and its verdict
                     (tripped, reason, action, held): state.json's once the loop recorded
                     it (recorded: true), else what `gate_verdict` gives
    alerts          [{kind, message, value, threshold, slice, drop}] (`alerts.check_report`)
    skipped_checks  [{kind, reason, slice, measure, n, value, would_alert}]: the alert
                     checks that did not run (off, a number missing, a slice with fewer
                     than min_slice_samples samples) and why
"""

from __future__ import annotations

import math
import random
from collections import defaultdict

from alignloop.evaluation import COMPARISONS, HELDOUT_PAIRS, SAMPLES
from alignloop.report import metrics
from alignloop.report.alerts import check_report
from alignloop.report.inputs import RoundInputs
from alignloop.report.label_stats import label_stats
from alignloop.report.lookup import get_path

SCHEMA_VERSION = 2


def missing(reason: str) -> dict:
    return {"available": False, "reason": reason}


def _kl(inp: RoundInputs, col: str, against: str, boot: dict) -> dict:
    # temperature-1 samples when the eval wrote them (tempered generation settings)
    policy = inp.rows("policy_kl") or inp.rows("policy")
    if inp.samples is None:
        return missing(f"no {SAMPLES} (the round's eval has not run)")
    if not policy:
        return missing(f"no policy samples in {SAMPLES}")
    if not any(math.isfinite(r.get(col) if r.get(col) is not None else math.nan) for r in policy):
        return missing(f"column {col} is empty: no {against} log-probs of the policy samples")
    nan = math.nan
    est = metrics.kl_estimate([r["logp_policy"] if r["logp_policy"] is not None else nan
                               for r in policy],
                              [r[col] if r[col] is not None else nan for r in policy],
                              [r["n_tokens"] for r in policy],
                              groups=[r["prompt_id"] for r in policy], **boot)
    return {"available": True, "against": against, **est}


def _win(inp: RoundInputs, opponent: str, boot: dict) -> dict:
    if opponent == "previous" and inp.previous_round is None:
        return missing(inp.previous_reason)       # round 0, or a start from the base model
    if inp.comparisons is None:
        return missing(f"no {COMPARISONS}")
    rows = [c for c in inp.comparisons if c["b_model"] == opponent and c["a_model"] == "policy"]
    if not rows:
        return missing(f"no comparisons against the {opponent} model in {COMPARISONS}")
    null = 0.5 if opponent == "previous" else None
    return {"available": True, "opponent": opponent,
            **metrics.win_rates_by_slice(rows, **boot, null=null)}


def _latent_summary(rows: list[dict] | None, boot: dict) -> dict | None:
    rows = [r for r in rows or [] if r.get("latent_reward") is not None
            and math.isfinite(r["latent_reward"])]
    if not rows:
        return None
    by = defaultdict(list)
    for r in rows:
        by[r["slice"] or ""].append(r)

    def est(sub):
        return metrics.estimate([r["latent_reward"] for r in sub],
                                groups=[r["prompt_id"] for r in sub], **boot)

    return {"overall": est(rows), "by_slice": {s: est(by[s]) for s in sorted(by)}}


def _latent(inp: RoundInputs, boot: dict) -> dict:
    policy = _latent_summary(inp.rows("policy"), boot)
    if policy is None:
        return missing("no latent_reward in the policy samples (the run has no ground-truth "
                       "utility)" if inp.samples is not None else f"no {SAMPLES}")
    prev = _latent_summary(inp.previous, boot)
    delta = None
    if prev is not None:
        delta = {"overall": policy["overall"]["value"] - prev["overall"]["value"],
                 "by_slice": {s: e["value"] - prev["by_slice"][s]["value"]
                              for s, e in policy["by_slice"].items() if s in prev["by_slice"]}}
    reason = None if prev else (inp.previous_reason or "the previous round's samples have no "
                                "latent_reward")
    change = (metrics.paired_change(inp.rows("policy"), inp.previous, "latent_reward", **boot)
              if prev is not None else None)
    return {"available": True, "models": {"policy": policy, "base": _latent_summary(
        inp.base, boot), "previous": prev}, "delta_vs_previous": delta,
        "change_vs_previous": change, "previous_reason": reason}


def _models(inp: RoundInputs) -> dict[str, list[dict]]:
    out = {"policy": inp.rows("policy"), "previous": inp.previous or [], "base": inp.base or []}
    return {m: rows for m, rows in out.items() if rows}


def _length(inp: RoundInputs, boot: dict) -> dict:
    models = _models(inp)
    if "policy" not in models:
        return missing(f"no policy samples in {SAMPLES}" if inp.samples is not None
                       else f"no {SAMPLES}")
    edges = metrics.histogram_edges(*[[r["n_tokens"] for r in rows] for rows in models.values()])
    stats = {m: metrics.length_stats([r["n_tokens"] for r in rows],
                                     [r["finish_reason"] for r in rows], edges=edges)
             for m, rows in models.items()}
    # a response cut at max_new_tokens cannot show that it learned to be brief: the share
    # ending by itself (EOS or a stop string) is the headroom a length preference has
    eos = {m: metrics.estimate([r["finish_reason"] == "stop" for r in rows],
                               groups=[r["prompt_id"] for r in rows], **boot)
           for m, rows in models.items()}

    def ratio(other: str):
        if other not in stats or not stats[other]["mean_tokens"]:
            return None
        return stats["policy"]["mean_tokens"] / stats[other]["mean_tokens"]

    return {"available": True, "models": stats, "ends_by_eos": eos,
            "ratio_vs_previous": ratio("previous"), "ratio_vs_base": ratio("base")}


def _degeneration(inp: RoundInputs) -> dict:
    models = _models(inp)
    if "policy" not in models:
        return missing(f"no policy samples in {SAMPLES}")
    return {"available": True, "models": {m: metrics.degeneration(r["text"] for r in rows)
                                          for m, rows in models.items()}}


def _implicit(inp: RoundInputs, beta: float, boot: dict) -> dict:
    if inp.heldout is None:
        return missing(f"no {HELDOUT_PAIRS}: no held-out pair was scored (round 0 holds back "
                       "loop.heldout_pair_share of the static pairs, and only when there are "
                       "at least loop.heldout_pair_min of them)")
    if not inp.heldout:
        return missing(f"{HELDOUT_PAIRS} is empty")
    return {"available": True, **metrics.implicit_reward(inp.heldout, beta, **boot)}


def _labels(inp: RoundInputs, human_budget: int) -> dict:
    if inp.labels is None and inp.candidates is None and inp.pairs is None:
        return missing("no labels.parquet, candidates.parquet or pairs.parquet in the round")
    out = label_stats(inp.labels or [], inp.candidates or [], inp.pairs or [],
                              human_budget=human_budget)
    if inp.calibration:
        out["calibration"] = {name: {"temperature": fit.get("temperature"),
                                     "ece_before": fit.get("ece_before"),
                                     "ece_after": fit.get("ece_after"), "n": int(fit.get("n", 0)),
                                     "note": str(fit.get("note") or "")}
                              for name, fit in sorted(inp.calibration.items())
                              if isinstance(fit, dict)}
    if inp.labels is None:
        out["note"] = ("no labels.parquet: round 0 trains on static pairs only" if inp.k == 0
                       else "no labels.parquet")
    return {"available": True, **out}


def _train(inp: RoundInputs) -> dict:
    if not inp.train_log:
        return missing("no train_log.jsonl (training has not run)")
    last = inp.train_log[-1]
    return {"available": True, "steps": int(last.get("step", len(inp.train_log))),
            "pairs_per_step": last.get("pairs"), "epoch": last.get("epoch"),
            "final": {"loss": last.get("loss"), "margin": last.get("rewards/margin"),
                      "accuracy": last.get("rewards/accuracy"),
                      "rewards_chosen": last.get("rewards/chosen"),
                      "rewards_rejected": last.get("rewards/rejected"),
                      "grad_norm": last.get("grad_norm"), "lr": last.get("lr")},
            "log": "../train_log.jsonl"}


def _clean(obj):
    """JSON-ready: NaN/inf -> None, numpy scalars -> Python, tuples -> lists."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _previous_note(inp: RoundInputs) -> list[str]:
    """A note when "previous" is not round k - 1's policy (a gate rolled that round back)."""
    p, k = inp.previous_round, inp.k
    if k == 0 or p == k - 1:
        return []
    start = f"round {p}'s policy" if p is not None else "the base model"
    return [f"round {k} started from {start}, not from round {k - 1}'s policy (rolled back): "
            f"'previous' in this report is {start}"]


def _model_name(round_: int | None) -> str:
    return "the base model" if round_ is None else f"round {round_}'s policy"


def _context(inp: RoundInputs, cfg) -> dict:
    """What this round's figures compare with, in words, and which judge made which figure."""
    mode = cfg.reference.mode
    if inp.k == 0:
        reference = (f"{cfg.reference.model} (reference.model)" if cfg.reference.model
                     else "the base model")
    elif mode == "previous":
        reference = _model_name(inp.previous_round)
    elif mode == "base":
        reference = "the base model"
    else:
        reference = (f"an average of the earlier policies (reference.mode ema, weight "
                     f"{cfg.reference.ema_weight:g})")
    if inp.k == 0:
        judges = ("Win rates: the judges as configured, fitted and calibrated on no labels yet "
                  "(round 0 trains on the static pairs and labels nothing).")
    else:
        history = "round 1" if inp.k == 1 else f"rounds 1-{inp.k}"
        judges = ("Win rates and the slice checks on them: the judges refit and calibrated "
                  f"with the labels of {history} (the ones that will route round {inp.k + 1}'s "
                  "pairs). Judge-human agreement (Labels): the judges as they routed this "
                  "round's pairs (fitted on earlier rounds' labels), on the items they sent to "
                  "people, which for uncertainty routing are the pairs they were least sure of.")
    return {"previous": "none (round 0)" if inp.k == 0 else _model_name(inp.previous_round),
            "reference": reference, "reference_mode": mode,
            "targeted_slices": inp.targeted_slices if inp.k > 0 else None, "judges": judges}


def _gate(report: dict, inp: RoundInputs, cfg) -> dict:
    """The loop's gate on this report: its thresholds, and its verdict as state.json records
    it (`Loop.check_gates`, after the report stage), or as `gate_verdict` gives it before
    the loop has recorded one (`recorded` says which)."""
    from alignloop.report.alerts import gate_verdict, slice_drops

    g, m = cfg.loop.gate, cfg.report.min_slice_samples
    verdict = inp.gate_record or gate_verdict(report, g, min_slice_samples=m)
    return {"max_kl_to_base": g.max_kl_to_base, "max_slice_drop": g.max_slice_drop,
            "slice_confidence": g.slice_confidence, "on_trip": g.action,
            "min_slice_samples": m, "slice_checks": len(slice_drops(report, min_samples=m)),
            "kl_to_base": get_path(report, "kl_to_base", "k1", "sequence", "value"),
            "recorded": inp.gate_record is not None,
            **{key: verdict.get(key, "" if key != "tripped" else False)
               for key in ("tripped", "reason", "action", "held")}}


def build_round_report(inp: RoundInputs, cfg, notes: list[str] = ()) -> dict:
    """The report.json object of a round (validated against the schema by the writer)."""
    from alignloop.config import to_dict

    rc = cfg.report
    boot = {"n_boot": rc.n_boot, "seed": rc.seed}
    report = {
        "schema_version": SCHEMA_VERSION, "round": inp.k,
        "inputs": dict(inp.inputs), "notes": list(notes) + _previous_note(inp),
        "thresholds": to_dict(rc),
        "kl_to_reference": _kl(inp, "logp_reference", "reference", boot),
        "kl_to_base": _kl(inp, "logp_base", "base", boot),
        "win_rate_vs_previous": _win(inp, "previous", boot),
        "win_rate_vs_base": _win(inp, "base", boot),
        "latent_reward": _latent(inp, boot),
        "length": _length(inp, boot),
        "degeneration": _degeneration(inp),
        "implicit_reward": _implicit(inp, cfg.train.beta, boot),
        "labels": _labels(inp, cfg.labeling.human.budget),
        "train": _train(inp),
    }
    report = _clean(report)
    report["context"] = _clean(_context(inp, cfg))
    report["gate"] = _clean(_gate(report, inp, cfg))
    checks = check_report(report, rc)
    report["alerts"], report["skipped_checks"] = _clean(checks.alerts), _clean(checks.skipped)
    return report


CUT = " [… cut at the length limit]"


def _shown(sample: dict) -> str:
    """A sample's text as an example shows it: marked when it did not end by itself."""
    return sample["text"] + (CUT if sample.get("finish_reason") == "length" else "")


def pick_examples(inp: RoundInputs, n: int, seed: int) -> list[dict]:
    """Up to `n` held-out prompts (round-robin over slices, seeded): this round's policy
    response next to the previous policy's (none: the base model's), with the judge's
    verdict on the pair."""
    other, label = ((inp.previous, f"previous policy (round {inp.previous_round})")
                    if inp.previous else (inp.base, "base model"))
    opponent = "previous" if inp.previous else "base"
    theirs = {(r["prompt_id"], r["sample_index"]): r for r in other or []}
    verdict = {(c["prompt_id"], c["sample_index"]): c for c in inp.comparisons or []
               if c["b_model"] == opponent}
    first: dict[str, dict] = {}                   # each prompt's first sample
    for r in sorted(inp.rows("policy"), key=lambda r: (r["prompt_id"], r["sample_index"])):
        first.setdefault(r["prompt_id"], r)
    by_slice = defaultdict(list)
    for r in first.values():
        by_slice[r["slice"] or ""].append(r)
    rng = random.Random(seed)
    for rows in by_slice.values():
        rng.shuffle(rows)
    out = []
    while len(out) < n and any(by_slice.values()):
        for s in sorted(by_slice):
            if by_slice[s] and len(out) < n:
                r = by_slice[s].pop()
                key = (r["prompt_id"], r["sample_index"])
                o, c = theirs.get(key), verdict.get(key)
                out.append({"prompt_id": r["prompt_id"], "slice": r["slice"], "prompt": r["prompt"],
                            "current": _shown(r), "other": _shown(o) if o else None,
                            "other_label": label, "p_a": c["p_a"] if c else None,
                            "tie": bool(c["tie"]) if c else None,
                            "latent_current": r.get("latent_reward"),
                            "latent_other": o.get("latent_reward") if o else None})
    return _clean(out)
