"""Assemble the pairs a round trains on (`pairs.parquet`).

    round 0   static pairs (data section) -> pairs.parquet, heldout_pairs.parquet
    round k   this round's labeled pairs + a replay of earlier rounds -> pairs.parquet

Held-out evaluation prompts never reach training: a static pair on one is left out.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import replace
from pathlib import Path

from alignloop import artifacts as A
from alignloop.config import DataConfig
from alignloop.data import read_pairs_from_config, write_pairs
from alignloop.errors import RoundEnded
from alignloop.records import Pair, unit_interval

log = logging.getLogger(__name__)


def assemble_static(rdir: Path, *, data: DataConfig, eval_prompts: list, heldout_share: float,
                    heldout_min: int, read: tuple | None = None) -> list[Pair]:
    """Static pairs -> pairs.parquet; a `heldout_share` of them (by pair id; none when there
    are fewer than `heldout_min`) go to heldout_pairs.parquet instead, never trained on, for
    the implicit-reward drift figures. Pairs whose prompt is a held-out evaluation prompt
    are left out entirely. `read`: `read_pairs_from_config(data)` already done (the run's
    preflight reads the pairs once, to refuse a bad row before the run directory exists)."""
    pairs, report = read if read is not None else read_pairs_from_config(data)
    held_prompts = {json.dumps(it.prompt, sort_keys=True) for it in eval_prompts}
    leaking = [p for p in pairs if json.dumps(p.prompt, sort_keys=True) in held_prompts]
    if leaking:
        log.warning("left out %d static pairs whose prompt is a held-out evaluation prompt",
                    len(leaking))
        pairs = [p for p in pairs if json.dumps(p.prompt, sort_keys=True) not in held_prompts]
    if not pairs:
        raise RoundEnded(f"{data.path}: no valid static pairs ({report})")
    held = ([p for p in pairs if unit_interval(p.pair_id) < heldout_share]
            if len(pairs) >= heldout_min else [])
    held_ids = {p.pair_id for p in held}
    train = [replace(p, round=0) for p in pairs if p.pair_id not in held_ids]
    write_pairs(rdir / A.HELDOUT_PAIRS, held)
    write_pairs(rdir / A.PAIRS, train)
    log.info("round 0: %d static pairs (%d held out)", len(train), len(held))
    return train


def assemble_online(rdir: Path, *, new: list[Pair], earlier: list[list[Pair]], round: int,
                    replay_share: float, seed: int) -> list[Pair]:
    """This round's pairs: the new ones plus `replay_share` x as many from earlier rounds
    (uniformly, without repeats, seeded) -> pairs.parquet."""
    if not new:
        raise RoundEnded("no labeled pair came out of this round" + _why_none(rdir, round))
    seen = {p.pair_id for p in new}
    pool = []
    for pairs in earlier:
        for p in pairs:
            if p.pair_id not in seen:
                seen.add(p.pair_id)
                pool.append(p)
    rng = random.Random(seed * 1000 + round)
    n_replay = min(len(pool), int(replay_share * len(new) + 0.5))   # round half up
    replay = rng.sample(pool, n_replay)
    pairs = [replace(p, round=round) for p in new] + replay
    write_pairs(rdir / A.PAIRS, pairs)
    log.info("round %d: %d new pairs + %d replayed", round, len(new), len(replay))
    return pairs


def _why_none(rdir: Path, round: int) -> str:
    """Why a round has no labeled pair, from its candidates and labels: what the judges
    decided, and whether the pairs routed to people got their votes (if not, the fix is
    to label them and redo the round's labeling)."""
    from collections import Counter

    try:
        decided = Counter(r["decision"] for r in A.read_parquet(rdir / A.CANDIDATES)
                          if r["selected"])
        voted = {r["item_id"] for r in A.read_parquet(rdir / A.LABELS) if r["source"] != "judge"}
    except (OSError, KeyError):
        return f" (see {A.CANDIDATES} and {A.LABELS} for why)"
    parts = [f"{decided.get('auto', 0)} selected pairs labeled by the judges, "
             f"{decided.get('drop', 0)} dropped (see {A.CANDIDATES} for why)"]
    if decided.get("human", 0):
        parts.append(f"{decided['human']} routed to people, who gave votes on {len(voted)}")
    why = " (" + "; ".join(parts) + ")"
    if decided.get("human", 0) and not voted:
        why += (f"; once people have labeled them, rerun with --redo-from {round}:label to "
                "use their votes")
    return why

