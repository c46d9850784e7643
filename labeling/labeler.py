"""The labeler: judge every candidate pair, choose the informative ones, route them,
and turn judge probabilities and human votes into soft-labeled `Pair`s.

    groups  = groups_from_completions(rows)                  # k samples per prompt
    table   = judge_candidates(groups, ensemble, cfg, round=k)   # candidates.parquet
    queue.submit(queue_items(table, cfg.human))              # uncertain pairs -> people
    result  = soft_labels(table, queue.votes(k), cfg, round=k)   # pairs + labels.parquet

Each step is a plain function of its inputs, so a driver script can stop
between them (for example while people label) and resume from the files.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field

from alignloop.labeling import Comparison, Judgement, LabelingError, logit
from alignloop.labeling.labels import Label, judge_label, vote_label
from alignloop.labeling.route import route
from alignloop.labeling.select import CandidateGroup, candidate_pairs, select_pairs
from alignloop.records import Pair, messages_from_json, pair_id_for

# --------------------------------------------------------------------------- candidates


def groups_from_completions(rows: list[dict], source: str = "completions") -> list[CandidateGroup]:
    """Group completion rows (the output of `alignloop generate`, or a user's own file) by
    prompt. Needs `prompt_id`, `prompt` and `text`; uses `sample_index`, `slice`,
    `logprob_sum`, `reference_logprob`. A bad row is a LabelingError naming `source`, the
    row and the field, before any judge loads.

    `logprob_sum` is the policy's log-prob of the sampled `token_ids` (end token included,
    see `Completion`), so a `reference_logprob` column must score those same tokens. The
    `apl` strategy in the loop and in `alignloop judge` replaces both with
    `labeling.logprobs.with_logprobs` (policy and reference on the rendered turn)."""
    by_prompt: dict[str, list[tuple[int, dict]]] = defaultdict(list)
    for n, row in enumerate(rows, start=1):
        _check_row(row, f"{source} row {n}")
        by_prompt[str(row["prompt_id"])].append((n, row))
    groups = []
    for pid, members in by_prompt.items():
        members.sort(key=lambda t: t[0] if t[1].get("sample_index") is None else t[1]["sample_index"])
        n, first = members[0]
        prompt = _prompt(first["prompt"], f"{source} row {n}")
        for m, r in members[1:]:   # one prompt per prompt_id: another would be judged as this
            if r["prompt"] != first["prompt"] and _prompt(r["prompt"], f"{source} row {m}") != prompt:
                raise LabelingError(f"{source} row {m}: prompt_id {pid!r} has another prompt than "
                                    f"row {n}; the samples of one prompt share its prompt_id, "
                                    "and different prompts need different ids")

        def column(name, members=members):
            values = [_float(r.get(name), f"{source} row {m}", name) for m, r in members]
            return None if any(v is None for v in values) else tuple(values)

        groups.append(CandidateGroup(pid, prompt, tuple(r["text"] for _, r in members),
                                     str(first.get("slice") or ""), column("logprob_sum"),
                                     column("reference_logprob")))
    return groups


def _check_row(row, where: str) -> None:
    """The columns every completion row needs, of the types grouping relies on."""
    from alignloop.data import DataError, check_text

    if not isinstance(row, dict):
        raise LabelingError(f"{where}: the row is a {type(row).__name__}, not an object")
    for col in ("prompt_id", "prompt", "text"):
        if row.get(col) is None:
            raise LabelingError(f"{where}: missing column '{col}'")
    if not isinstance(row["text"], str):
        raise LabelingError(f"{where}: text is not a string (got {type(row['text']).__name__})")
    try:
        for col in ("prompt_id", "text", "slice"):   # a sample's text may be empty (an early end)
            if isinstance(row.get(col), str):
                check_text(row[col], col, empty_ok=True)
    except DataError as e:
        raise LabelingError(f"{where}: {e}") from None
    index = row.get("sample_index")
    if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
        raise LabelingError(f"{where}: sample_index is not an integer (got {index!r})")


def _prompt(value, where: str):
    """A completion row's prompt. `alignloop generate` stores it as JSON text (a JSON string
    or message list, like pairs.parquet); a user's file may hold plain text or messages.
    Text is decoded only when it is exactly such JSON, so "[urgent] ..." stays text (a text
    prompt that is itself one JSON string, quotes included, loses its quotes)."""
    from alignloop.data import DataError, check_messages, check_text

    if isinstance(value, str):
        decoded = messages_from_json(value)
        if decoded is None and value[:1] == '"':
            try:
                decoded = json.loads(value)   # a JSON string (nothing else starts with ")
            except ValueError:
                decoded = None
        value = value if decoded is None else decoded
    try:
        if isinstance(value, list):
            check_messages(value, "prompt")   # kept as given: the item ids hash it
        else:
            check_text(value, "prompt")
    except DataError as e:
        raise LabelingError(f"{where}: {e}") from None
    return value


def _float(value, where: str, name: str) -> float | None:
    """A log-prob column's value as a float (None when absent)."""
    if value is None:
        return None
    if not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError, OverflowError):
            pass
    raise LabelingError(f"{where}: {name} is not a number (got {value!r:.40})")


