"""The data stages of a round, each a plain function of explicit inputs that writes
its artifacts into the round directory (atomically) and returns what the next
stage needs:

    assemble_static   round 0: static pairs -> pairs.parquet (+ held-out pairs)
    mine_slices       round k: previous eval -> slices.json, prompts.parquet
    generate          prompts -> generations.parquet (k samples per prompt)
    judge             generations -> candidates.parquet (judged, selected, routed)
    label             candidates + people -> labels.parquet, labeled_pairs.parquet
    assemble_online   new pairs + replay of earlier rounds -> pairs.parquet

Held-out evaluation prompts never reach these stages: `mine_slices` picks from
the training pool only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import replace
from pathlib import Path

from alignloop.artifacts import atomic_write_json, read_parquet, write_parquet
from alignloop.data import read_pairs_parquet, write_pairs  # noqa: F401 (the driver reads through here)
from alignloop.errors import AlignloopError
from alignloop.records import Pair

log = logging.getLogger(__name__)


class RoundEnded(AlignloopError):
    """The round cannot go on (no failure slice, no labeled pair); the loop stops cleanly."""


def _unit(s: str) -> float:
    return int(hashlib.sha256(s.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


# --------------------------------------------------------------------------- round 0


def assemble_static(cfg, rdir: Path, *, eval_prompts: list, heldout_share: float = 0.1) -> list[Pair]:
    """Static pairs (data.path) -> pairs.parquet; a `heldout_share` of them (by pair id) go to
    heldout_pairs.parquet instead, never trained on, for the implicit-reward drift figures.
    Pairs whose prompt is one of the held-out evaluation prompts are left out entirely."""
    from alignloop.data import read_pairs_from_config

    pairs, report = read_pairs_from_config(cfg.data)
    held_prompts = {json.dumps(it.prompt, sort_keys=True) for it in eval_prompts}
    leaking = [p for p in pairs if json.dumps(p.prompt, sort_keys=True) in held_prompts]
    if leaking:
        log.warning("left out %d static pairs whose prompt is a held-out evaluation prompt",
                    len(leaking))
        pairs = [p for p in pairs if json.dumps(p.prompt, sort_keys=True) not in held_prompts]
    if not pairs:
        raise RoundEnded(f"{cfg.data.path}: no valid static pairs ({report})")
    held = [p for p in pairs if _unit(p.pair_id) < heldout_share] if len(pairs) >= 20 else []
    held_ids = {p.pair_id for p in held}
    train = [replace(p, round=0) for p in pairs if p.pair_id not in held_ids]
    write_pairs(rdir / "heldout_pairs.parquet", held)
    write_pairs(rdir / "pairs.parquet", train)
    log.info("round 0: %d static pairs (%d held out)", len(train), len(held))
    return train


# --------------------------------------------------------------------------- slices


def mine_slices(cfg, rdir: Path, *, pool, previous_eval: list[dict], used: set[str],
                encoder=None) -> list:
    """Failure slices of the previous round's evaluation and the training prompts to generate
    on; writes slices.json and prompts.parquet. Raises RoundEnded when no slice fails."""
    import numpy as np
    from alignloop.slices import (
        choose_failures,
        cluster_labels,
        pick_prompts,
        slice_stats,
        slices_report,
    )

    sc = cfg.loop.slices
    tagged = all(it.slice for it in pool.train + pool.eval)
    by = sc.by if sc.by != "auto" else ("tag" if tagged else "cluster")
    if by == "tag":
        slice_of = {it.prompt_id: it.slice or "(untagged)" for it in pool.train + pool.eval}
    else:
        slice_of = cluster_labels(pool.train + pool.eval, sc.n_clusters, cfg.loop.seed, encoder)

    values: dict[str, list[float]] = {}
    for row in previous_eval:
        values.setdefault(row["prompt_id"], []).append(row["value"])
    per_prompt = {pid: float(np.mean(v)) for pid, v in values.items()}
    stats = slice_stats(per_prompt, slice_of, min_size=sc.min_size)
    failures = choose_failures(stats, select=sc.select, count=sc.count, threshold=sc.threshold)
    ranked = [s.value for s in stats if s.chosen or not s.why.startswith("not ranked")]
    prompts = pick_prompts(pool.train, slice_of, failures, cfg.loop.prompts_per_round,
                           used=used, seed=cfg.loop.seed + int(rdir.name.split("_")[-1]),
                           best=max(ranked) if ranked else None)
    held = {it.prompt_id for it in pool.eval}
    assert not any(p.prompt_id in held for p in prompts), "a held-out prompt reached generation"
    report = slices_report(stats, metric=sc.metric, by=by)
    report["prompts"] = len(prompts)
    atomic_write_json(rdir / "slices.json", report)
    write_parquet(rdir / "prompts.parquet", [
        {"prompt_id": p.prompt_id, "prompt": json.dumps(p.prompt, ensure_ascii=False),
         "slice": slice_of.get(p.prompt_id, p.slice)} for p in prompts])
    if not prompts:
        raise RoundEnded("no failure slice was found in the previous round's evaluation "
                         f"({len(stats)} slices ranked by {sc.metric}; see slices.json)")
    return prompts


def read_prompt_items(path: Path) -> list:
    from alignloop.generation import PromptItem

    return [PromptItem(r["prompt_id"], json.loads(r["prompt"]), r["slice"])
            for r in read_parquet(path)]


# --------------------------------------------------------------------------- generate


def generate(cfg, rdir: Path, *, policy: str, prompts: list) -> list[dict]:
    """k samples per prompt from `policy` -> generations.parquet."""
    from alignloop.generation import SamplingParams, completion_rows, generator_for

    g = cfg.generation
    generator = generator_for(g, policy, cache_path=str(rdir / "generations.received.jsonl"))
    completions = generator.sample(prompts, SamplingParams.from_config(g))
    rows = completion_rows(completions, prompts)
    write_parquet(rdir / "generations.parquet", rows)
    return rows


# --------------------------------------------------------------------------- judge and label


def earlier_labels(run_dir: Path, k: int) -> list:
    from alignloop.labeling.labels import read_labels

    out = []
    for j in range(k):
        path = run_dir / f"round_{j:03d}" / "labels.parquet"
        if path.exists():
            out += read_labels(path)
    return out


def make_ensemble(cfg, run_dir: Path, k: int):
    """The configured judges, refit and calibrated on every earlier round's human labels."""
    from alignloop.labeling.ensemble import Ensemble
    from alignloop.labeling.labeler import learn_from_labels

    if not cfg.labeling.judges:
        return None, {}
    ensemble = Ensemble.from_specs(cfg.labeling.judges)
    return learn_from_labels(ensemble, earlier_labels(run_dir, k), cfg.labeling)


