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

import random
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np


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
        from alignloop.embeddings import Encoder

        encoder = Encoder()
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
