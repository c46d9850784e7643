"""The demo's over-seeds aggregate: gains within each run, rolled-back rounds not counted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import demo_seeds  # noqa: E402


def _fig(failing: list[float], gates: list[str], wall_s: float = 300.0) -> dict:
    rows = [{"round": k, "latent_failing": v, "latent_overall": v + 0.1, "ends_by_eos": 0.1,
             "gate": g} for k, (v, g) in enumerate(zip(failing, gates, strict=True))]
    return {"rounds": rows, "wall_s": wall_s, "failing_slices": ["complaint"]}


def test_a_rolled_back_last_round_is_not_the_gain():
    row = demo_seeds.seed_row(0, _fig([0.9, 1.0, 0.5], ["kept", "kept", "rolled back"]))
    assert row["last_kept"] == 1
    assert row["gain"] == pytest.approx(0.1)
    assert row["kept_never_falls"]


def test_a_kept_round_that_falls_fails_the_target_for_all_seeds():
    rows = [demo_seeds.seed_row(0, _fig([0.9, 1.0, 1.2], ["kept"] * 3)),
            demo_seeds.seed_row(1, _fig([0.9, 1.1, 1.0], ["kept"] * 3))]
    agg = demo_seeds.aggregate(rows)
    assert not rows[1]["kept_never_falls"]
    assert not agg["targets"]["kept_never_falls"]


def test_the_interval_is_students_t_over_seeds():
    rows = [demo_seeds.seed_row(s, _fig([1.0, 1.0 + g], ["kept"] * 2))
            for s, g in enumerate([0.141, 0.227, 0.318])]
    agg = demo_seeds.aggregate(rows)
    # mean 0.2287, sd 0.0885, t(0.975, 2) = 4.303: half-width 0.2199
    assert agg["gain"] == pytest.approx(0.2287, abs=1e-4)
    assert (agg["gain_lo"], agg["gain_hi"]) == pytest.approx((0.0088, 0.4485), abs=1e-3)
    assert agg["targets"]["gain_excludes_zero"]
    noisy = [demo_seeds.seed_row(s, _fig([1.0, 1.0 + g], ["kept"] * 2))
             for s, g in enumerate([0.3, -0.1, 0.2])]
    assert not demo_seeds.aggregate(noisy)["targets"]["gain_excludes_zero"]


def test_a_slow_run_misses_the_time_target():
    rows = [demo_seeds.seed_row(0, _fig([1.0, 1.1], ["kept"] * 2, wall_s=361.0))]
    assert not demo_seeds.aggregate(rows)["targets"]["time"]
