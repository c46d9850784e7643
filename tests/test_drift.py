"""Drift metrics against closed forms and hand-computed tables."""

import math

import numpy as np
import pytest
from alignloop.config.report import ReportConfig
from alignloop.report.alerts import alerts, check_report
from alignloop.report.label_stats import intransitive_triples, label_stats
from alignloop.report.metrics import (
    degeneration,
    estimate,
    implicit_reward,
    kl_estimate,
    length_stats,
    paired_change,
    wilson,
    win_rate,
    win_rates_by_slice,
)

P = np.array([0.5, 0.3, 0.15, 0.05])
Q = np.array([0.25, 0.25, 0.3, 0.2])
KL_TOKEN = float(np.sum(P * np.log(P / Q)))        # closed form, 0.1987 nats


def _sequences(rng, n: int, length: int):
    """n sequences of `length` iid tokens from P; summed log-probs under P and Q."""
    tokens = rng.choice(len(P), size=(n, length), p=P)
    return np.log(P)[tokens].sum(1), np.log(Q)[tokens].sum(1)


def test_kl_matches_closed_form_on_categorical_policies():
    rng = np.random.default_rng(0)
    T = 5
    lp, lq = _sequences(rng, 4000, T)
    est = kl_estimate(lp, lq, np.full(4000, T), n_boot=500)
    for k in ("k1", "k3"):
        seq, tok = est[k]["sequence"], est[k]["per_token"]
        assert seq["lo"] <= T * KL_TOKEN <= seq["hi"], (k, seq)
        assert tok["lo"] <= KL_TOKEN <= tok["hi"], (k, tok)
        assert seq["value"] == pytest.approx(T * KL_TOKEN, rel=0.1)
        assert tok["value"] == pytest.approx(seq["value"] / T)      # fixed length: per token = / T
    assert est["n_samples"] == 4000 and est["dropped"] == 0
    assert "k3" in est["estimator"] and "Schulman" in est["estimator"]


def test_kl_drops_nan_rows_and_clusters_by_prompt():
    est = kl_estimate([-1.0, -2.0, math.nan, -3.0], [-1.5, -2.0, -1.0, -3.5], [2, 2, 2, 2],
                      groups=["a", "a", "b", "c"], n_boot=200)
    assert est["dropped"] == 1 and est["n_samples"] == 3 and est["n_prompts"] == 2
    assert est["k1"]["sequence"]["value"] == pytest.approx((0.5 + 0 + 0.5) / 3)
    assert est["k1"]["per_token"]["value"] == pytest.approx(1.0 / 6)


def test_bootstrap_interval_covers_at_nominal_rate():
    # 200 synthetic replications of 200 sequences each: the 95% interval of the k1 KL
    # should contain the true KL in about 95% of them.
    T, hits_seq, hits_tok, reps = 3, 0, 0, 200
    for r in range(reps):
        rng = np.random.default_rng(100 + r)
        lp, lq = _sequences(rng, 200, T)
        est = kl_estimate(lp, lq, np.full(200, T), n_boot=400, seed=r)
        s, t = est["k1"]["sequence"], est["k1"]["per_token"]
        hits_seq += s["lo"] <= T * KL_TOKEN <= s["hi"]
        hits_tok += t["lo"] <= KL_TOKEN <= t["hi"]
    assert 0.9 <= hits_seq / reps <= 0.99, hits_seq / reps
    assert 0.9 <= hits_tok / reps <= 0.99, hits_tok / reps


def test_estimate_edge_cases():
    assert math.isnan(estimate([])["value"])
    one = estimate([2.0, 4.0], groups=["x", "x"])          # one cluster: no interval
    assert one["value"] == 3.0 and math.isnan(one["lo"]) and one["n"] == 2