@dataclass
class Candidates:
    """Every judged candidate pair (`rows`, the columns of candidates.parquet) and each
    judge's raw judgements aligned with the rows."""

    rows: list[dict]
    by_judge: dict[str, list[Judgement]] = field(default_factory=dict)

    def selected(self, decision: str | None = None) -> list[dict]:
        return [r for r in self.rows if r["selected"] and (decision is None or r["decision"] == decision)]


def judge_candidates(groups: list[CandidateGroup], ensemble, cfg, *, round: int = 0,
                     beta: float = 0.1) -> Candidates:
    """Judge all candidate pairs, select within the budget, route. `cfg` is a LabelingConfig;
    `ensemble` may be None (no judges: every selected pair goes to people)."""
    pairs = [candidate_pairs(g, cfg.selection.near_duplicate) for g in groups]
    keys = [(g, i, j) for g, gp in enumerate(pairs) for i, j in gp]
    comparisons = [Comparison(groups[g].prompt, groups[g].responses[i], groups[g].responses[j])
                   for g, i, j in keys]
    by_judge = ensemble.judge_each(comparisons) if ensemble is not None and keys else {}
    combined = ensemble.combine(by_judge) if by_judge else [None] * len(keys)
    neutral = Judgement(0.5, (0.5,), 0.5, True, True, "no judges")
    judged = {k: (j if j is not None else neutral) for k, j in zip(keys, combined, strict=True)}
    picks = select_pairs(groups, pairs, judged, cfg.selection, beta=beta)
    position = {k: n for n, k in enumerate(keys)}
    routes = route([combined[position[(p.group, p.i, p.j)]] for p in picks], cfg.routing,
                   human_budget=cfg.human.budget)
    chosen = {(p.group, p.i, p.j): (p, r) for p, r in zip(picks, routes, strict=True)}

    rows = []
    for n, (g, i, j) in enumerate(keys):
        group, jm = groups[g], combined[n]
        pick, rt = chosen.get((g, i, j), (None, None))
        row = {
            "item_id": pair_id_for(group.prompt, group.responses[i], group.responses[j]),
            "round": round, "prompt_id": group.prompt_id,
            "prompt": json.dumps(group.prompt, ensure_ascii=False), "slice": group.slice,
            "i": i, "j": j, "a": group.responses[i], "b": group.responses[j],
            "p_a": jm.p_a if jm else math.nan,
            "uncertainty": jm.uncertainty if jm else math.nan,
            "order_consistent": jm.order_consistent if jm else False,
            "valid": jm.valid if jm else False,
            "judge_detail": jm.detail if jm else "no judges configured",
            "selected": pick is not None,
            "selection": pick.reason if pick else "",
            "selection_score": pick.score if pick else math.nan,
            "decision": rt.decision if rt else "drop",
            "reason": rt.reason if rt else "not selected",
            "informativeness": rt.informativeness if rt else math.nan,
        }
        for name, js in by_judge.items():
            row[f"p_a:{name}"] = js[n].p_a
            row[f"members:{name}"] = [float(m) for m in js[n].members]
            row[f"consistent:{name}"] = js[n].order_consistent
            row[f"valid:{name}"] = js[n].valid
            row[f"detail:{name}"] = js[n].detail
        rows.append(row)
    return Candidates(rows, by_judge)


def candidates_from_rows(rows: list[dict]) -> Candidates:
    """A candidate table read back from candidates.parquet, with every judge's judgements
    rebuilt from its `members:<judge>` columns (so a resumed round can still calibrate)."""
    names = [c.split(":", 1)[1] for c in (rows[0] if rows else {}) if c.startswith("members:")]
    by_judge: dict[str, list[Judgement]] = {}
    for name in names:
        js = []
        for r in rows:
            members = [float(m) for m in r[f"members:{name}"]]
            if not r[f"valid:{name}"]:
                js.append(Judgement.invalid(len(members), r[f"detail:{name}"]))
            else:
                js.append(Judgement.from_members(members, order_consistent=bool(
                    r[f"consistent:{name}"]), detail=r[f"detail:{name}"]))
        by_judge[name] = js
    return Candidates([dict(r) for r in rows], by_judge)


