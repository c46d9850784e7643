"""The experiments' own arithmetic (benchmarks/hybrid_vs_offline.py, label_noise.py):
label construction per loss, and the paired statistics behind the README verdicts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import hybrid_vs_offline as hvo  # noqa: E402
import label_noise as ln  # noqa: E402
from alignloop.labeling.aggregate import Vote  # noqa: E402


def _pairs(n):
    return [{"key": f"k{i}", "prompt": [{"role": "user", "content": f"q{i}"}], "slice": "s",
             "a": f"answer a {i}", "b": f"answer b {i}"} for i in range(n)]


def _ballots(pattern: dict[str, str]):
    return [Vote(k, f"ann{j}", c) for k, votes in pattern.items() for j, c in enumerate(votes)]


def test_labels_per_loss():
    pairs = _pairs(3)
    ballots = _ballots({"k0": "aaa", "k1": "abb", "k2": "bba"})
    hard, eps = ln.labeled_rows(pairs, ballots, "sigmoid")
    soft, _ = ln.labeled_rows(pairs, ballots, "soft")
    chosen = [r["chosen"][0]["content"] for r in hard]
    assert chosen == ["answer a 0", "answer b 1", "answer b 2"]      # majorities
    assert all(r["p_chosen"] == 1.0 for r in hard)
    # soft labels: a unanimous pair is surer than a 2-1 pair, and never certain
    assert 0.5 < soft[1]["p_chosen"] < soft[0]["p_chosen"] < 1.0
    # the estimated flip rate of the majority labels is the mean posterior they are wrong
    assert eps == pytest.approx(sum(1 - r["p_chosen"] for r in soft) / 3, abs=1e-3)


def test_flip_conditions_are_nested_and_flip_at_their_rate():
    pairs = _pairs(400)

    class FixedPanel:  # every annotator prefers a: flips are the only source of "b"
        def __init__(self, *_):
            pass

        def vote(self, *_args):
            return "a"

    import alignloop.demo.panel as panel_mod

    real = panel_mod.Panel
    panel_mod.Panel = FixedPanel
    try:
        clean, f20, f40 = (ln.votes(pairs, c, seed=3) for c in ("clean", "flip20", "flip40"))
    finally:
        panel_mod.Panel = real
    assert all(v.choice == "a" for v in clean)
    share = lambda vs: sum(v.choice == "b" for v in vs) / len(vs)  # noqa: E731
    assert share(f20) == pytest.approx(0.2, abs=0.03)
    assert share(f40) == pytest.approx(0.4, abs=0.03)
    assert all(b.choice == "b" for a, b in zip(f20, f40, strict=True) if a.choice == "b")


def test_heldout_pairs_follow_the_truth_and_skip_near_ties():
    cands = {"heldout": [{"prompt": "p", "texts": ["w", "x", "y"], "truth": [1.0, 0.95, 0.2]}]}
    pairs = ln.heldout_pairs(cands)
    assert {(p["chosen"], p["rejected"]) for p in pairs} == {("w", "y"), ("x", "y")}


def test_keep_is_the_ratio_of_mean_gains():
    clean = {"prompt_ids": ["a", "b", "c", "d"], "gains": [0.4, 0.6, 0.5, 0.5]}
    noisy = {"prompt_ids": ["a", "b", "c", "d"], "gains": [0.2, 0.3, 0.25, 0.25]}
    k = ln.keep(clean, noisy)
    assert k["value"] == pytest.approx(0.5)
    assert k["lo"] <= 0.5 <= k["hi"]


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


def test_noise_table_and_plot_from_results(tmp_path):
    size = dict(ln.SIZES["full"])
    est = lambda v: {"value": v, "lo": v - 0.1, "hi": v + 0.1, "n": 4}  # noqa: E731
    kept = {"clean": 1.0, "flip20": 0.8, "flip40": None, "disagree": 0.7}
    results = {}
    for cond in size["conditions"]:
        for loss in ln.LOSSES:
            f = kept[cond] if kept[cond] is not None else (0.3 if loss == "sigmoid" else 0.8)
            gains = [0.4 * f] * 4
            results[f"{cond}/{loss}"] = [{"gains": gains, "prompt_ids": list("abcd"),
                                          "gain": est(gains[0]), "kl": est(2.0),
                                          "gain_per_kl": gains[0] / 2.0,
                                          "heldout_accuracy": est(0.7)}]
    md, summary = ln.table(results, size, "full", 100, 200)
    assert summary["target_met"] and summary["kept_hard"] == pytest.approx(0.3)
    assert "**met**" in md and "flip40 | soft" in md
    assert all(line.startswith("| ") for line in md.split("\n")[2:14])   # one row per run
    assert summary["kept_per_kl"]["flip40/sigmoid"] == pytest.approx(0.3)
    ln.plot(results, size, tmp_path / "noise.png")
    assert (tmp_path / "noise.png").stat().st_size > 1000


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