def test_p_not_below_is_the_one_sided_bootstrap_p_value():
    rng = np.random.default_rng(0)
    assert "p_not_below" not in estimate(rng.normal(0, 1, 30), n_boot=100)
    assert estimate(rng.normal(-0.8, 1, 40), n_boot=500, null=0.0)["p_not_below"] < 0.01
    assert estimate(rng.normal(0.8, 1, 40), n_boot=500, null=0.0)["p_not_below"] > 0.99
    assert math.isnan(estimate([1.0, 2.0], groups=["x", "x"], null=0.0)["p_not_below"])
    assert math.isnan(estimate([], null=0.0)["p_not_below"])
    # p < 0.025 puts the 95% interval's upper end below the null: the test and the
    # interval the report shows never disagree that way
    seen = 0
    for r in range(60):
        e = estimate(rng.normal(-0.35, 1, 30), n_boot=1000, seed=r, null=0.0)
        if e["p_not_below"] < 0.025:
            seen += 1
            assert e["hi"] < 0.0, e
    assert 0 < seen < 60                          # the loop saw both outcomes
    # a win rate tests against 0.5
    lost = win_rate([0.2] * 9 + [0.8], groups=list("abcdefghij"), n_boot=400, null=0.5)
    assert lost["p_not_below"] < 0.01


def test_paired_change_pairs_by_prompt_and_finds_a_fall_the_spread_hides():
    rng = np.random.default_rng(1)
    level = rng.normal(0, 2, 12)                  # prompts differ far more than they move
    before = [{"prompt_id": f"p{i}", "slice": "old", "latent_reward": float(v)}
              for i, v in enumerate(level)] + [{"prompt_id": "gone", "slice": "s",
                                                  "latent_reward": 9.0}]
    after = [{"prompt_id": f"p{i}", "slice": "ab"[i % 2], "latent_reward": float(v - 0.3 + d)}
             for i, v in enumerate(level) for d in (-0.05, 0.05)]           # two samples each
    after.append({"prompt_id": "new", "slice": "a", "latent_reward": float("nan")})
    out = paired_change(after, before, "latent_reward", n_boot=500)
    assert out["overall"]["n"] == 12 and out["overall"]["value"] == pytest.approx(-0.3)
    assert out["overall"]["p_not_below"] < 0.01 and out["overall"]["hi"] < 0
    assert sorted(out["by_slice"]) == ["a", "b"]  # the after side's slices
    assert out["by_slice"]["a"]["n"] == 6
    # unpaired, the two rounds' 95% intervals overlap: the fall could not be told apart
    a = estimate([r["latent_reward"] for r in after[:-1]],
                 groups=[r["prompt_id"] for r in after[:-1]], n_boot=500)
    b = estimate(level, n_boot=500)
    assert a["lo"] < b["hi"] and b["lo"] < a["hi"]
    assert paired_change(after, [], "latent_reward")["overall"]["n"] == 0


COMPARISONS = [
    # slice a: win, loss, flagged tie            -> (1 + 0 + 0.5) / 3 = 0.5
    {"prompt_id": "p1", "slice": "a", "p_a": 0.9, "tie": False},
    {"prompt_id": "p2", "slice": "a", "p_a": 0.2, "tie": False},
    {"prompt_id": "p3", "slice": "a", "p_a": 0.6, "tie": True},
    # slice b: win, win, p exactly 0.5 (a tie), no verdict (left out) -> 2.5 / 3 = 0.8333
    {"prompt_id": "p4", "slice": "b", "p_a": 0.7, "tie": False},
    {"prompt_id": "p5", "slice": "b", "p_a": 0.8, "tie": False},
    {"prompt_id": "p6", "slice": "b", "p_a": 0.5, "tie": False},
    {"prompt_id": "p7", "slice": "b", "p_a": math.nan, "tie": False},
]


