"""The experiments' own arithmetic (benchmarks/hybrid_vs_offline.py, reward_kl_frontier.py):
the paired statistics behind the README verdicts (label_noise.py: test_bench_label_noise.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import hybrid_vs_offline as hvo  # noqa: E402


def _seed(seed, diff, kl_off, kl_hyb, n=30):
    rows = [{"seed": seed, "prompt_id": f"p{i}", "slice": "hard" if i % 2 else "easy",
             "failing": bool(i % 2), "base": 0.5, "offline": 0.8 + 0.01 * (i % 5),
             "hybrid": 0.8 + 0.01 * (i % 5) + (diff if i % 2 else 0.0)} for i in range(n)]
    return {"seed": seed, "rows": rows, "failing_slices": ["hard"],
            "kl": {"offline": {"value": kl_off}, "hybrid": {"value": kl_hyb}},
            "labels": {"offline": {"static": 64}, "hybrid": {"static": 32, "human": 32}}}


def _summary(seeds):
    return hvo.summarise(seeds, hybrids=("hybrid",), offline=("offline",))


def test_hybrid_verdict_needs_a_gain_and_no_more_kl():
    seeds = [_seed(s, 0.2, 5.0, 4.0) for s in range(3)]
    better = _summary(seeds)
    vs = better["failing"]["vs"]["hybrid|offline"]
    assert vs["diff"]["value"] == pytest.approx(0.2) and vs["diff"]["lo"] > 0
    assert vs["win"]["value"] == pytest.approx(1.0)
    assert better["overall"]["vs"]["hybrid|offline"]["diff"]["value"] == pytest.approx(0.1)
    assert better["target_met"] == {"hybrid": True}
    assert not _summary([_seed(s, 0.2, 4.0, 5.0) for s in range(3)])["target_met"]["hybrid"]
    assert not _summary([_seed(s, 0.0, 5.0, 4.0) for s in range(3)])["target_met"]["hybrid"]
    md = hvo.table(seeds, better, "full", hvo.SIZES["full"])
    assert md.count("**met**") == 1 and "offline arms with at least its KL (4.00): offline" in md


def test_hybrid_is_judged_against_the_offline_arms_with_at_least_its_kl():
    seeds = [_seed(s, 0.2, 2.0, 4.0) for s in range(3)]
    for s in seeds:              # a hotter offline arm: more KL, and the hybrid still wins
        s["kl"]["offline_lr3"] = {"value": 6.0}
        for r in s["rows"]:
            r["offline_lr3"] = r["offline"] + 0.05
    both = hvo.summarise(seeds, hybrids=("hybrid",), offline=("offline", "offline_lr3"))
    assert both["matched_by"]["hybrid"] == ["offline_lr3"] and both["target_met"]["hybrid"]
    for s in seeds:              # ... unless it beats the hybrid on the failure slices
        for r in s["rows"]:
            r["offline_lr3"] = r["hybrid"] + (0.3 if r["failing"] else 0.0)
    assert not hvo.summarise(seeds, hybrids=("hybrid",),
                             offline=("offline", "offline_lr3"))["target_met"]["hybrid"]


def test_an_arm_missing_from_a_seed_is_summarised_over_the_seeds_it_ran():
    seeds = [_seed(s, 0.2, 5.0, 4.0) for s in range(3)]
    for s in seeds[:2]:
        s["kl"]["hybrid_base"] = {"value": 3.0}
        for r in s["rows"]:
            r["hybrid_base"] = r["offline"] + 0.1
    out = hvo.summarise(seeds, hybrids=("hybrid", "hybrid_base"), offline=("offline",))
    assert out["kl"]["hybrid_base"]["n"] == 2 and out["kl"]["hybrid"]["n"] == 3
    vs = out["overall"]["vs"]["hybrid_base|offline"]
    assert vs["seeds"] == 2 and vs["diff"]["value"] == pytest.approx(0.1)
    assert out["target_met"] == {"hybrid": True, "hybrid_base": True}
    assert "| - |" not in hvo.table(seeds, out, "full", hvo.SIZES["full"]).split("\n")[0]


def _frontier_points(arm, kl_reward, seeds=(0, 1), prompts=6, shift=0.0):
    """Points of one arm: for each (beta, steps, KL, reward) a point per seed whose per-prompt
    rewards average to `reward` (+ a small seed offset), all prompts in slice "bad"."""
    import reward_kl_frontier as fr  # noqa: F401

    out = []
    for beta, steps, kl, reward in kl_reward:
        for s in seeds:
            rewards = {f"q{i}": reward + shift + 0.01 * s + 0.02 * (i % 3 - 1) for i in range(prompts)}
            out.append({"arm": arm, "beta": beta, "steps": steps, "seed": s, "round": 0, "kl": kl,
                        "chosen_slices": ["bad"] if arm == "hybrid" else [],
                        "reward": rewards, "slice": {p: "bad" for p in rewards}})
    return out


def test_staircase_is_the_best_reward_at_no_more_kl():
    import reward_kl_frontier as fr

    rows = [{"kl": 1.0, "r": 0.5}, {"kl": 2.0, "r": 0.4}, {"kl": 3.0, "r": 0.9}, {"kl": 0.5, "r": 0.2}]
    stair = fr.staircase(rows, key="r")
    assert stair == [(0.5, 0.2), (1.0, 0.5), (3.0, 0.9)]      # the dominated point drops out
    assert fr.frontier_at(stair, 2.5) == 0.5 and fr.frontier_at(stair, 3.0) == 0.9
    assert fr.frontier_at(stair, 0.1) != fr.frontier_at(stair, 0.1)   # NaN below the first point


def test_frontier_comparison_pairs_the_offline_best_with_the_hybrid_at_no_more_kl():
    import reward_kl_frontier as fr

    points = (_frontier_points("offline", [(0.1, 2, 1.0, 0.50), (0.1, 4, 2.0, 0.60), (0.1, 6, 3.0, 0.55)])
              + _frontier_points("hybrid", [(0.1, 2, 1.2, 0.70), (0.1, 4, 1.8, 0.80), (0.1, 6, 4.0, 0.95)]))
    failing = fr.failing_slices(points, 0.1)
    assert failing == {0: {"bad"}, 1: {"bad"}}
    rows = fr.config_means(points, failing)
    c = fr.compare(rows, "hybrid")
    assert c["offline_best"]["kl"] == 2.0
    assert c["matched"]["kl"] == 1.8                           # best hybrid point with KL <= 2.0
    assert c["diff"]["value"] == pytest.approx(0.20) and c["diff"]["lo"] > 0
    assert c["n_pairs"] == 12 and c["above_everywhere"] and fr.verdict(c)
    assert c["kl_range"] == [1.2, 3.0]

    # an offline arm that is better at low KL: the frontier is not above everywhere
    points += _frontier_points("offline", [(0.3, 2, 1.1, 0.75)])
    c = fr.compare(fr.config_means(points, failing), "hybrid")
    assert c["offline_wins_at"] and not c["above_everywhere"] and not fr.verdict(c)


def test_frontier_target_fails_without_a_hybrid_point_at_or_below_offlines_kl():
    import reward_kl_frontier as fr

    points = (_frontier_points("offline", [(0.1, 6, 1.0, 0.5)])
              + _frontier_points("hybrid", [(0.1, 6, 5.0, 0.9)]))
    rows = fr.config_means(points, fr.failing_slices(points, 0.1))
    c = fr.compare(rows, "hybrid")
    assert c["matched"] is None and not fr.verdict(c)
    assert "Target: **not met**" in fr.table(rows, {"hybrid": c}, "smoke")


def _saved_file(tmp_path, points, **meta):
    import json

    import reward_kl_frontier as fr

    meta = {**{k: fr.SIZES["full"][k] for k in fr.SWEEP_KEYS}, "machine": "Intel Xeon, 2 cores",
            "date": "2026-12-04", **meta}
    path = tmp_path / "reward_kl_frontier.json"
    path.write_text(json.dumps({"meta": meta, "results": {"points": points}}))
    return path


def test_saved_runs_join_a_sweep_by_seed_and_beta_and_say_where_they_were_measured(tmp_path):
    import reward_kl_frontier as fr

    size = dict(fr.SIZES["full"], betas=[0.1, 0.3])
    points = (_frontier_points("offline", [(0.1, 8, 1.0, 0.5), (0.3, 8, 0.8, 0.4)], seeds=(0,))
              + _frontier_points("offline", [(0.1, 8, 1.0, 0.5), (1.0, 8, 0.5, 0.3)], seeds=(1,)))
    saved = fr.saved_points(_saved_file(tmp_path, points), size)
    # seed 1 lacks beta 0.3: its beta-0.1 runs are taken and only 0.3 runs here; its
    # beta-1.0 point is left out, as 1.0 is not in this sweep
    assert sorted(saved) == [0, 1] and {p["beta"] for p in saved[0]} == {0.1, 0.3}
    assert {p["beta"] for p in saved[1]} == {0.1}
    assert fr.missing_betas(size, saved[0]) == [] and fr.missing_betas(size, saved[1]) == [0.3]
    assert fr.missing_betas(size, []) == [0.1, 0.3]
    assert {p["measured"] for p in saved[0]} == {"Intel Xeon, 2 cores; 2026-12-04"}

    # a second file adds what the first lacks, and never replaces what the first has
    later = [{**p, "kl": 9.0} for p in _frontier_points("offline", [(0.1, 8, 1.0, 0.5), (0.3, 8, 0.7, 0.6)],
                                                         seeds=(1,))]
    other = tmp_path / "other"
    other.mkdir()
    merged = fr.merge_saved([saved, fr.saved_points(_saved_file(other, later, date="2026-12-08"), size)])
    assert fr.missing_betas(size, merged[1]) == []
    assert [p["kl"] for p in merged[1] if p["beta"] == 0.1] == [p["kl"] for p in saved[1]]
    assert {p["measured"] for p in merged[1] if p["beta"] == 0.3} == {"Intel Xeon, 2 cores; 2026-12-08"}

    here = [{**p, "seed": 3, "measured": "AMD EPYC, 2 cores; 2026-12-05"} for p in saved[0]]
    where = fr.provenance(saved[0] + [{**p, "seed": s} for s in (1, 2) for p in saved[0]] + here)
    assert where == [{"seeds": [0, 1, 2], "by": "Intel Xeon, 2 cores; 2026-12-04"},
                     {"seeds": [3], "by": "AMD EPYC, 2 cores; 2026-12-05"}]
    text = fr.measured_text(where)
    assert text == "seeds 0-2: Intel Xeon, 2 cores; 2026-12-04; seed 3: AMD EPYC, 2 cores; 2026-12-05"
    assert fr.measured_text(where[:1]) == "Intel Xeon, 2 cores; 2026-12-04"


def test_a_saved_result_of_another_sweep_is_refused_by_the_setting_that_differs(tmp_path):
    import reward_kl_frontier as fr

    size = dict(fr.SIZES["full"], betas=[0.1])
    with pytest.raises(ValueError, match="max_new_tokens = 64, this sweep has 32"):
        fr.saved_points(_saved_file(tmp_path, [], max_new_tokens=64), size)
    (tmp_path / "junk.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="junk.json: not a reward_kl_frontier results file"):
        fr.saved_points(tmp_path / "junk.json", size)


def test_a_sweep_runs_only_the_betas_its_saved_seeds_lack():
    import reward_kl_frontier as fr

    size = dict(fr.SIZES["full"], seeds=3, betas=[0.1, 0.3, 1.0])
    saved = {0: _frontier_points("offline", [(0.1, 8, 1.0, 0.5), (0.3, 8, 0.8, 0.4), (1.0, 8, 0.5, 0.3)],
                                 seeds=(0,)),
             1: _frontier_points("hybrid", [(0.3, 8, 0.8, 0.4)], seeds=(1,))}
    calls = []

    def run(seed, sz):
        calls.append((seed, sz["betas"]))
        return [p for b in sz["betas"] for p in
                _frontier_points("hybrid", [(b, 16, 2.0, 0.6)], seeds=(seed,))
                + _frontier_points("offline", [(b, 8, 1.0, 0.5)], seeds=(seed,))]

    points = fr.collect_points(size, saved, run)
    assert calls == [(1, [0.1, 1.0]), (2, [0.1, 0.3, 1.0])]      # seed 0 is whole: not run
    seed1 = [(p["beta"], p["arm"]) for p in points if p["seed"] == 1]
    assert seed1 == [(0.1, "offline"), (0.1, "hybrid"), (0.3, "hybrid"), (1.0, "offline"), (1.0, "hybrid")]
