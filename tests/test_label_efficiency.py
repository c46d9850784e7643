"""The label-efficiency benchmark's parts: the Newton fit of the Bradley-Terry heads it relies
on for speed (against scikit-learn's L-BFGS on the same objective), a small real campaign
(alignloop's own heads and `select_pairs`), and the seed-bootstrap interval of the table."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from alignloop.labeling import embedding
from alignloop.labeling.embedding import BTEnsemble, fit_newton

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import label_efficiency as le  # noqa: E402
import label_efficiency_stats as stats  # noqa: E402


def _data(n, dim, seed=0):
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, dim))
    p = (rng.random(n) < 1 / (1 + np.exp(-d @ rng.normal(size=dim)))).astype(float)
    p[: n // 5] = 0.7                                   # some soft labels
    return d, p


@pytest.mark.parametrize("n,dim", [(30, 8), (400, 24)])
def test_newton_heads_match_sklearn_lbfgs(monkeypatch, n, dim):
    d, p = _data(n, dim)
    newton = BTEnsemble(members=4, l2=1.0, seed=5).fit(d, p).weights
    monkeypatch.setattr(embedding, "NEWTON_MAX_DIM", 0)          # force the L-BFGS path
    lbfgs = BTEnsemble(members=4, l2=1.0, seed=5).fit(d, p).weights
    # same bootstrap resamples, same strictly convex objective: the same minimum up to
    # L-BFGS's stopping tolerance
    assert np.abs(newton - lbfgs).max() < 2e-2 * np.abs(lbfgs).max()
    # and Newton's is the minimum: the gradient of its objective vanishes there
    rng = np.random.default_rng(5)
    counts = np.stack([np.bincount(rng.integers(0, n, size=n), minlength=n)
                       for _ in range(4)], axis=1).astype(float)
    s = 1 / (1 + np.exp(-(d @ newton.T)))
    grad = (counts * (s - p[:, None])).T @ d + 0.5 * newton
    assert np.abs(grad).max() < 1e-6


def test_newton_survives_separable_data():
    d = np.array([[1.0, 0.0], [2.0, 0.5], [0.5, -0.2]])
    w = fit_newton(d, np.ones(3), np.ones((3, 2)), l2=1e-3)
    assert np.all(np.isfinite(w)) and np.all(d @ w.T > 0)


TINY = {"seeds": 3, "budget": 60, "pool": 120, "candidates": 30}


def test_campaign_is_deterministic_and_learns():
    a = le.campaign("bald_diverse", 0, TINY, 10)
    b = le.campaign("bald_diverse", 0, TINY, 10)
    assert a == b
    assert [n for n, _ in a] == list(range(10, 61, 10))
    assert a[-1][1] > 0.6                                          # far above chance (0.5)
    assert le.campaign("bald_diverse", 1, TINY, 10) != a           # another world


def test_labels_to_bar_and_its_seed_bootstrap():
    grid = np.arange(10, 101, 10)

    def run(acc_at_100, speed):
        return [(int(n), acc_at_100 * (1 - math.exp(-speed * n / 100))) for n in grid]

    bar = [run(0.9, 3.0), run(0.92, 3.0), run(0.88, 3.0)]
    fast = [run(0.95, 9.0), run(0.96, 9.0), run(0.94, 9.0)]
    need = stats.labels_to_bar(fast, bar, grid, grid)
    # hand check: the bar is mean(0.9, 0.92, 0.88) * (1 - e^-3) = 0.855; fast reaches it at
    # 0.95 * (1 - e^-0.9 n/10) >= 0.855 -> n >= 25.6, the first grid point being 30
    assert need == 30
    lo, hi = stats.bootstrap_interval(fast, bar, grid, grid)
    assert lo <= need <= hi
    assert stats.labels_to_bar(bar[:1], bar[1:2], grid, grid) == math.inf      # never gets there
    assert stats.labels_to_bar(bar, bar, grid, grid) == 100                   # the bar itself
    # paired: fast needs 30, the bar's own curves 100 -> 70 labels saved
    diff, lo, hi = stats.paired_difference(fast, bar, bar, grid, grid, grid)
    assert diff == -70 and lo <= diff <= hi < 0
    assert stats.paired_difference(bar[:1] * 3, bar[:1] * 3, bar[1:2] * 3, grid, grid, grid)[0] == 0


def test_the_oracle_buys_more_information_than_any_random_batch_and_is_never_the_best():
    world = le.make_world(0, pool=40)
    offer = np.arange(40)
    pairs = [[(i, j) for i in range(4) for j in range(i + 1, 4)]] * 40
    info = np.eye(world.phi.shape[-1])

    def logdet(keys):
        x = np.stack([world.phi[g, i] - world.phi[g, j] for g, i, j in keys])
        lam = le._true_weight(world, x)
        return np.linalg.slogdet(info + (lam[:, None] * x).T @ x)[1]

    picked = le._oracle_picks(world, offer, pairs, 8, info)
    assert len(set(picked)) == 8
    rng = np.random.default_rng(0)
    every = [(g, i, j) for g in range(40) for i, j in pairs[g]]
    randoms = [logdet([every[k] for k in rng.choice(len(every), 8, replace=False)])
               for _ in range(200)]
    assert logdet(picked) > max(randoms)        # greedy D-optimal beats 200 random batches
    # a campaign with the oracle learns and repeats; the table never names it the best
    a = le.campaign(le.ORACLE, 0, TINY, 10)
    assert a == le.campaign(le.ORACLE, 0, TINY, 10) and a[-1][1] > 0.55   # above chance
    curves = {le.variant_name("random", 25): [[(25, 0.6), (50, 0.7)]] * 2,
              le.variant_name("uncertainty", 25): [[(25, 0.65), (50, 0.72)]] * 2,
              le.variant_name(le.ORACLE, 25): [[(25, 0.75), (50, 0.8)]] * 2}
    meta, rows, md = le.summarize(curves, {**TINY, "budget": 50}, "quick")
    assert meta["best_strategy"] == "uncertainty, batch 25" and meta["labels_ratio"] == 1.0
    assert meta["oracle"]["labels_ratio"] == 0.5 and "oracle_d_optimal, batch 25 reference" in md


def test_unknown_variant_is_named():
    with pytest.raises(SystemExit, match="'bald:7'"):
        le._parse_variants("bald:25,bald:7")
    assert le._parse_variants(" oracle_d_optimal:5") == [(le.ORACLE, 5)]


def test_the_ceiling_is_where_many_random_labels_get_and_the_table_says_so():
    few, many = (le.ceiling_accuracy(0, TINY, labels=n) for n in (30, 3000))
    assert many > few + 0.05 and many > 0.85                     # more labels, near the top
    curves = {le.variant_name("random", 25): [[(25, 0.6), (50, 0.7)]] * 2}
    meta, _, md = le.summarize(curves, {**TINY, "budget": 50}, "quick", [0.8, 0.9])
    assert meta["ceiling_accuracy"] == pytest.approx(0.85)
    assert "reach 0.850" in md and "0.150 below" in md