def test_win_rate_with_ties_and_slices():
    out = win_rates_by_slice(COMPARISONS, n_boot=300)
    overall = out["overall"]
    assert overall["value"] == pytest.approx(4 / 6)            # (1+0+.5+1+1+.5) / 6
    assert (overall["wins"], overall["ties"], overall["losses"], overall["n"]) == (3, 2, 1, 6)
    assert overall["mean_p"] == pytest.approx(3.6 / 6)         # .9+.2+.5+.7+.8+.5 (ties as .5)
    assert overall["lo"] <= overall["value"] <= overall["hi"]
    assert out["by_slice"]["a"]["value"] == pytest.approx(0.5)
    assert out["by_slice"]["b"]["value"] == pytest.approx(2.5 / 3)
    assert out["by_slice"]["b"]["n"] == 3
    # a sure winner: the bootstrap alone gives "1 - 1"; the Wilson interval over its 10
    # prompts does not (lower bound n / (n + z^2) = 0.722), nor over 5 prompts (0.566):
    # with no spread to read a design effect from, the prompts count, not the comparisons
    sure = win_rate([0.9] * 10, groups=list("abcdefghij"), n_boot=200)
    assert sure["value"] == sure["hi"] == 1.0 and sure["lo"] == pytest.approx(0.7225, abs=1e-3)
    fewer = win_rate([0.9] * 10, groups=list("aabbccddee"), n_boot=200)
    assert fewer["lo"] == pytest.approx(0.5655, abs=1e-3)
    # where the bootstrap is the wider, it stays: a 50/50 split over 4 prompts
    split = win_rate([0.9, 0.1] * 2, groups=list("abcd"), n_boot=400)
    boot = estimate([1.0, 0.0] * 2, groups=list("abcd"), n_boot=400)
    assert split["lo"] == min(boot["lo"], wilson(0.5, 4)[0])
    assert wilson(0.5, 4)[0] == pytest.approx(0.15, abs=0.01)
    # many samples per prompt that disagree within it: the comparisons carry information
    # (effective n near the 96 comparisons, not the 24 prompts), so the interval stays narrow
    rng = np.random.default_rng(0)
    many = win_rate(np.where(rng.random(96) < 0.34, 0.9, 0.1), groups=np.repeat(np.arange(24), 4),
                    n_boot=400)
    assert many["hi"] - many["lo"] < wilson(many["value"], 40)[1] - wilson(many["value"], 40)[0]


def test_intransitive_triples_hand_made():
    prefs = [
        ("P1", "x", "y", 0.9), ("P1", "y", "z", 0.8), ("P1", "z", "x", 0.7),   # cycle
        ("P2", "a", "b", 0.9), ("P2", "b", "c", 0.9), ("P2", "a", "c", 0.9),   # a > b > c
        ("P3", "u", "v", 0.9),                                                 # 2 responses
        # P4: (x, y) judged twice, mean 0.65 -> x > y; y > z; x ? z undecided (0.5): no triple
        ("P4", "x", "y", 0.9), ("P4", "x", "y", 0.4), ("P4", "y", "z", 0.6), ("P4", "x", "z", 0.5),
    ]
    out = intransitive_triples(prefs)
    assert out == {"prompts": 3, "triples": 2, "intransitive": 1, "share": 0.5}
    # the same cycle written with p < 0.5 in the other direction
    flipped = intransitive_triples([("Q", "y", "x", 0.1), ("Q", "z", "y", 0.2), ("Q", "x", "z", 0.3)])
    assert flipped["intransitive"] == 1


def test_degeneration_and_length_on_hand_made_texts():
    d = degeneration(["a b c a b c", "x y z"])
    # bigrams: ab bc ca ab bc | xy yz -> 5 distinct of 7
    assert d["distinct_2"] == pytest.approx(5 / 7)
    # 3-grams: abc bca cab abc (one repeat) | xyz -> 1 of 5 repeats
    assert d["repeated_3gram_rate"] == pytest.approx(1 / 5)
    assert math.isnan(degeneration(["one"])["distinct_2"])
    s = length_stats([10, 20, 30, 40], ["stop", "stop", "length", "stop"], edges=[0, 25, 50])
    assert s["mean_tokens"] == 25 and s["median_tokens"] == 25
    assert (s["share_stop"], s["share_length"]) == (0.75, 0.25)
    assert s["histogram"] == {"edges": [0.0, 25.0, 50.0], "counts": [2, 2]}


def test_implicit_reward_and_likelihood_displacement():
    rows = [
        # margin = 0.1 * ((-10 + 11) - (-12 + 11)) = 0.2: right
        {"slice": "s", "logp_policy_chosen": -10, "logp_policy_rejected": -12,
         "logp_reference_chosen": -11, "logp_reference_rejected": -11,
         "logp_base_chosen": -9, "logp_base_rejected": -11},
        # margin = 0.1 * ((-15 + 14) - (-14 + 14)) = -0.1: wrong
        {"slice": "t", "logp_policy_chosen": -15, "logp_policy_rejected": -14,
         "logp_reference_chosen": -14, "logp_reference_rejected": -14,
         "logp_base_chosen": -14, "logp_base_rejected": -13},
    ]
    out = implicit_reward(rows, beta=0.1, n_boot=200)
    assert out["accuracy"]["value"] == pytest.approx(0.5)
    assert out["margin"]["value"] == pytest.approx(0.05)
    assert out["logp_change_vs_base"]["chosen"]["value"] == pytest.approx(-1.0)   # (-1 + -1) / 2
    assert out["logp_change_vs_base"]["rejected"]["value"] == pytest.approx(-1.0)
    assert out["likelihood_displacement"] is True
    assert out["by_slice"]["s"] == {"accuracy": 1.0, "margin": pytest.approx(0.2), "n": 1}