def judge(cfg, rdir: Path, *, generations: list[dict], ensemble, round: int):
    """Judge, select and route -> candidates.parquet."""
    from alignloop.labeling.labeler import groups_from_completions, judge_candidates

    groups = groups_from_completions(generations, source=str(rdir / "generations.parquet"))
    table = judge_candidates(groups, ensemble, cfg.labeling, round=round, beta=cfg.train.beta)
    write_parquet(rdir / "candidates.parquet", table.rows)
    return table


def label(cfg, rdir: Path, *, candidates, ensemble, queue, round: int,
          simulate=None, calibration: dict | None = None) -> list[Pair]:
    """Pairs routed to people go to `queue` (a LabelQueue); wait for their votes (or exit with
    "waiting for N labels"), aggregate, and write labels.parquet and labeled_pairs.parquet."""
    from alignloop.labeling.labeler import queue_items, soft_labels
    from alignloop.labeling.labels import write_labels

    human = cfg.labeling.human
    items = queue_items(candidates, human)
    votes = []
    if items and queue is not None:
        queue.submit(items)
        if simulate is not None:
            simulate(round)
        queue.wait_or_exit(round, human.min_labels, mode=human.wait,
                           timeout_s=human.wait_timeout_s)
        votes = queue.votes(round)
    elif items:
        log.warning("%d pairs were routed to people but no queue is configured", len(items))
    result = soft_labels(candidates, votes, cfg.labeling, round=round, ensemble=ensemble)
    write_labels(rdir / "labels.parquet", result.labels)
    atomic_write_json(rdir / "calibration.json", {"before_round": calibration or {},
                                                  "this_round": result.calibration,
                                                  "reliability": result.reliability,
                                                  "dropped": len(result.dropped)})
    write_pairs(rdir / "labeled_pairs.parquet", result.pairs)
    return result.pairs


# --------------------------------------------------------------------------- assemble


def assemble_online(cfg, rdir: Path, *, new: list[Pair], earlier: list[list[Pair]],
                    round: int) -> list[Pair]:
    """This round's pairs: the new ones plus `replay_share` x as many from earlier rounds
    (uniformly, without repeats, seeded) -> pairs.parquet."""
    if not new:
        raise RoundEnded("no labeled pair came out of this round (see candidates.parquet and "
                         "labels.parquet for why)")
    seen = {p.pair_id for p in new}
    pool = []
    for pairs in earlier:
        for p in pairs:
            if p.pair_id not in seen:
                seen.add(p.pair_id)
                pool.append(p)
    rng = random.Random(cfg.loop.seed * 1000 + round)
    n_replay = min(len(pool), round_half_up(cfg.loop.replay_share * len(new)))
    replay = rng.sample(pool, n_replay)
    pairs = [replace(p, round=round) for p in new] + replay
    write_pairs(rdir / "pairs.parquet", pairs)
    log.info("round %d: %d new pairs + %d replayed", round, len(new), len(replay))
    return pairs


def round_half_up(x: float) -> int:
    return int(x + 0.5)