def queue_items(candidates: Candidates, human_cfg) -> list:
    """The pairs routed to people, as queue items ordered by informativeness."""
    from alignloop.labeling.handoff import QueueItem

    rows = sorted(candidates.selected("human"), key=lambda r: -r["informativeness"])
    return [QueueItem(r["item_id"], r["round"], json.loads(r["prompt"]), r["a"], r["b"],
                      r["slice"], r["informativeness"], human_cfg.votes_required,
                      human_cfg.max_votes) for r in rows]


# --------------------------------------------------------------------------- soft labels


@dataclass
class SoftLabelResult:
    pairs: list[Pair]
    labels: list[Label]
    dropped: dict[str, str]                   # item_id -> why no pair came out of it
    reliability: dict[str, float]
    calibration: dict[str, dict] = field(default_factory=dict)
    gold: dict = field(default_factory=dict)  # the human posteriors' gold calibration, if any


def _oriented(row: dict, p_a: float, **fields) -> Pair:
    """The pair with the preferred response as `chosen` and p_chosen = max(p, 1 - p)."""
    prompt = json.loads(row["prompt"])
    if p_a >= 0.5:
        return Pair(prompt, row["a"], row["b"], p_chosen=p_a, slice=row["slice"], **fields)
    return Pair(prompt, row["b"], row["a"], p_chosen=1.0 - p_a, slice=row["slice"], **fields)


def confidence_weight(votes) -> float:
    """A human-labeled pair's training weight from its votes' confidence (1 unsure,
    2 fairly sure, 3 sure): the mean over its a/b/tie votes divided by 3, so sure votes
    weigh 1 and unsure ones 1/3 (`aggregation.pair_weight: confidence`). Both-bad votes
    say nothing about the order and are left out; with no a/b/tie vote the weight is 1."""
    said = [int(v.confidence) for v in votes if v.choice in ("a", "b", "tie")]
    return sum(said) / (3.0 * len(said)) if said else 1.0


def soft_labels(candidates: Candidates, votes, cfg, *, round: int = 0,
                temperatures: dict[str, float] | None = None, ensemble=None,
                gold: tuple[list, dict[str, str]] | None = None) -> SoftLabelResult:
    """Soft-labeled pairs from the judges (auto) and from people (human).

    Human votes go through Dawid-Skene aggregation (`aggregate.aggregate_votes`); a vote
    with source "adjudicated" (an admin's final verdict) is a strong vote there.
    With `cfg.calibrate` and human-labeled pairs that the judges also saw, each
    judge's temperature is fitted on them and the auto labels are recomputed with
    the calibrated ensemble (`ensemble` is needed for that).

    `gold` = (votes on gold items, {gold item: answer}) (`aggregation.gold_calibration`):
    the gold votes join the Dawid-Skene fit, and the human posteriors are rescaled by the
    temperature that fits the gold items' posteriors to their answers
    (`alignloop.labeling.gold`; reported in `SoftLabelResult.gold`).
    """
    from alignloop.labeling.aggregate import Vote, aggregate_votes

    rows = {r["item_id"]: (n, r) for n, r in enumerate(candidates.rows) if r["selected"]}
    labels: list[Label] = []
    for n, row in rows.values():
        for name, js in candidates.by_judge.items():
            labels.append(judge_label(row, name, js[n].p_a, js[n].detail, round))
    votes = [v for v in votes if v.item_id in rows]
    labels += [vote_label(rows[v.item_id][1], v) for v in votes]

    agg = cfg.aggregation
    judge_lo = {i: logit(r["p_a"]) for i, (_, r) in rows.items() if r["valid"]}
    verdicts = {v.item_id: v.choice for v in votes if getattr(v, "source", "") == "adjudicated"}
    gold_votes, answers = gold if gold is not None else ([], {})
    human_votes = [Vote(v.item_id, v.annotator, v.choice) for v in [*votes, *gold_votes]
                   if getattr(v, "source", "human") != "adjudicated"]

    def posteriors(judge_weight: float):
        return aggregate_votes(human_votes, prior_reliability=agg.prior_reliability,
                               prior_strength=agg.prior_strength, iterations=agg.iterations,
                               judge_log_odds=judge_lo, judge_weight=judge_weight,
                               verdicts=verdicts)

    result = posteriors(agg.judge_vote_weight)
    # Judges are calibrated against what people alone said, never against posteriors
    # that already contain the judges' own evidence.
    votes_only = posteriors(0.0) if agg.judge_vote_weight > 0 else result

    calibration, auto_p = {}, {i: r["p_a"] for i, (_, r) in rows.items()}
    if cfg.calibrate and ensemble is not None and candidates.by_judge:
        from alignloop.labeling.calibration import calibrate

        human = {i: p.p_a for i, p in votes_only.posteriors.items() if p.n_votes > 0 and i in rows}
        idx = [rows[i][0] for i in human]
        temps = dict(temperatures or {})
        for name, js in candidates.by_judge.items():
            c = calibrate([js[n].p_a for n in idx], [human[i] for i in human])
            calibration[name] = {k: v for k, v in vars(c).items()}
            temps[name] = c.temperature
        recal = ensemble.with_temperatures(temps).combine(candidates.by_judge)
        auto_p = {i: recal[n].p_a for i, (n, _) in rows.items()}

    temperature, gold_report = 1.0, {}
    if gold is not None:
        from alignloop.labeling.gold import calibrate_to_gold, calibrated

        fit = calibrate_to_gold({i: p.p_a for i, p in votes_only.posteriors.items()
                                 if p.n_votes > 0}, answers)
        temperature = fit.temperature
        gold_report = {**vars(fit), "gold_items": len(answers), "gold_votes": len(gold_votes)}

    pairs, dropped = [], {}
    mixed = agg.judge_vote_weight > 0
    for item_id, (_, row) in rows.items():
        if row["decision"] == "auto":
            pairs.append(_oriented(row, auto_p[item_id], n_votes=0, source="judge", round=round))
        elif row["decision"] == "human":
            post = result.posteriors.get(item_id)
            if post is None or post.n_votes == 0:
                dropped[item_id] = ("both responses judged bad" if post and post.n_both_bad
                                    else "no human vote yet")
            elif post.p_a == 0.5:
                dropped[item_id] = "votes balance exactly (no preference)"
            else:
                weight = 1.0 if agg.pair_weight == "none" or item_id in verdicts else \
                    confidence_weight([v for v in votes if v.item_id == item_id])
                p_a = post.p_a if temperature == 1.0 else float(calibrated(post.p_a, temperature))
                pairs.append(_oriented(row, p_a, n_votes=post.n_votes, weight=weight,
                                       source="mixed" if mixed else "human", round=round))
        else:
            dropped[item_id] = row["reason"]
    return SoftLabelResult(pairs, labels, dropped, result.reliability, calibration, gold_report)