def test_label_stats_hand_made():
    cands = [
        {"item_id": "i1", "prompt_id": "p", "a": "A", "b": "B", "p_a": 0.9, "selected": True, "decision": "auto"},
        {"item_id": "i2", "prompt_id": "p", "a": "A", "b": "C", "p_a": 0.8, "selected": True, "decision": "human"},
        {"item_id": "i3", "prompt_id": "q", "a": "D", "b": "E", "p_a": 0.3, "selected": True, "decision": "human"},
        {"item_id": "i4", "prompt_id": "q", "a": "D", "b": "F", "p_a": 0.5, "selected": True, "decision": "drop",
         "reason": "uncertain: p_a=0.50 within 0.25 of 0.5; human budget (4) spent"},
        {"item_id": "i5", "prompt_id": "q", "a": "E", "b": "F", "p_a": 0.6, "selected": False, "decision": "drop"},
    ]

    def vote(item, ann, choice, gold=None):
        return {"item_id": item, "source": "human", "annotator": ann, "choice": choice, "gold": gold}

    labels = [{"item_id": "i1", "source": "judge", "annotator": "j", "choice": "", "p_a": 0.9},
              vote("i2", "ann1", "a", gold="a"), vote("i2", "ann2", "a"), vote("i2", "ann3", "b", gold="a"),
              vote("i3", "ann1", "a"), vote("i3", "ann2", "a")]
    pairs = [{"prompt": "p", "chosen": "A", "rejected": "B", "p_chosen": 0.9, "source": "judge"},
             {"prompt": "p", "chosen": "A", "rejected": "C", "p_chosen": 0.8, "source": "human"}]
    out = label_stats(labels, cands, pairs, human_budget=4)
    assert out["decisions"] == {"auto": 1, "human": 2, "drop": 1} and out["selected"] == 4
    assert out["routed_share"] == 0.5 and out["budget_used"] == 0.5
    assert out["pairs_by_source"] == {"judge": 1, "human": 1}
    assert out["pairs_by_round"] == {}                           # these pairs name no round
    replayed = [{**pairs[0], "round": 0}, {**pairs[1], "round": 2}, {**pairs[1], "round": 2}]
    assert label_stats(labels, cands, replayed)["pairs_by_round"] == {"0": 1, "2": 2}
    assert (out["human_votes"], out["human_items"], out["annotators"]) == (5, 2, 3)
    # i2: majority a, judge 0.8 -> a (agree); i3: majority a, judge 0.3 -> b (disagree)
    assert out["judge_human"]["items"] == 2 and out["judge_human"]["agreement"] == 0.5
    assert (out["judge_human"]["agreement_lo"], out["judge_human"]["agreement_hi"]) == \
        pytest.approx(wilson(0.5, 2))                            # 0.095 - 0.905 for 1 of 2
    # kappa: p_o = 0.5, p_e = P_judge(a) P_human(a) + P_judge(b) P_human(b) = .5 * 1 + .5 * 0
    assert out["judge_human"]["kappa"] == pytest.approx(0.0)
    # its bootstrap over the two items: people say "a" on both, so a resample's kappa is
    # 0 whenever defined (it is not when the judge says "a" on both draws, p_e = 1)
    assert (out["judge_human"]["kappa_lo"], out["judge_human"]["kappa_hi"]) == (0.0, 0.0)
    assert out["drop_reasons"] == {"human budget (4) spent": 1}     # i5 was not selected
    # each judge on its own: one that agrees on i2 and i3, one that disagrees on both
    for c, good, bad in zip(cands, (0.9, 0.8, 0.7, 0.5, 0.6), (0.1, 0.2, 0.3, 0.5, 0.4),
                            strict=True):
        c["p_a:good"], c["p_a:bad"] = good, bad
    by_judge = label_stats(labels, cands, pairs, human_budget=4)["judge_human"]["by_judge"]
    assert by_judge == {"bad": {"items": 2, "agreement": 0.0}, "good": {"items": 2, "agreement": 1.0}}
    # alpha: o_aa = 1 (i2) + 2 (i3), o_ab = o_ba = 1; D_o = 2/5, D_e = 2*4*1/(5*4) = 2/5 -> 0
    assert out["human_alpha"] == pytest.approx(0.0)
    assert out["gold_accuracy"] == 0.5 and out["gold_votes"] == 2
    assert out["intransitivity"]["labels"]["prompts"] == 1       # p has A, B, C; no full triple
    assert out["intransitivity"]["labels"]["triples"] == 0


