"""The label-efficiency benchmark's arithmetic on accuracy curves: labels a curve needs to
reach a bar, seed-averaged curves on a grid, and seed-bootstrap intervals (a seed is one
world shared by every variant, so a variant and the bar are resampled together).

A curve is [(labels so far, accuracy)], one per seed; `runs` is a variant's curves."""

from __future__ import annotations

import math

import numpy as np

BOOTSTRAP = 2000   # seed resamples behind each interval


def labels_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((n for n, acc in curve if acc >= target), None)


def mean_curve(runs: list[list[tuple[int, float]]], grid: np.ndarray) -> np.ndarray:
    """Accuracy averaged over seeds on a common grid of label counts."""
    return np.mean([np.interp(grid, [x for x, _ in r], [a for _, a in r]) for r in runs], axis=0)


def labels_to_bar(runs, bar_runs, grid, bar_grid) -> float:
    """Labels the seed-averaged curve of `runs` needs to reach the full-budget accuracy of the
    seed-averaged `bar_runs` (inf: never within the budget)."""
    bar = mean_curve(bar_runs, bar_grid)[-1]
    hit = np.nonzero(mean_curve(runs, grid) >= bar)[0]
    return float(grid[hit[0]]) if len(hit) else math.inf


def bootstrap_interval(runs, bar_runs, grid, bar_grid, *, level: float = 0.9,
                       seed: int = 0) -> tuple[float, float]:
    """`labels_to_bar` over seed resamples (the same seeds for the variant and the bar, since
    a seed is a world): the central `level` interval of the labels needed."""
    rng = np.random.default_rng(seed)
    n = len(runs)
    draws = []
    for _ in range(BOOTSTRAP):
        idx = rng.integers(0, n, size=n)
        draws.append(labels_to_bar([runs[i] for i in idx], [bar_runs[i] for i in idx],
                                   grid, bar_grid))
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], method="lower")
    return float(lo), float(hi)


def paired_difference(a, b, bar_runs, grid_a, grid_b, bar_grid, *, level: float = 0.9,
                      seed: int = 0) -> tuple[float, float, float]:
    """Labels variant `a` needs minus labels `b` needs (negative: `a` saves labels), with the
    central `level` interval over seed resamples shared by both and by the bar. Never
    reaching the bar counts as infinite; both never reaching it as no difference."""
    def diff(idx):
        na = labels_to_bar([a[i] for i in idx], [bar_runs[i] for i in idx], grid_a, bar_grid)
        nb = labels_to_bar([b[i] for i in idx], [bar_runs[i] for i in idx], grid_b, bar_grid)
        return 0.0 if math.isinf(na) and math.isinf(nb) else na - nb

    rng = np.random.default_rng(seed)
    n = len(a)
    draws = [diff(rng.integers(0, n, size=n)) for _ in range(BOOTSTRAP)]
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], method="lower")
    return diff(np.arange(n)), float(lo), float(hi)


def grid_of(batch: int, budget: int) -> np.ndarray:
    return np.arange(batch, budget + 1, batch)