# --------------------------------------------------------------------------- learning from history


def human_posteriors(labels: list[Label], agg_cfg) -> dict[str, float]:
    """Dawid-Skene posterior P(a better) of every item people voted on (ties count, both-bad not)."""
    from alignloop.labeling.aggregate import Vote, aggregate_votes

    votes = [Vote(lab.item_id, lab.annotator, lab.choice) for lab in labels if lab.source == "human"]
    verdicts = {lab.item_id: lab.choice for lab in labels if lab.source == "adjudicated"}
    result = aggregate_votes(votes, prior_reliability=agg_cfg.prior_reliability,
                             prior_strength=agg_cfg.prior_strength, iterations=agg_cfg.iterations,
                             verdicts=verdicts)
    return {i: p.p_a for i, p in result.posteriors.items() if p.n_votes > 0}


def learn_from_labels(ensemble, labels: list[Label], cfg):
    """Refit the learning judges on every human label so far; with `cfg.calibrate`, fit
    each judge's temperature on the pairs people labeled; and set aside a judge whose
    agreement with people is below `cfg.routing.min_judge_slope` (`calibration.
    agreement_slope`: a judge that knows nothing or is inverted, which a temperature
    cannot express), so its pairs go to people. The judge probabilities used are the ones
    recorded when the pair was judged, i.e. before the learning judges saw its label (out
    of sample). Returns (ensemble, calibration report)."""
    from alignloop.labeling.calibration import MIN_ITEMS, agreement_slope, calibrate

    human = human_posteriors(labels, cfg.aggregation)
    if not human:
        return ensemble, {}
    first = {}
    for lab in labels:
        first.setdefault(lab.item_id, lab)
    items = sorted(human)
    ensemble.fit([Comparison(first[i].prompt, first[i].a, first[i].b) for i in items],
                 [human[i] for i in items])
    report, temps, aside = {}, {}, {}
    floor = cfg.routing.min_judge_slope
    for name in ensemble.names:
        seen = {lab.item_id: lab.p_a for lab in labels
                if lab.source == "judge" and lab.annotator == name and lab.item_id in human}
        if not seen:
            continue
        p, t = [seen[i] for i in seen], [human[i] for i in seen]
        slope, n = agreement_slope(p, t)
        report[name] = {"agreement_slope": slope, "agreement_pairs": n}
        if n >= MIN_ITEMS and slope <= floor:
            aside[name] = (f"agreement with people {slope:+.2f} <= min_judge_slope {floor} "
                           f"on {n} labeled pairs")
            report[name]["set_aside"] = aside[name]
        if cfg.calibrate:
            c = calibrate(p, t)
            report[name].update(vars(c))
            temps[name] = c.temperature
    ensemble = ensemble.with_temperatures(temps) if cfg.calibrate else ensemble
    return (ensemble.without(aside) if aside else ensemble), report