def _report(kl=0.5, ratio_prev=1.0, ratio_base=None, slice_win=0.5, n=20, delta=0.0, alpha=0.8,
            kappa=0.8):
    return {"kl_to_reference": {"k1": {"sequence": {"value": kl}}},
            "length": {"ratio_vs_previous": ratio_prev, "ratio_vs_base": ratio_base},
            "win_rate_vs_previous": {"by_slice": {"s": {"value": slice_win, "lo": 0.1, "hi": 0.6, "n": n}}},
            "latent_reward": {"delta_vs_previous": {"by_slice": {"s": delta}},
                              "models": {"policy": {"by_slice": {"s": {"n": n}}}}},
            "labels": {"human_alpha": alpha, "judge_human": {"kappa": kappa}}}


def test_alerts_fire_only_beyond_thresholds():
    cfg = ReportConfig(alert_kl_to_reference=1.0, length_blowup=1.5, alert_slice_drop=0.05, agreement_floor=0.4,
                       min_slice_samples=10)
    assert alerts(_report(), cfg) == []
    kinds = [a["kind"] for a in alerts(_report(kl=1.2, ratio_prev=1.6, slice_win=0.4, delta=-0.1,
                                               alpha=0.3, kappa=0.2), cfg)]
    assert kinds == ["kl_budget", "length_blowup", "slice_regression", "slice_regression",
                     "annotator_agreement", "judge_agreement"]
    regress = alerts(_report(slice_win=0.4), cfg)[0]
    assert regress["slice"] == "s" and regress["drop"] == pytest.approx(0.1)
    assert "latent" not in regress["message"]          # the report has no paired change
    both = _report(slice_win=0.4)
    both["latent_reward"]["change_vs_previous"] = {"by_slice": {"s": {
        "value": 0.0786, "lo": -0.209, "hi": 0.433, "n": 14, "p_not_below": 0.68}}}
    assert alerts(both, cfg)[0]["message"].endswith(
        "; its mean latent reward changed by +0.0786 (95% CI -0.209 to +0.433) from the "
        "previous policy's, paired by prompt")
    # no previous round: the length ratio falls back to the base model's
    assert alerts(_report(ratio_prev=None, ratio_base=2.0), cfg)[0]["kind"] == "length_blowup"
    # too few samples in the slice; thresholds at 0 turn alerts off
    assert alerts(_report(slice_win=0.1, delta=-1, n=5), cfg) == []
    off = ReportConfig(alert_kl_to_reference=0, length_blowup=0, alert_slice_drop=0, agreement_floor=0)
    assert alerts(_report(kl=9, ratio_prev=9, slice_win=0, delta=-9, alpha=-1, kappa=-1), off) == []
    # the judge's kappa alert quotes its interval when the report has one
    with_ci = _report(kappa=0.2)
    with_ci["labels"]["judge_human"].update(kappa_lo=-0.31, kappa_hi=0.62, items=16)
    (judge,) = [a for a in alerts(with_ci, cfg) if a["kind"] == "judge_agreement"]
    assert judge["message"] == ("judge-human Cohen's kappa 0.20 (95% CI -0.31 to 0.62 over 16 "
                                "items) is below the floor 0.4")
    # missing numbers never alert
    assert alerts({"length": {}, "labels": {"human_alpha": None}}, cfg) == []


