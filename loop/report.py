"""Drift reports: what moved, what improved, what regressed, how trustworthy the labels were.

`write_round_report(run_dir, k)` reads whatever artifacts round k has (see
`alignloop.evaluation` for the eval files; round 0 has no labels, a missing
previous round means no vs-previous numbers) and writes `round_NNN/report/`:
`report.json` (written last: its presence means the report is complete),
`report.md`, `report.html` (one self-contained file) and the figures as PNG.
`write_run_report(run_dir)` writes RUN_DIR/report.html, the cross-round view.

report.json, schema version 1 (`report_schema.json`, checked by `validate_report`).
Every metric section is either `{"available": false, "reason": ...}` or
`{"available": true, ...}`; an estimate is `{"value", "lo", "hi", "n"}` with a
bootstrap 95% percentile interval over prompts (`alignloop.drift`); undefined
numbers are null. Paths are relative to the report directory.

    schema_version, round, generated_at, inputs {name: path | null}, notes [str],
    thresholds      the ReportConfig used
    kl_to_reference, kl_to_base
                    {against, estimator, k1 {sequence, per_token}, k3 {...}, n_samples,
                     n_prompts, dropped}: KL(policy || q) from this round's policy samples
    win_rate_vs_previous, win_rate_vs_base
                    {opponent, overall, by_slice {slice: est}}; est adds wins, ties,
                     losses, mean_p; ties count half
    latent_reward   {models {policy, base, previous: {overall, by_slice} | null},
                     delta_vs_previous {overall, by_slice} | null, previous_reason}
    length          {models {policy, base, previous: {n, mean_tokens, median_tokens,
                     share_stop, share_length, histogram {edges, counts}}},
                     ratio_vs_previous, ratio_vs_base}
    degeneration    {models {name: {n, distinct_2, repeated_3gram_rate}}}
    implicit_reward {beta, n, accuracy, margin, logp_change_vs_base {chosen, rejected},
                     logp_change_vs_reference {...}, likelihood_displacement, by_slice}
    labels          `drift.label_stats` (sources, routing, budget, agreement, gold,
                     intransitivity)
    train           {steps, final {loss, margin, accuracy, ...}, tokens_per_s,
                     train_seconds, log: "../train_log.jsonl"}
    alerts          [{kind, message, value, threshold, slice, drop}] (`drift.alerts`)
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from alignloop import drift
from alignloop.errors import AlignloopError
from alignloop.evaluation import (
    COMPARISONS,
    HELDOUT_PAIRS,
    SAMPLES,
    read_comparisons,
    read_heldout_pairs,
    read_samples,
    round_dir,
)

SCHEMA_VERSION = 1
REPORT_DIR = "report"


class ReportSchemaError(AlignloopError, ValueError):
    """A report.json that does not follow report_schema.json."""


def missing(reason: str) -> dict:
    return {"available": False, "reason": reason}


@dataclass
class RoundInputs:
    """Everything a round report reads; None where the artifact does not exist."""

    k: int
    dir: Path
    samples: list[dict] | None = None
    comparisons: list[dict] | None = None
    heldout: list[dict] | None = None
    previous: list[dict] | None = None          # the previous round's policy samples
    base: list[dict] | None = None              # base-model samples (this round's or round 0's)
    previous_reason: str = ""
    labels: list[dict] | None = None
    candidates: list[dict] | None = None
    pairs: list[dict] | None = None
    train_log: list[dict] | None = None
    inputs: dict = field(default_factory=dict)

    def rows(self, model: str) -> list[dict]:
        return [r for r in self.samples or [] if r["model"] == model]


def load_round(run_dir: str | Path, k: int) -> RoundInputs:
    from alignloop.artifacts import read_parquet

    rdir = round_dir(run_dir, k)
    inp = RoundInputs(k, rdir, read_samples(rdir), read_comparisons(rdir), read_heldout_pairs(rdir))

    def rel(path: Path) -> str | None:              # relative to round_NNN/report/
        return f"../{path.name}" if path.exists() else None

    for name, f in (("samples", SAMPLES), ("comparisons", COMPARISONS), ("heldout_pairs", HELDOUT_PAIRS)):
        inp.inputs[name] = f"../{f}" if (rdir / f).exists() else None
    for name in ("labels", "candidates", "pairs"):
        path = rdir / f"{name}.parquet"
        setattr(inp, name, read_parquet(path) if path.exists() else None)
        inp.inputs[name] = rel(path)
    log = rdir / "train_log.jsonl"
    if log.exists():
        inp.train_log = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    inp.inputs["train_log"] = rel(log)
    inp.inputs["previous_samples"] = None
    inp.base = inp.rows("base") or None
    inp.inputs["base_samples"] = inp.inputs["samples"] if inp.base else None
    if inp.base is None and k > 0:                # the base model is sampled once, in round 0
        inp.base = [r for r in read_samples(round_dir(run_dir, 0)) or [] if r["model"] == "base"] or None
        inp.inputs["base_samples"] = f"../../round_000/{SAMPLES}" if inp.base else None
    if k == 0:
        inp.previous_reason = "round 0 has no previous policy"
    elif not round_dir(run_dir, k - 1).exists():
        inp.previous_reason = f"round {k - 1} does not exist in this run directory"
    else:
        prev = read_samples(round_dir(run_dir, k - 1))
        inp.previous = [r for r in prev or [] if r["model"] == "policy"] or None
        if inp.previous is None:
            inp.previous_reason = f"round {k - 1} has no policy samples in {SAMPLES}"
        else:
            inp.inputs["previous_samples"] = f"../../round_{k - 1:03d}/{SAMPLES}"
    return inp


# --------------------------------------------------------------------------- sections


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
    est = drift.kl_estimate([r["logp_policy"] if r["logp_policy"] is not None else nan for r in policy],
                            [r[col] if r[col] is not None else nan for r in policy],
                            [r["n_tokens"] for r in policy],
                            groups=[r["prompt_id"] for r in policy], **boot)
    return {"available": True, "against": against, **est}


def _win(inp: RoundInputs, opponent: str, boot: dict) -> dict:
    if inp.comparisons is None:
        return missing(f"no {COMPARISONS}")
    rows = [c for c in inp.comparisons if c["b_model"] == opponent and c["a_model"] == "policy"]
    if not rows:
        if opponent == "previous" and inp.k == 0:
            return missing("round 0 has no previous policy")
        return missing(f"no comparisons against the {opponent} model in {COMPARISONS}")
    return {"available": True, "opponent": opponent, **drift.win_rates_by_slice(rows, **boot)}


def _latent_summary(rows: list[dict] | None, boot: dict) -> dict | None:
    rows = [r for r in rows or [] if r.get("latent_reward") is not None
            and math.isfinite(r["latent_reward"])]
    if not rows:
        return None
    by = defaultdict(list)
    for r in rows:
        by[r["slice"] or ""].append(r)

    def est(sub):
        return drift.estimate([r["latent_reward"] for r in sub],
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
    return {"available": True, "models": {"policy": policy, "base": _latent_summary(
        inp.base, boot), "previous": prev}, "delta_vs_previous": delta,
        "previous_reason": reason}


def _models(inp: RoundInputs) -> dict[str, list[dict]]:
    out = {"policy": inp.rows("policy"), "previous": inp.previous or [], "base": inp.base or []}
    return {m: rows for m, rows in out.items() if rows}


def _length(inp: RoundInputs) -> dict:
    models = _models(inp)
    if "policy" not in models:
        return missing(f"no policy samples in {SAMPLES}" if inp.samples is not None
                       else f"no {SAMPLES}")
    edges = drift.histogram_edges(*[[r["n_tokens"] for r in rows] for rows in models.values()])
    stats = {m: drift.length_stats([r["n_tokens"] for r in rows],
                                   [r["finish_reason"] for r in rows], edges=edges)
             for m, rows in models.items()}

    def ratio(other: str):
        if other not in stats or not stats[other]["mean_tokens"]:
            return None
        return stats["policy"]["mean_tokens"] / stats[other]["mean_tokens"]

    return {"available": True, "models": stats, "ratio_vs_previous": ratio("previous"),
            "ratio_vs_base": ratio("base")}


def _degeneration(inp: RoundInputs) -> dict:
    models = _models(inp)
    if "policy" not in models:
        return missing(f"no policy samples in {SAMPLES}")
    return {"available": True,
            "models": {m: drift.degeneration(r["text"] for r in rows) for m, rows in models.items()}}


def _implicit(inp: RoundInputs, beta: float, boot: dict) -> dict:
    if inp.heldout is None:
        return missing(f"no {HELDOUT_PAIRS}")
    if not inp.heldout:
        return missing(f"{HELDOUT_PAIRS} is empty")
    return {"available": True, **drift.implicit_reward(inp.heldout, beta, **boot)}


def _labels(inp: RoundInputs, human_budget: int) -> dict:
    if inp.labels is None and inp.candidates is None and inp.pairs is None:
        return missing("no labels.parquet, candidates.parquet or pairs.parquet in the round")
    out = drift.label_stats(inp.labels or [], inp.candidates or [], inp.pairs or [],
                            human_budget=human_budget)
    if inp.labels is None:
        out["note"] = ("no labels.parquet: round 0 trains on static pairs only" if inp.k == 0
                       else "no labels.parquet")
    return {"available": True, **out}


def _train(inp: RoundInputs) -> dict:
    if not inp.train_log:
        return missing("no train_log.jsonl (training has not run)")
    last = inp.train_log[-1]
    speeds = [r["tokens_per_s"] for r in inp.train_log if r.get("tokens_per_s") is not None]
    return {"available": True, "steps": int(last.get("step", len(inp.train_log))),
            "final": {"loss": last.get("loss"), "margin": last.get("rewards/margin"),
                      "accuracy": last.get("rewards/accuracy"),
                      "rewards_chosen": last.get("rewards/chosen"),
                      "rewards_rejected": last.get("rewards/rejected"),
                      "grad_norm": last.get("grad_norm"), "lr": last.get("lr")},
            "tokens_per_s": sum(speeds) / len(speeds) if speeds else None,
            "train_seconds": sum(r.get("step_time_s", 0.0) for r in inp.train_log),
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


def resolve_config(run_dir: str | Path, config=None):
    """(Config, notes): `config`, else RUN_DIR/config.yaml, else the defaults."""
    from alignloop.config import Config, load_config

    if config is not None:
        return config, []
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        return Config(), ["no config.yaml in the run directory: default settings used"]
    try:
        return load_config(path), []
    except (AlignloopError, ValueError) as e:
        return Config(), [f"config.yaml could not be read ({e}): default settings used"]


def build_round_report(inp: RoundInputs, cfg, notes: list[str] = ()) -> dict:
    """The report.json object of a round (validated against the schema by the writer)."""
    from alignloop.config import to_dict

    rc = cfg.report
    boot = {"n_boot": rc.n_boot, "seed": rc.seed}
    report = {
        "schema_version": SCHEMA_VERSION, "round": inp.k,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": dict(inp.inputs), "notes": list(notes), "thresholds": to_dict(rc),
        "kl_to_reference": _kl(inp, "logp_reference", "reference", boot),
        "kl_to_base": _kl(inp, "logp_base", "base", boot),
        "win_rate_vs_previous": _win(inp, "previous", boot),
        "win_rate_vs_base": _win(inp, "base", boot),
        "latent_reward": _latent(inp, boot),
        "length": _length(inp),
        "degeneration": _degeneration(inp),
        "implicit_reward": _implicit(inp, cfg.train.beta, boot),
        "labels": _labels(inp, cfg.labeling.human.budget),
        "train": _train(inp),
    }
    report = _clean(report)
    report["alerts"] = _clean(drift.alerts(report, rc))
    return report


def pick_examples(inp: RoundInputs, n: int, seed: int) -> list[dict]:
    """Up to `n` held-out prompts (round-robin over slices, seeded): this round's policy
    response next to the previous round's (round 0, or no previous: the base model's)."""
    other, label = ((inp.previous, f"previous policy (round {inp.k - 1})") if inp.previous
                    else (inp.base, "base model"))
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
                            "current": r["text"], "other": o["text"] if o else None,
                            "other_label": label, "p_a": c["p_a"] if c else None,
                            "tie": bool(c["tie"]) if c else None,
                            "latent_current": r.get("latent_reward"),
                            "latent_other": o.get("latent_reward") if o else None})
    return _clean(out)


def _schema() -> dict:
    from importlib.resources import files

    return json.loads((files("alignloop") / "report_schema.json").read_text())


def validate_report(obj: dict) -> None:
    """Raise ReportSchemaError naming each violation of report_schema.json (JSON Schema 2020-12)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(_schema())
    # best_match descends into anyOf alternatives to the error that explains the most
    errors = [jsonschema.exceptions.best_match([e]) for e in validator.iter_errors(obj)]
    errors.sort(key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        lines = [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors[:10]]
        raise ReportSchemaError("report.json does not match the schema:\n  " + "\n  ".join(lines))


def write_round_report(run_dir: str | Path, round: int, *, config=None) -> Path:
    """Write round_NNN/report/{report.json, report.md, report.html, *.png}; returns the
    path of report.json. `config` is a Config (default: RUN_DIR/config.yaml)."""
    from alignloop.artifacts import atomic_write_bytes, atomic_write_json, atomic_write_text
    from alignloop.report_html import render_round_html
    from alignloop.report_md import render_markdown
    from alignloop.report_plots import round_figures

    cfg, notes = resolve_config(run_dir, config)
    inp = load_round(run_dir, round)
    if not inp.dir.exists():
        raise FileNotFoundError(f"no round {round} in {run_dir}: {inp.dir} not found")
    report = build_round_report(inp, cfg, notes)
    validate_report(report)
    out = inp.dir / REPORT_DIR
    figures = round_figures(report, inp.train_log or [])
    for name, png in figures.items():
        atomic_write_bytes(out / f"{name}.png", png)
    for old in out.glob("*.png"):                 # figures of an earlier report with more data
        if old.stem not in figures:
            old.unlink()
    atomic_write_text(out / "report.md", render_markdown(report, figures))
    examples = pick_examples(inp, cfg.report.examples, cfg.report.seed)
    atomic_write_text(out / "report.html", render_round_html(report, figures, examples))
    return atomic_write_json(out / "report.json", report)


def read_round_report(run_dir: str | Path, k: int, config=None) -> tuple[dict | None, str]:
    """(report, status) of round k: its report.json ("done"), one computed in memory from
    its eval artifacts ("computed"), or (None, "in progress") when it has no eval yet."""
    rdir = round_dir(run_dir, k)
    path = rdir / REPORT_DIR / "report.json"
    if path.exists():
        try:
            return json.loads(path.read_text()), "done"
        except json.JSONDecodeError:
            pass
    if not (rdir / SAMPLES).exists():
        return None, "in progress"
    cfg, notes = resolve_config(run_dir, config)
    try:
        return build_round_report(load_round(run_dir, k), cfg, notes), "computed"
    except (AlignloopError, OSError, ValueError) as e:   # the run view never fails on one round
        return None, f"eval artifacts unreadable: {e}"


def round_numbers(run_dir: str | Path) -> list[int]:
    return sorted(int(p.name[6:]) for p in Path(run_dir).glob("round_*")
                  if p.is_dir() and p.name[6:].isdigit())


def write_run_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html: every headline metric across rounds and the run's state
    (see `alignloop.report_html.render_run_html` for the state.json contract)."""
    from alignloop.artifacts import atomic_write_text
    from alignloop.report_html import render_run_html

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    state_path = run_dir / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else None
    rounds = sorted(set(round_numbers(run_dir)) | {int(k) for k in (state or {}).get("rounds", {})})
    reports = {k: read_round_report(run_dir, k) for k in rounds}
    return atomic_write_text(run_dir / "report.html", render_run_html(run_dir, reports, state))
