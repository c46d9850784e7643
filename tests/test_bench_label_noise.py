"""benchmarks/label_noise.py: labels per loss, nested votes and pair pool, the two-stage
bootstrap and the target check, the run cache, refused arguments, and the smoke size end
to end on the real loop (random 2-layer model) with byte-identical results per seed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import common  # noqa: E402
import label_noise as ln  # noqa: E402
import label_noise_runs as lr  # noqa: E402
import label_noise_stats as st  # noqa: E402
from alignloop.labeling.aggregate import Vote  # noqa: E402


def _pairs(n, truth=None):
    return [{"key": f"k{i}", "prompt": [{"role": "user", "content": f"q{i}"}], "slice": "s",
             "a": f"answer a {i}", "b": f"answer b {i}",
             "truth_a": (truth or [1.0] * n)[i], "truth_b": 0.5} for i in range(n)]


def _ballots(pattern: dict[str, str]):
    return [Vote(k, f"ann{j}", c) for k, votes in pattern.items() for j, c in enumerate(votes)]


def test_labels_per_loss_and_both_flip_rates():
    pairs = _pairs(3, truth=[1.0, 1.0, 0.0])          # truth: a, a, b
    ballots = _ballots({"k0": "aaa", "k1": "abb", "k2": "bba"})
    hard, eps = ln.labeled_rows(pairs, ballots, "sigmoid")
    soft, _ = ln.labeled_rows(pairs, ballots, "soft")
    assert [r["chosen"][0]["content"] for r in hard] == ["answer a 0", "answer b 1", "answer b 2"]
    assert all(r["p_chosen"] == 1.0 for r in hard)
    # soft labels: a unanimous pair is surer than a 2-1 pair, and never certain
    assert 0.5 < soft[1]["p_chosen"] < soft[0]["p_chosen"] < 1.0
    # estimated: the mean posterior that the majority is wrong
    assert eps == pytest.approx(sum(1 - r["p_chosen"] for r in soft) / 3, abs=1e-3)
    # true: one majority of three (k1 says b, the truth says a) is wrong
    assert ln.true_flip_rate(pairs, ballots) == pytest.approx(1 / 3)
    assert ln.true_flip_rate(pairs, _ballots({"k0": "bbb", "k1": "bbb", "k2": "aaa"})) == ln.MAX_FLIP_RATE


def test_votes_are_nested_in_flip_rate_and_data_size(monkeypatch):
    import alignloop.demo.panel as panel_mod

    class FixedPanel:  # every annotator prefers a: flips are the only source of "b"
        def __init__(self, *_):
            pass

        def vote(self, *_args):
            return "a"

    monkeypatch.setattr(panel_mod, "Panel", FixedPanel)
    pairs = _pairs(400)
    clean, f20, f40 = (ln.votes(pairs, c, seed=3) for c in ("clean", "flip20", "flip40"))
    assert all(v.choice == "a" for v in clean)
    share = lambda vs: sum(v.choice == "b" for v in vs) / len(vs)  # noqa: E731
    assert share(f20) == pytest.approx(0.2, abs=0.03)
    assert share(f40) == pytest.approx(0.4, abs=0.03)
    assert all(b.choice == "b" for a, b in zip(f20, f40, strict=True) if a.choice == "b")
    # a smaller data size gets the same votes on its pairs; another seed other votes
    assert ln.votes(pairs[:50], "flip40", seed=3) == f40[:150]
    assert ln.votes(pairs, "flip40", seed=4) != f40


def test_gold_flip_rate_measures_the_majority_against_the_truth(monkeypatch):
    import alignloop.demo.panel as panel_mod

    truth = [float(i % 3 == 0) for i in range(600)]   # a better on a third, b on the rest
    train = _pairs(600, truth)
    gold = [dict(p, key=f"g{i}") for i, p in enumerate(_pairs(300, truth[:300]))]
    better = {p["a"]: "a" if p["truth_a"] > p["truth_b"] else "b" for p in train}

    class Coin:  # each vote right with probability 0.65, drawn from the pair's own generator
        def __init__(self, *_):
            pass

        def vote(self, prompt, a, b, who, rng):
            worse = "b" if better[a] == "a" else "a"
            return better[a] if rng.random() < 0.65 else worse

    monkeypatch.setattr(panel_mod, "Panel", Coin)
    ballots = ln.votes(train, "clean", seed=1)
    true = ln.true_flip_rate(train, ballots)          # ~ 3 x 0.35^2 x 0.65 + 0.35^3 = 0.28
    _, from_posteriors = ln.labeled_rows(train, ballots, "rdpo")
    eps, info = ln.gold_flip_rate(train, ballots, gold, "clean", seed=1)
    assert info["gold_items"] == 300 and info["gold_votes"] == 900 and not info["gold_note"]
    assert abs(eps - true) < 0.04 < abs(from_posteriors - true)
    assert ln.gold_flip_rate(train, ballots, gold, "clean", seed=1) == (eps, info)


def test_pair_pool_lists_tier_0_before_tier_1_and_keeps_the_truth_with_its_text():
    cands = {"train": [{"prompt_id": f"p{i}", "prompt": f"q{i}", "slice": "s",
                        "texts": [f"worst {i}", f"low {i}", f"high {i}", f"best {i}"],
                        "truth": [0.0, 0.1, 0.2, 0.3], "judge": [0.0, 1.0, 2.0, 3.0]}
                       for i in range(5)]}
    pool = lr.pair_pool(cands)
    assert [p["key"] for p in pool] == [f"p{i}/0" for i in range(5)] + [f"p{i}/1" for i in range(5)]
    for p in pool:
        assert {p["a"].split()[0], p["b"].split()[0]} == (
            {"best", "worst"} if p["key"].endswith("/0") else {"high", "low"})
        text_truth = {"worst": 0.0, "low": 0.1, "high": 0.2, "best": 0.3}
        assert p["truth_a"] == text_truth[p["a"].split()[0]]
        assert p["truth_b"] == text_truth[p["b"].split()[0]]
    assert {p["a"].startswith("best") for p in pool if p["key"].endswith("/0")} == {True, False}


def test_heldout_pairs_follow_the_truth_and_skip_near_ties():
    cands = {"heldout": [{"prompt": "p", "texts": ["w", "x", "y"], "truth": [1.0, 0.95, 0.2]}]}
    assert {(p["chosen"], p["rejected"]) for p in lr.heldout_pairs(cands)} == {("w", "y"), ("x", "y")}


def test_kept_share_is_paired_and_its_interval_covers_seeds_and_prompts():
    rng = np.random.default_rng(1)
    clean = 0.4 + 0.3 * rng.standard_normal((3, 60))
    noisy = 0.5 * clean                                   # paired: the ratio is exactly 0.5
    k = st.kept_share(clean, noisy)
    assert k["value"] == pytest.approx(0.5) and k["lo"] == pytest.approx(0.5) == k["hi"]
    unpaired = st.kept_share(clean, 0.5 * clean[:, ::-1] + 0.2 * rng.standard_normal((3, 60)))
    assert unpaired["hi"] - unpaired["lo"] > 0.05
    # a seed that went its own way widens the gain interval (seed stage of the bootstrap)
    flat = np.full((3, 60), 0.3)
    assert st.mean_interval(flat)["hi"] - st.mean_interval(flat)["lo"] < 1e-12
    off = flat.copy()
    off[2] += 0.3
    wide = st.mean_interval(off)
    assert wide["lo"] <= 0.3 + 1e-9 and wide["hi"] >= 0.6 - 1e-9


def _rows(kept: dict[str, tuple[float, float, float]], size=480):
    rows = []
    for loss, (v, lo, hi) in kept.items():
        for cond in ("clean", "flip40"):
            rows.append({"pairs": size, "condition": cond, "loss": loss, "seeds": 3,
                         "gain": {"value": 0.3, "lo": 0.2, "hi": 0.4}, "kl": {"value": 3.0, "lo": 2.5, "hi": 3.5},
                         "gain_per_nat": 0.1, "flip_rate": 0.3, "accuracy": 0.6,
                         "kept": None if cond == "clean" else {"value": v, "lo": lo, "hi": hi}})
    return rows


@pytest.mark.parametrize("kept, met, best", [
    ({"sigmoid": (0.3, 0.1, 0.5), "soft": (0.8, 0.6, 1.0), "rdpo": (0.5, 0.3, 0.7)}, True, "soft"),
    # rdpo passes although soft keeps more: soft's interval overlaps sigmoid's
    ({"sigmoid": (0.3, 0.1, 0.5), "soft": (0.9, 0.4, 1.4), "rdpo": (0.75, 0.55, 0.95)}, True, "rdpo"),
    ({"sigmoid": (0.3, 0.1, 0.5), "soft": (0.69, 0.6, 0.8), "rdpo": (0.5, 0.3, 0.7)}, False, "soft"),
    ({"sigmoid": (0.6, 0.4, 0.8), "soft": (0.9, 0.7, 1.1), "rdpo": (0.5, 0.3, 0.7)}, False, "soft"),
])
def test_target_check(kept, met, best):
    rows = _rows({**kept, "rdpo_true": (0.95, 0.9, 1.0)})   # the control never counts
    rows += _rows({"sigmoid": (0.0, -1, 0), "soft": (1.0, 0.9, 1.1), "rdpo": (1, 0.9, 1.1)}, size=120)
    check = st.target_check(rows, 480)
    assert check["met"] is met and check["best_robust"] == best and check["pairs"] == 480
    md = st.table(rows, check)
    assert md.count("**met**" if met else "**not met**") == 1
    assert f"{best} keeps {kept[best][0]:.2f}" in md and "480 pairs" in md


@pytest.mark.parametrize("size", [s for s in ln.SIZES if "flip40" in ln.SIZES[s]["conditions"]])
def test_every_size_with_40pct_flips_can_be_checked_against_the_target(size):
    spec = ln.SIZES[size]
    losses = spec.get("losses", ln.LOSSES)
    assert "clean" in spec["conditions"] and "sigmoid" in losses
    assert set(losses) & set(st.ROBUST), f"{size}: no robust loss to hold against sigmoid"


def test_sweep_runs_the_largest_data_size_first_and_skips_cached_cells(tmp_path, monkeypatch):
    """The target is read at the largest size, so a sweep stopped early has it; then the
    smaller sizes seed by seed, so it also has the data-size axis at its first seeds."""
    spec = {**ln.SIZES["smoke"], "pairs": (4, 8, 6), "seeds": 2}
    cache = lr.RunCache(tmp_path / "r.json", "smoke", spec, tmp_path / "w")
    cache.put(8, 0, "clean", "sigmoid", {"gains": [0.1]})
    ran = []
    monkeypatch.setattr(ln, "candidates", lambda spec, work: {})
    monkeypatch.setattr(ln, "pair_pool", lambda cands: _pairs(8))
    monkeypatch.setattr(ln, "heldout_pairs", lambda cands: [])
    monkeypatch.setattr(ln, "votes", lambda pairs, cond, seed: [])
    monkeypatch.setattr(ln, "labeled_rows", lambda pairs, ballots, loss: ([], 0.1))
    monkeypatch.setattr(ln, "write_rows", lambda path, rows: path)
    monkeypatch.setattr(ln, "run_loop", lambda cfg, run_dir: ran.append(run_dir))
    monkeypatch.setattr(ln, "run_config", lambda *a: None)
    monkeypatch.setattr(ln, "measure", lambda *a: {"gains": [0.0]})
    monkeypatch.setattr(ln, "provenance", lambda *a: {})
    ln.sweep(spec, "smoke", tmp_path / "w", cache, ("clean", "flip40"), ("sigmoid", "rdpo"))
    order = list(dict.fromkeys((int(d.parts[-3][1:]), int(d.parts[-2][4:])) for d in ran))
    assert order == [(8, 0), (8, 1), (6, 0), (4, 0), (6, 1), (4, 1)]
    assert len(ran) == 3 * 2 * 2 * 2 - 1
    assert tmp_path / "w" / "n8" / "seed0" / "clean-sigmoid" not in ran
    # all cached (e.g. a call for the tables only): no run and no base-model pass
    monkeypatch.setattr(ln, "heldout_pairs", lambda cands: pytest.fail("base pass with nothing to run"))
    ln.sweep(spec, "smoke", tmp_path / "w", cache, ("clean", "flip40"), ("sigmoid", "rdpo"))
    assert len(ran) == 3 * 2 * 2 * 2 - 1


def test_run_cache_resumes_and_refuses_other_settings(tmp_path):
    spec = dict(ln.SIZES["smoke"])
    cache = lr.RunCache(tmp_path / "r.json", "smoke", spec, tmp_path / "w")
    assert not (tmp_path / "r.json").exists()
    cache.put(4, 0, "clean", "soft", {"gains": [0.1]})
    again = lr.RunCache(tmp_path / "r.json", "smoke", spec, tmp_path / "w")
    assert again.has(4, 0, "clean", "soft") and not again.has(8, 0, "clean", "soft")
    with pytest.raises(SystemExit, match="other 'smoke' settings"):
        lr.RunCache(tmp_path / "r.json", "smoke", {**spec, "epochs": 3}, tmp_path / "w")



def test_run_cache_takes_added_data_sizes_and_seeds_and_keeps_their_runs(tmp_path):
    spec = dict(ln.SIZES["smoke"])
    lr.RunCache(tmp_path / "r.json", "smoke", spec, tmp_path / "w").put(8, 0, "clean", "rdpo", {})
    grown = lr.RunCache(tmp_path / "r.json", "smoke", {**spec, "pairs": (2, 4, 8), "seeds": 3},
                        tmp_path / "w")
    assert grown.has(8, 0, "clean", "rdpo")
    grown.put(2, 2, "clean", "rdpo", {})
    stored = json.loads((tmp_path / "r.json").read_text())
    assert stored["spec"]["pairs"] == [2, 4, 8] and stored["spec"]["seeds"] == 3
    assert set(stored["runs"]) == {"8/0/clean/rdpo", "2/2/clean/rdpo"}
    with pytest.raises(SystemExit, match="other 'smoke' settings"):    # not the epochs
        lr.RunCache(tmp_path / "r.json", "smoke", {**spec, "pairs": (2, 4, 8), "seeds": 3,
                                                    "epochs": 2}, tmp_path / "w")


def test_partial_tables_use_the_seeds_each_size_has_complete(tmp_path, capsys):
    spec = {**ln.SIZES["smoke"], "seeds": 2}
    ids = [f"p{i}" for i in range(spec["eval_prompts"])]
    out, work = tmp_path / "out", tmp_path / "work"
    cache = lr.RunCache(out / "label_noise.partial_test.runs.json", "partial_test", spec,
                        work / "partial_test")
    for n, seeds in ((8, (0, 1)), (4, (0,))):
        for seed in seeds:
            for cond in spec["conditions"]:
                for loss in spec["losses"]:
                    cache.put(n, seed, cond, loss, {
                        "prompt_ids": ids, "gains": [0.3 if cond == "clean" else 0.1] * 3,
                        "kls": [1.0] * 3, "flip_rate": 0.2, "accuracy": 0.6})
    cache.put(4, 1, "clean", "sigmoid", {})                # seed 1 at size 4 is unfinished
    ln.SIZES["partial_test"] = spec              # a size of its own: --size checks the name
    try:
        ln.main(["--size", "partial_test", "--partial", "--out", str(out), "--work", str(work)])
    finally:
        del ln.SIZES["partial_test"]
    data = json.loads((out / "label_noise.partial_test.json").read_text())
    seeds = {(r["pairs"], r["condition"], r["loss"]): r["seeds"] for r in data["results"]}
    assert {s for (n, _, _), s in seeds.items() if n == 8} == {2}
    assert {s for (n, _, _), s in seeds.items() if n == 4} == {1}
    md = (out / "label_noise.partial_test.md").read_text()
    assert "| 4 | 1 | flip40 |" in md and "seeds 1 at 4, 2 at 8 (of 2: a partial table" in md
    assert "--partial" in md and "Target (at 40% flips" in md
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        ln.main(["--size", "smoke", "--partial", "--losses", "rdpo", "--out", str(out),
                 "--work", str(work)])
    assert e.value.code == 2 and "--partial" in capsys.readouterr().err


def test_partial_rows_take_each_cells_seeds_and_pair_kept_shares_by_seed(tmp_path, capsys):
    """Seeds added for some cells only (`--conditions clean,flip40 --losses sigmoid` at seed
    1): each row has the seeds at which it and its clean control finished, and a kept share
    divides by the clean runs of the same seeds only."""
    spec = {**ln.SIZES["smoke"], "pairs": (8,), "seeds": 3}
    ids = [f"p{i}" for i in range(spec["eval_prompts"])]
    out, work = tmp_path / "out", tmp_path / "work"
    cache = lr.RunCache(out / "label_noise.cells_test.runs.json", "cells_test", spec,
                        work / "cells_test")
    gains = {(0, "clean", "sigmoid"): 0.4, (0, "flip40", "sigmoid"): 0.2,
             (1, "clean", "sigmoid"): 0.2, (1, "flip40", "sigmoid"): 0.2,
             (0, "clean", "rdpo"): 0.4, (0, "flip40", "rdpo"): 0.1,
             (1, "clean", "rdpo"): 0.8}          # rdpo's seed 1 has no noisy partner yet
    for (seed, cond, loss), g in gains.items():
        cache.put(8, seed, cond, loss, {"prompt_ids": ids, "gains": [g] * 3, "kls": [1.0] * 3,
                                        "flip_rate": 0.2})
    ln.SIZES["cells_test"] = spec
    try:
        ln.main(["--size", "cells_test", "--partial", "--out", str(out), "--work", str(work),
                 "--no-readme"])
    finally:
        del ln.SIZES["cells_test"]
    capsys.readouterr()
    rows = {(r["condition"], r["loss"]): r
            for r in json.loads((out / "label_noise.cells_test.json").read_text())["results"]}
    assert {k: r["seeds"] for k, r in rows.items()} == {
        ("clean", "sigmoid"): 2, ("flip40", "sigmoid"): 2, ("clean", "rdpo"): 1,
        ("flip40", "rdpo"): 1}
    assert rows["flip40", "sigmoid"]["kept"]["value"] == pytest.approx(0.4 / 0.6)
    assert rows["flip40", "rdpo"]["kept"]["value"] == pytest.approx(0.25)    # not 0.1 / 0.6
    assert rows["clean", "rdpo"]["gain"]["value"] == pytest.approx(0.4)
    md = (out / "label_noise.cells_test.md").read_text()
    assert "seeds per row as in the seeds column" in md and "(of 3: a partial table" in md


def test_a_loss_outside_the_sweep_gets_rows_where_it_finished(tmp_path, capsys):
    """`--losses soft` on a size that sweeps sigmoid and rdpo: soft's finished seeds at the
    largest size join the table and the target check; the other sizes keep their rows."""
    spec = {**ln.SIZES["smoke"], "seeds": 2}
    ids = [f"p{i}" for i in range(spec["eval_prompts"])]
    out, work = tmp_path / "out", tmp_path / "work"
    cache = lr.RunCache(out / "label_noise.extra_test.runs.json", "extra_test", spec,
                        work / "extra_test")
    gains = {"clean": 0.4, "flip40": 0.1}
    for n in spec["pairs"]:
        for seed in range(2):
            for cond in spec["conditions"]:
                for loss in spec["losses"]:
                    cache.put(n, seed, cond, loss, {"prompt_ids": ids, "gains": [gains[cond]] * 3,
                                                    "kls": [1.0] * 3, "flip_rate": 0.2})
    for seed in range(2):     # soft keeps 0.35 / 0.4 of its clean gain, at 8 pairs only
        for cond in spec["conditions"]:
            cache.put(8, seed, cond, "soft", {"prompt_ids": ids, "gains": [0.35 if cond == "flip40"
                                                                           else 0.4] * 3,
                                              "kls": [1.0] * 3, "flip_rate": 0.0,
                                              "precision": "fp32", "candidates": "c0ffee"})
    cache.put(4, 0, "clean", "soft", {"prompt_ids": ids, "gains": [0.4] * 3, "kls": [1.0] * 3,
                                      "flip_rate": 0.0})          # no flip40 run: no row at 4
    ln.SIZES["extra_test"] = spec
    try:
        ln.main(["--size", "extra_test", "--out", str(out), "--work", str(work), "--no-readme"])
    finally:
        del ln.SIZES["extra_test"]
    capsys.readouterr()
    data = json.loads((out / "label_noise.extra_test.json").read_text())
    cells = {(r["pairs"], r["condition"], r["loss"]): r for r in data["results"]}
    assert {k for k in cells if k[2] == "soft"} == {(8, "clean", "soft"), (8, "flip40", "soft")}
    assert {(n, loss) for n, _, loss in cells} >= {(4, "sigmoid"), (4, "rdpo"), (8, "sigmoid")}
    assert cells[8, "flip40", "soft"]["kept"]["value"] == pytest.approx(0.875)
    meta = data["meta"]
    assert meta["losses"] == ["sigmoid", "rdpo", "soft"] and meta["best_robust"] == "soft"
    md = (out / "label_noise.extra_test.md").read_text()
    assert "`soft` is outside this size's sweep" in md and "2 at 8 pairs" in md
    # soft ran later, elsewhere: the footer says its runs rest on other candidates
    assert ("(`sigmoid`, `rdpo`: precision and candidates not recorded; `soft`: fp32, "
            "candidates c0ffee)") in md and "its kept share is paired" in md


def test_provenance_is_read_off_the_run_and_a_mixed_table_says_so(tmp_path):
    run_dir = tmp_path / "n8" / "seed0" / "clean-soft"
    run_dir.mkdir(parents=True)
    (run_dir / "state.json").write_text(json.dumps(
        {"rounds": {"0": {"placement": {"device": "cpu", "precision": "bf16-mixed"}}}}))
    (tmp_path / lr.CANDIDATES).write_text('{"spec": {}}')
    got = lr.provenance(run_dir, tmp_path)
    assert got["precision"] == "bf16-mixed" and len(got["candidates"]) == 12
    (tmp_path / lr.CANDIDATES).write_text('{"spec": {"other": 1}}')
    assert lr.provenance(run_dir, tmp_path)["candidates"] != got["candidates"]
    same = {"precision": "fp32", "candidates": "a"}
    runs = {(8, "clean", "sigmoid"): [same], (8, "flip40", "sigmoid"): [same]}
    assert ln.provenance_note(runs) == ""
    runs[8, "flip40", "sigmoid"] = [{"precision": "bf16-mixed", "candidates": "b"}]
    note = ln.provenance_note(runs)
    assert "bf16-mixed, candidates b" in note and "`sigmoid` mixes them within the loss" in note
    assert got["machine"] == common.machine() and got["date"] == common.today()


def test_the_footer_names_the_machines_and_days_that_measured_each_loss():
    old = {"precision": "fp32", "candidates": "a"}
    xeon = {**old, "machine": "Xeon, 2 cores", "date": "2026-12-04"}
    epyc = {**old, "machine": "EPYC, 2 cores", "date": "2026-12-06"}
    runs = {(8, "clean", "sigmoid"): [old, old], (8, "clean", "soft"): [xeon, epyc],
            (8, "flip40", "soft"): [{**epyc, "date": "2026-12-05"}],
            (8, "clean", "rdpo"): [old]}
    note = ln.measured_note(runs)
    assert note.startswith("Runs measured on: `sigmoid`, `rdpo`: machine and day not recorded; ")
    assert "`soft`: EPYC, 2 cores, 2026-12-05, 2026-12-06; Xeon, 2 cores, 2026-12-04." in note
    none = {key: [old] for key in runs}
    assert ln.measured_note(none) == ("The runs do not record their machine and day (runs "
                                      "made since 2026-12-06 do). ")


@pytest.mark.parametrize("argv, named", [
    (["--size", "huge"], "--size"),
    (["--losses", "sigmoid,hinge"], "--losses"),
    (["--conditions", "clean,flip99"], "--conditions"),
    (["--conditions", ""], "--conditions"),
])
def test_bad_arguments_are_refused_naming_them_and_write_nothing(tmp_path, capsys, argv, named):
    with pytest.raises(SystemExit) as e:
        ln.main(argv + ["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")])
    assert e.value.code == 2 and named in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def _measures(out: Path) -> dict:
    runs = json.loads((out / "label_noise.smoke.runs.json").read_text())["runs"]
    return {k: {kk: v for kk, v in m.items() if kk != "seconds"} for k, m in runs.items()}


@pytest.mark.slow
def test_part_of_the_smoke_sweep_runs_the_real_loop_the_same_way_twice(tmp_path):
    """Slow tier (225 s under load 8: two real loops per call): one condition and loss of the smoke size (both data sizes) on the real
    loop with the random 2-layer model, twice from scratch: the same measures; a part
    writes the run cache but no tables."""
    for n in (1, 2):
        ln.main(["--size", "smoke", "--conditions", "flip40", "--losses", "rdpo",
                 "--out", str(tmp_path / f"out{n}"), "--work", str(tmp_path / f"work{n}")])
    first = _measures(tmp_path / "out1")
    assert set(first) == {f"{n}/0/flip40/rdpo" for n in ln.SIZES["smoke"]["pairs"]}
    assert first == _measures(tmp_path / "out2")
    assert all(len(m["gains"]) == len(m["kls"]) == ln.SIZES["smoke"]["eval_prompts"]
               and 0 < m["flip_rate"] <= ln.MAX_FLIP_RATE for m in first.values())
    assert {m["precision"] for m in first.values()} <= {"fp32", "bf16-mixed"}
    assert len({m["candidates"] for m in first.values()}) == 1
    assert not (tmp_path / "out1" / "label_noise.smoke.json").exists()


@pytest.mark.slow
def test_smoke_runs_end_to_end_and_is_byte_identical_per_seed(tmp_path):
    """The whole smoke size twice from scratch (16 runs of the loop): the same results
    file byte for byte, every table row, the plot; a third call finds every run cached."""
    outs = []
    for n in (1, 2):
        out = tmp_path / f"out{n}"
        ln.main(["--size", "smoke", "--out", str(out), "--work", str(tmp_path / f"work{n}")])
        outs.append(out)
    first = (outs[0] / "label_noise.smoke.json").read_bytes()
    assert first == (outs[1] / "label_noise.smoke.json").read_bytes()
    data = json.loads(first)
    spec = ln.SIZES["smoke"]
    cells = {(r["pairs"], r["condition"], r["loss"]) for r in data["results"]}
    assert cells == {(n, c, loss) for n in spec["pairs"] for c in spec["conditions"]
                     for loss in spec["losses"]}
    assert all(r["kept"] is None for r in data["results"] if r["condition"] == "clean")
    assert "target_met" in data["meta"] and data["meta"]["target_check"]["pairs"] == max(spec["pairs"])
    md = (outs[0] / "label_noise.smoke.md").read_text()
    assert md.count("\n| ") == len(cells) and "Target (at 40% flips" in md
    assert (outs[0] / "label_noise.smoke.png").stat().st_size > 1000
    assert len(_measures(outs[0])) == len(cells)
    before = (outs[0] / "label_noise.smoke.runs.json").read_bytes()
    ln.main(["--size", "smoke", "--out", str(outs[0]), "--work", str(tmp_path / "work1")])
    assert (outs[0] / "label_noise.smoke.runs.json").read_bytes() == before
    assert (outs[0] / "label_noise.smoke.json").read_bytes() == first


def test_summarise_pairs_each_noisy_cell_with_its_clean_cell_and_plots(tmp_path):
    ids = [f"p{i}" for i in range(20)]

    def run(gain, kl):
        return {"prompt_ids": ids, "gains": [gain + 0.01 * (i % 3) for i in range(20)],
                "kls": [kl] * 20, "flip_rate": 0.2, "accuracy": 0.6}

    runs = {}
    for n, scale in ((24, 1.0), (72, 2.0)):
        for loss in ("sigmoid", "soft"):
            runs[(n, "clean", loss)] = [run(0.2 * scale, 2.0), run(0.2 * scale, 2.0)]
            runs[(n, "flip40", loss)] = [run(0.05 * scale if loss == "sigmoid" else 0.15 * scale,
                                             0.0 if loss == "sigmoid" else 1.0)] * 2
    rows = st.summarise(runs, (24, 72), ("clean", "flip40"), ("sigmoid", "soft"))
    by = {(r["pairs"], r["condition"], r["loss"]): r for r in rows}
    assert len(rows) == 8 and by[(72, "clean", "soft")]["kept"] is None
    offset = 0.01 * sum(i % 3 for i in range(20)) / 20
    assert by[(72, "flip40", "soft")]["kept"]["value"] == pytest.approx((0.3 + offset) / (0.4 + offset))
    assert by[(72, "flip40", "sigmoid")]["gain_per_nat"] is None          # KL 0: undefined
    assert by[(24, "flip40", "soft")]["gain_per_nat"] == pytest.approx(0.15 + offset)
    check = st.target_check(rows, 72)
    assert check["met"] and check["best_robust"] == "soft"
    st.plot(rows, tmp_path / "noise.png")
    assert (tmp_path / "noise.png").stat().st_size > 1000


def test_flip_rate_estimates_on_the_smoke_size(tmp_path, capsys):
    import flip_rate_estimates as fre

    fre.main(["--size", "smoke", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "w")])
    got = json.loads((tmp_path / "out" / "flip_rate_estimates.smoke.json").read_text())["results"]
    assert [(r["condition"], r["seed"]) for r in got] == [
        (c, s) for c in fre.CONDITIONS for s in range(fre.SEEDS)]
    for r in got:
        assert r["pairs"] == max(ln.SIZES["smoke"]["pairs"])
        for k in ("true", "posteriors", "gold"):
            assert 0 <= r[k] <= ln.MAX_FLIP_RATE
        # two held-out prompts give at most 4 gold items: too few to fit, and it says so
        assert r["gold_items"] <= 4 and r["gold_temperature"] == 1.0 and "only" in r["gold_note"]
    md = (tmp_path / "out" / "flip_rate_estimates.smoke.md").read_text()
    assert "| flip40 | 3 |" in md and "Gold fit: only" in md
    assert md.strip() in capsys.readouterr().out