def test_skipped_checks_say_which_and_why():
    cfg = ReportConfig(alert_kl_to_reference=0, length_blowup=1.5, alert_slice_drop=0.05,
                       agreement_floor=0.4, min_slice_samples=10)
    # a slice that fell from 0.56 to 0.29 on 6 samples: too few to alert, but not silent
    report = _report(slice_win=0.3, n=6, delta=0.29 - 0.56)
    report["latent_reward"]["models"]["previous"] = {"by_slice": {"s": {"value": 0.56}}}
    report["latent_reward"]["models"]["policy"]["by_slice"]["s"]["value"] = 0.29
    checks = check_report(report, cfg)
    assert checks.alerts == []
    slices = [c for c in checks.skipped if c["kind"] == "slice_regression"]
    assert [(c["slice"], c["measure"], c["n"], c["would_alert"]) for c in slices] == [
        ("s", "win_rate", 6, True), ("s", "latent_reward", 6, True)]
    assert slices[1]["reason"] == ("slice 's' not checked: mean latent reward 0.56 → 0.29 "
                                   "(-0.27) over 6 samples, fewer than "
                                   "report.min_slice_samples = 10")
    assert slices[1]["value"] == pytest.approx(-0.27)
    assert {"kind": "kl_budget", "reason": "off: report.alert_kl_to_reference = 0", "slice": None,
            "measure": None, "n": None, "value": None, "would_alert": None} in checks.skipped
    # an improved small slice is skipped too, but would not have alerted
    improved = check_report(_report(slice_win=0.9, n=6, delta=0.2), cfg).skipped
    assert [c["would_alert"] for c in improved if c["slice"] == "s"] == [False, False]
    # enough samples: checked, not skipped
    assert not [c for c in check_report(_report(n=20), cfg).skipped if c["slice"]]


def _vs_base(value, lo, hi, displaced=None):
    return {"win_rate_vs_base": {"available": True, "overall": {"value": value, "lo": lo, "hi": hi,
                                                                "n": 40}},
            "implicit_reward": {"likelihood_displacement": displaced}}


def test_losing_to_the_base_model_alerts_only_when_the_interval_is_below():
    cfg = ReportConfig()                                  # alert_win_rate_vs_base = 0.5
    (a,) = alerts(_vs_base(0.35, 0.22, 0.47, displaced=True), cfg)
    assert a["kind"] == "loses_to_base" and a["value"] == 0.35 and a["threshold"] == 0.5
    assert a["message"] == ("this round's policy loses to the base model: judge win rate 0.35 "
                            "(95% CI 0.22-0.47, n=40) is below 0.5; the chosen responses' "
                            "log-prob fell below the base model's (likelihood displacement)")
    assert alerts(_vs_base(0.45, 0.3, 0.6), cfg) == []              # could be noise
    assert alerts(_vs_base(0.35, 0.22, 0.47), ReportConfig(alert_win_rate_vs_base=0)) == []
    assert alerts(_vs_base(0.55, 0.45, 0.6), ReportConfig(alert_win_rate_vs_base=0.7)) != []
    no_interval = check_report(_vs_base(0.3, None, None), cfg)
    assert no_interval.alerts == []
    assert [c["reason"] for c in no_interval.skipped if c["kind"] == "loses_to_base"] == [
        "win rate against the base model 0.30 is below 0.5 but has no 95% interval (fewer than "
        "2 prompts): a loss cannot be told from noise"]
    missing = {"win_rate_vs_base": {"available": False, "reason": "no eval/comparisons.parquet"}}
    assert [c["reason"] for c in check_report(missing, cfg).skipped
            if c["kind"] == "loses_to_base"] == [
        "no win rate against the base model: no eval/comparisons.parquet"]


def test_judge_human_reason_when_no_item_can_be_compared():
    def vote(item, ann, choice):
        return {"item_id": item, "source": "human", "annotator": ann, "choice": choice}

    cands = [{"item_id": "i1", "prompt_id": "p", "a": "A", "b": "B", "p_a": 0.8},
             {"item_id": "i2", "prompt_id": "p", "a": "A", "b": "C", "p_a": 0.5}]

    def reason(labels):
        return label_stats(labels, cands, [])["judge_human"]["reason"]

    assert reason([]) == "no human votes this round"
    assert reason([vote("i1", "x", "a"), vote("i1", "y", "b")]) == \
        "the human votes were split evenly on every item"
    assert reason([vote("i2", "x", "a")]) == \
        "no item with a human majority has a judge verdict (p_a missing or exactly 0.5)"
    assert reason([vote("i1", "x", "a")]) is None
