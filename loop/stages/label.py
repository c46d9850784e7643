"""Label: judge the candidate pairs, select the informative ones, route them to the judges
or to people, and turn judge probabilities and votes into soft-labeled pairs.

    make_ensemble   the judges, refit and calibrated on every earlier round's human labels
    judge           generations -> candidates.parquet (judged, selected, routed); served
                    judges keep their answers in judge.received.jsonl, usage in judge_usage.json
    label           candidates + the queue's votes -> labels.parquet, labeled_pairs.parquet

The labeling itself lives in `alignloop.labeling` (shared with `alignloop judge`); these
functions wire it to the round directory.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from alignloop import artifacts as A
from alignloop.config import LabelingConfig
from alignloop.data import write_pairs
from alignloop.labeling import LabelingError
from alignloop.records import Pair

log = logging.getLogger(__name__)


def earlier_labels(round_dirs: list[Path]) -> list:
    """Every label of the given rounds (their labels.parquet, where present)."""
    from alignloop.labeling.labels import read_labels

    return [x for rdir in round_dirs if (rdir / A.LABELS).exists()
            for x in read_labels(rdir / A.LABELS)]


def make_ensemble(cfg: LabelingConfig, history: list, placement=None):
    """(ensemble, calibration report): the configured judges (those with a model placed as
    `placement` says), refit and calibrated on the human labels in `history`; (None, {})
    without judges."""
    from alignloop.labeling.ensemble import Ensemble
    from alignloop.labeling.labeler import learn_from_labels

    if not cfg.judges:
        return None, {}
    return learn_from_labels(Ensemble.from_specs(cfg.judges, placement), history, cfg)


def judge(rdir: Path, *, generations: list[dict], ensemble, cfg: LabelingConfig, beta: float,
          round: int, policy: str, reference: str, chat_template: str = "auto",
          placement=None):
    """Judge, select and route -> candidates.parquet. The `apl` strategy also scores every
    response under `policy` and `reference` (its implicit reward), placed as `placement`
    says."""
    from alignloop.labeling.labeler import groups_from_completions, judge_candidates
    from alignloop.labeling.logprobs import with_logprobs

    groups = groups_from_completions(generations, source=str(rdir / A.GENERATIONS))
    if cfg.selection.strategy == "apl":
        groups = with_logprobs(groups, policy=policy, reference=reference,
                               chat_template=chat_template, placement=placement)
    if ensemble is not None:
        ensemble.use_cache(rdir / A.JUDGE_CACHE)  # served judges: a rerun asks nothing twice
    table = judge_candidates(groups, ensemble, cfg, round=round, beta=beta)
    usage = ensemble.usage() if ensemble is not None else {}
    if usage:
        A.atomic_write_json(rdir / A.JUDGE_USAGE, usage)
        for name, u in usage.items():
            log.info("judge %s: %d questions, %d from cache, %d asked (%d prompt + %d "
                     "completion tokens)", name, u["questions"], u["from_cache"], u["requests"],
                     u["prompt_tokens"], u["completion_tokens"])
    A.write_parquet(rdir / A.CANDIDATES, table.rows)
    return table


def label(rdir: Path, *, candidates, ensemble, queue, cfg: LabelingConfig, round: int,
          simulate=None, calibration: dict | None = None) -> list[Pair]:
    """Pairs routed to people go to `queue` (a LabelQueue); wait for their votes (or exit with
    "waiting for N labels"), aggregate, and write labels.parquet and labeled_pairs.parquet.
    `simulate(round)`, when given, lets simulated annotators label the queue first."""
    from alignloop.labeling.labeler import queue_items, soft_labels
    from alignloop.labeling.labels import write_labels

    human = cfg.human
    use_gold = cfg.aggregation.gold_calibration and queue is not None
    if use_gold and not hasattr(queue, "gold_votes"):     # refused before anything is queued
        raise LabelingError(f"labeling.aggregation.gold_calibration: the queue "
                            f"({type(queue).__name__}) holds no gold items (it has no "
                            "gold_votes()); turn the option off or use the SQL queue")
    items = queue_items(candidates, human)
    votes = []
    if items and queue is not None:
        queue.submit(items)
        if simulate is not None:
            simulate(round)
        queue.wait_or_exit(round, human.min_labels, mode=human.wait,
                           timeout_s=human.wait_timeout_s)
        votes = queue.votes(round)
        if simulate is not None:      # simulated votes carry no wall-clock time (labels.py)
            votes = [dataclasses.replace(v, created_at=0.0) for v in votes]
    elif items:
        log.warning("%d pairs were routed to people but no queue is configured", len(items))
    gold = queue.gold_votes() if use_gold else None
    result = soft_labels(candidates, votes, cfg, round=round, ensemble=ensemble, gold=gold)
    if result.gold:
        log.info("round %d: human labels calibrated on %d voted gold items: temperature %.3g%s",
                 round, result.gold["n"], result.gold["temperature"],
                 f" ({result.gold['note']})" if result.gold["note"] else "")
    write_labels(rdir / A.LABELS, result.labels)
    A.atomic_write_json(rdir / A.CALIBRATION, {"before_round": calibration or {},
                                               "this_round": result.calibration,
                                               "reliability": result.reliability,
                                               "dropped": len(result.dropped),
                                               **({"human_gold": result.gold} if result.gold else {})})
    write_pairs(rdir / A.LABELED_PAIRS, result.pairs)
    return result.pairs
