"""Failure slices: where the last policy does worst on held-out prompts, and which
training prompts to generate on there.

Slices are the prompts' `slice` tags when they carry them; otherwise KMeans
clusters (scikit-learn) of their sentence embeddings, fitted on training and
held-out prompts together so both get a cluster. Each slice's metric is the mean
of its held-out prompts' values (the judges' win rate against the base model, or
the ground-truth utility on the demo); slices with fewer than `min_size`
evaluated prompts are not ranked. The worst `count` slices, or those below
`threshold`, are chosen, and `slices.json` says why for every slice.

Prompts for generation are drawn from the training pool only (never a held-out
prompt), from the chosen slices in proportion to how far each falls short of
the best slice, preferring prompts not generated on in earlier rounds.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from alignloop import artifacts as A
from alignloop.config import SlicesConfig
from alignloop.errors import HeldoutLeak, RoundEnded


@dataclass
class SliceStat:
    name: str
    n: int
    value: float
    chosen: bool = False
    why: str = ""
    prompt_ids: list[str] = field(default_factory=list)


def cluster_labels(items: list, n_clusters: int, seed: int = 0, encoder=None) -> dict[str, str]:
    """{prompt_id: "cluster_i"} from KMeans over prompt embeddings."""
    from alignloop.labeling import prompt_text
    from sklearn.cluster import KMeans

    if encoder is None:
        from alignloop.embeddings import shared_encoder

        encoder = shared_encoder()
    X = encoder.encode([prompt_text(it.prompt) for it in items], progress=True)
    k = min(n_clusters, len(items))
    labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(X)
    return {it.prompt_id: f"cluster_{int(c)}" for it, c in zip(items, labels, strict=True)}


def slice_stats(values: dict[str, float], slice_of: dict[str, str], *, min_size: int) -> list[SliceStat]:
    """Per-slice mean of the per-prompt `values` (held-out prompt id -> metric)."""
    groups: dict[str, list[str]] = defaultdict(list)
    for pid, v in values.items():
        if np.isfinite(v):
            groups[slice_of.get(pid, "")].append(pid)
    stats = []
    for name, pids in sorted(groups.items()):
        v = float(np.mean([values[p] for p in pids]))
        stat = SliceStat(name or "(untagged)", len(pids), v, prompt_ids=sorted(pids))
        if len(pids) < min_size:
            stat.why = f"not ranked: {len(pids)} evaluated prompts < min_size {min_size}"
        stats.append(stat)
    return stats


def choose_failures(stats: list[SliceStat], *, select: str, count: int,
                    threshold: float) -> list[SliceStat]:
    """Mark the failing slices (worst first) and record why each slice was or was not chosen."""
    ranked = sorted((s for s in stats if not s.why), key=lambda s: s.value)
    for rank, s in enumerate(ranked):
        if select == "count":
            s.chosen = rank < count
            s.why = (f"rank {rank + 1} of {len(ranked)} by metric {s.value:.3f}; "
                     f"the worst {count} are chosen")
        else:
            s.chosen = s.value < threshold
            s.why = f"metric {s.value:.3f} {'<' if s.chosen else '>='} threshold {threshold}"
    return [s for s in ranked if s.chosen]


def pick_prompts(train: list, slice_of: dict[str, str], failures: list[SliceStat], n: int, *,
                 used: set[str], seed: int, best: float | None = None) -> list:
    """Up to n training prompts from the failing slices, split across them in proportion to
    their shortfall from `best` (the best ranked slice's metric), unused prompts first."""
    if not failures:
        return []
    rng = random.Random(seed)
    best = max(s.value for s in failures) if best is None else best
    short = {s.name: (best - s.value) + 1e-3 for s in failures}
    total = sum(short.values())
    quota = {name: max(1, round(n * w / total)) for name, w in short.items()}
    chosen = []
    for s in failures:
        pool = [it for it in train if slice_of.get(it.prompt_id, "(untagged)") == s.name
                or (s.name == "(untagged)" and not slice_of.get(it.prompt_id))]
        fresh = [it for it in pool if it.prompt_id not in used]
        seen = [it for it in pool if it.prompt_id in used]
        rng.shuffle(fresh)
        rng.shuffle(seen)
        chosen += (fresh + seen)[:quota[s.name]]
    rng.shuffle(chosen)
    return chosen[:n]


def slices_report(stats: list[SliceStat], *, metric: str, by: str) -> dict:
    return {"metric": metric, "by": by,
            "chosen": [s.name for s in sorted(stats, key=lambda s: s.value) if s.chosen],
            "slices": [{k: v for k, v in asdict(s).items() if k != "prompt_ids"} | {
                "prompt_ids": s.prompt_ids} for s in stats]}


# --------------------------------------------------------------------------- the stage


def mine_slices(rdir: Path, *, cfg: SlicesConfig, pool, previous_eval: list[dict], used: set[str],
                prompts_per_round: int, seed: int, round: int, encoder=None) -> list:
    """Failure slices of the previous round's evaluation and the training prompts to generate
    on; writes slices.json and prompts.parquet. Raises RoundEnded when no slice fails."""
    tagged = all(it.slice for it in pool.train + pool.eval)
    by = cfg.by if cfg.by != "auto" else ("tag" if tagged else "cluster")
    if by == "tag":
        slice_of = {it.prompt_id: it.slice or "(untagged)" for it in pool.train + pool.eval}
    else:
        slice_of = cluster_labels(pool.train + pool.eval, cfg.n_clusters, seed, encoder)

    values: dict[str, list[float]] = {}
    for row in previous_eval:
        values.setdefault(row["prompt_id"], []).append(row["value"])
    per_prompt = {pid: float(np.mean(v)) for pid, v in values.items()}
    stats = slice_stats(per_prompt, slice_of, min_size=cfg.min_size)
    failures = choose_failures(stats, select=cfg.select, count=cfg.count, threshold=cfg.threshold)
    ranked = [s.value for s in stats if s.chosen or not s.why.startswith("not ranked")]
    prompts = pick_prompts(pool.train, slice_of, failures, prompts_per_round, used=used,
                           seed=seed + round, best=max(ranked) if ranked else None)
    held = {it.prompt_id for it in pool.eval}
    leaked = sorted(p.prompt_id for p in prompts if p.prompt_id in held)
    if leaked:
        raise HeldoutLeak(f"held-out prompts were chosen for generation: {leaked[:5]}")
    report = slices_report(stats, metric=cfg.metric, by=by)
    report["prompts"] = len(prompts)
    A.atomic_write_json(rdir / A.SLICES, report)
    write_prompt_items(rdir / A.PROMPTS, [replace(p, slice=slice_of.get(p.prompt_id, p.slice))
                                           for p in prompts])
    if not prompts:
        n_ranked = sum(1 for s in stats if s.chosen or not s.why.startswith("not ranked"))
        why = (f"{n_ranked} of {len(stats)} slices ranked by {cfg.metric}" if n_ranked else
               f"none of the {len(stats)} slices could be ranked: each had fewer than "
               f"loop.slices.min_size ({cfg.min_size}) evaluated prompts; more "
               "loop.eval_prompts" + (", or fewer loop.slices.n_clusters," if by == "cluster"
                                     else "") + " would give them more")
        raise RoundEnded(f"no failure slice was found in the previous round's evaluation "
                         f"({why}; see {A.SLICES})")
    return prompts


def write_prompt_items(path: Path, prompts: list) -> None:
    """A round's prompts.parquet: id, prompt as JSON (text or messages), slice."""
    A.write_parquet(path, [
        {"prompt_id": p.prompt_id, "prompt": json.dumps(p.prompt, ensure_ascii=False),
         "slice": p.slice} for p in prompts])


def read_prompt_items(path: Path) -> list:
    """The PromptItems of a prompts.parquet."""
    from alignloop.generation import PromptItem

    return [PromptItem(r["prompt_id"], json.loads(r["prompt"]), r["slice"])
            for r in A.read_parquet(path)]


def used_prompts(round_dirs: list[Path]) -> set[str]:
    """Ids of the prompts generated on in the given (earlier) rounds."""
    used = set()
    for rdir in round_dirs:
        if (rdir / A.PROMPTS).exists():
            used |= {r["prompt_id"] for r in A.read_parquet(rdir / A.PROMPTS)}
    return used


def eval_values(rdir: Path, metric: str) -> list[dict]:
    """Per held-out sample of the round in `rdir`, the value that ranks slices by `metric`."""
    from alignloop.evaluation import read_comparisons, read_samples

    rows = [r for r in read_samples(rdir) or [] if r["model"] == "policy"]
    if metric == "latent_reward":
        return [{"prompt_id": r["prompt_id"], "value": r["latent_reward"]} for r in rows]
    if metric == "judge_score":
        values = [{"prompt_id": r["prompt_id"], "value": r.get("judge_score")} for r in rows]
        values = [v for v in values if v["value"] is not None and v["value"] == v["value"]]
        if not values:
            raise RoundEnded(f"{rdir.name}'s evaluation has no judge scores to rank slices by "
                             "(loop.slices.metric: judge_score needs a judge that scores "
                             "responses one by one: a python `score` function, a reward model or "
                             "an llm_score judge)")
        return values
    comparisons = read_comparisons(rdir) or []
    if not comparisons:
        raise RoundEnded(f"{rdir.name} has no judge comparisons to rank slices by "
                         "(loop.slices.metric: win_rate_vs_base needs labeling.judges)")
    return [{"prompt_id": r["prompt_id"], "value": 0.5 if r["tie"] else float(r["p_a"] > 0.5)}
            for r in comparisons if r["b_model"] == "base"]


def metric_problem(metric: str, judges: tuple, panel: str) -> str:
    """Why `metric` cannot rank slices with these judges and panel ("" when it can)."""
    pointwise = any(j.kind in ("reward_model", "llm_score")
                    or (j.kind == "python" and j.returns == "score") for j in judges)
    if metric == "judge_score" and not pointwise:
        return ("judge_score needs a judge that scores responses one by one (a python judge "
                "with returns: score, a reward_model or an llm_score judge); set loop.slices.metric to "
                "win_rate_vs_base" + (" or latent_reward" if panel else "")
                + " or add such a judge")
    if metric == "win_rate_vs_base" and not judges:
        return "win_rate_vs_base needs labeling.judges"
    if metric == "latent_reward" and not panel:
        return "latent_reward needs loop.panel (a simulated panel's ground truth)"
    return ""
