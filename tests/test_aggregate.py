"""Vote aggregation (one-coin Dawid-Skene) and judge temperature scaling.

Hand-derived values sit next to their assertions; the simulations use seeded
numpy generators and known annotator reliabilities.
"""

import math
import random

import numpy as np
import pytest
from alignloop.labeling import LabelingError
from alignloop.labeling.aggregate import Vote, aggregate_votes
from alignloop.labeling.calibration import (
    agreement_slope,
    brier,
    calibrate,
    expected_calibration_error,
    fit_temperature,
)

RHO, S = 0.75, 4.0      # the defaults: prior_reliability, prior_strength


def simulate(reliabilities, truth, rng, voters_per_item=None):
    """Votes of annotators `ann{j}` with the given reliabilities on items `i{n}`.

    Every annotator votes on every item, or each item gets `voters_per_item(rng)`
    distinct annotators drawn at random.
    """
    names = [f"ann{j}" for j in range(len(reliabilities))]
    votes = []
    for n, a_better in enumerate(truth):
        who = range(len(names))
        if voters_per_item is not None:
            who = rng.choice(len(names), size=voters_per_item(rng), replace=False)
        for j in who:
            right = rng.random() < reliabilities[j]
            votes.append(Vote(f"i{n:05d}", names[j], "a" if right == a_better else "b"))
    return votes


def p_of(agg, n_items):
    return np.array([agg.posteriors[f"i{n:05d}"].p_a for n in range(n_items)])


def accuracy(p, truth):
    """Share of items whose label points at the truth; p = 0.5 counts half (a coin flip)."""
    right = np.where(truth, p > 0.5, p < 0.5)
    return float(np.mean(right + 0.5 * (p == 0.5)))


def ece(p, y, bins=10):
    return expected_calibration_error(p, y, bins)


# --- hand-derived ---------------------------------------------------------------------------

def test_one_vote_by_a_new_annotator_gives_the_prior_reliability():
    # E-step from r = rho: L = logit(rho), p = rho = 0.75.
    # M-step: r = (rho*S + p) / (S + 1) = (3 + 0.75) / 5 = 0.75 = rho: a fixed point, so p = 0.75.
    agg = aggregate_votes([Vote("x", "new", "a")])
    assert agg.posteriors["x"].p_a == pytest.approx(0.75, abs=1e-12)
    assert agg.reliability["new"] == pytest.approx(0.75, abs=1e-12)
    assert agg.converged and agg.iterations_run == 1
    # a "b" vote mirrors it: p_a = 1 - 0.75
    assert aggregate_votes([Vote("x", "new", "b")]).posteriors["x"].p_a == pytest.approx(0.25)
    # another prior: p_a = prior_reliability = 0.6
    agg = aggregate_votes([Vote("x", "new", "a")], prior_reliability=0.6)
    assert agg.posteriors["x"].p_a == pytest.approx(0.6, abs=1e-12)


def test_two_agreeing_votes():
    votes = [Vote("x", "u1", "a"), Vote("x", "u2", "a")]
    # One EM iteration: E with r = 0.75: L = 2 ln 3, p = 9/10.
    # M: r = (3 + 0.9) / 5 = 0.78 for both; final E: p = 0.78^2 / (0.78^2 + 0.22^2)
    #    = 0.6084 / 0.6568 = 0.92630937880633...
    agg = aggregate_votes(votes, iterations=1)
    assert agg.reliability == pytest.approx({"u1": 0.78, "u2": 0.78})
    assert agg.posteriors["x"].p_a == pytest.approx(0.6084 / 0.6568, abs=1e-12)
    assert not agg.converged
    # Converged: the fixed point of p = r^2 / (r^2 + (1-r)^2), r = (3 + p) / 5,
    # r = 0.786233..., p = 0.931166...
    agg = aggregate_votes(votes)
    r, p = agg.reliability["u1"], agg.posteriors["x"].p_a
    assert agg.converged
    assert p == pytest.approx(r * r / (r * r + (1 - r) ** 2), abs=1e-6)
    assert r == pytest.approx((RHO * S + p) / (S + 1), abs=1e-6)
    assert p == pytest.approx(0.931166, abs=1e-5)


def test_tie_adds_nothing_to_the_odds_but_counts():
    agg = aggregate_votes([Vote("x", "u1", "tie")])
    post = agg.posteriors["x"]
    assert post.p_a == 0.5
    assert (post.n_votes, post.votes_tie, post.n_both_bad) == (1, 1, 0)
    assert agg.reliability["u1"] == RHO       # no a/b vote: the prior mean
    # a tie next to an "a" vote leaves the single-vote answer p = rho
    post = aggregate_votes([Vote("x", "u1", "a"), Vote("x", "u2", "tie")]).posteriors["x"]
    assert post.p_a == pytest.approx(RHO, abs=1e-12)
    assert (post.n_votes, post.votes_a, post.votes_b, post.votes_tie) == (2, 1, 0, 1)


def test_both_bad_is_counted_apart():
    post = aggregate_votes([Vote("x", "u1", "a"), Vote("x", "u2", "both_bad")]).posteriors["x"]
    assert post.p_a == pytest.approx(RHO, abs=1e-12)
    assert (post.n_votes, post.n_both_bad) == (1, 1)
    only = aggregate_votes([Vote("y", "u2", "both_bad")]).posteriors["y"]
    assert (only.p_a, only.n_votes, only.n_both_bad) == (0.5, 0, 1)


def test_unknown_choice_names_the_item_and_annotator():
    with pytest.raises(LabelingError, match=r"'pair-7'.*'alice'.*'A'"):
        Vote("pair-7", "alice", "A")
    with pytest.raises(LabelingError, match="weight"):
        Vote("pair-7", "alice", "a", weight=-1.0)


def test_weight_two_equals_two_votes_and_order_does_not_matter():
    rng = np.random.default_rng(3)
    votes = simulate([0.9, 0.7, 0.6], rng.random(30) < 0.5, rng)
    doubled = votes + [Vote("i00000", "ann0", "a")] * 2
    weighted = votes + [Vote("i00000", "ann0", "a", weight=2.0)]
    a, b = aggregate_votes(doubled), aggregate_votes(weighted)
    assert a.posteriors["i00000"].p_a == pytest.approx(b.posteriors["i00000"].p_a, abs=1e-12)
    assert a.reliability == pytest.approx(b.reliability, abs=1e-12)
    shuffled = votes[:]
    random.Random(0).shuffle(shuffled)
    assert aggregate_votes(shuffled) == aggregate_votes(votes)


def test_judge_log_odds_shift_the_posterior_toward_the_judge():
    votes = [Vote("x", "u1", "a"), Vote("y", "u2", "both_bad")]
    judge = {"x": -2.0, "y": math.log(3)}
    off = aggregate_votes(votes, judge_log_odds=judge, judge_weight=0.0)
    assert off.posteriors["x"].p_a == pytest.approx(RHO, abs=1e-12)    # unchanged
    weak = aggregate_votes(votes, judge_log_odds=judge, judge_weight=0.5)
    strong = aggregate_votes(votes, judge_log_odds=judge, judge_weight=2.0)
    # the judge says b (log-odds -2): the vote for a counts for less, more so with more weight
    assert strong.posteriors["x"].p_a < weak.posteriors["x"].p_a < RHO
    # no a/b votes on y: p = sigmoid(1 * ln 3) = 3/4, the judge alone
    y = aggregate_votes(votes, judge_log_odds=judge, judge_weight=1.0).posteriors["y"]
    assert y.p_a == pytest.approx(0.75, abs=1e-12)
    # a missing or NaN judge answer is no evidence
    nan = aggregate_votes(votes, judge_log_odds={"x": math.nan}, judge_weight=1.0)
    assert nan.posteriors["x"].p_a == pytest.approx(RHO, abs=1e-12)


# --- recovery of reliabilities --------------------------------------------------------------

def test_two_annotators_alone_cannot_tell_who_is_reliable():
    # With two annotators only their agreement rate r1 r2 + (1-r1)(1-r2) is observed (both
    # marginals are 1/2), which is symmetric in r1, r2: no method can tell them apart, and
    # EM from the symmetric start gives both the same reliability. Hence the third and
    # fourth annotators in the recovery test below.
    rng = np.random.default_rng(0)
    agg = aggregate_votes(simulate([0.9, 0.5], rng.random(400) < 0.5, rng))
    assert agg.reliability["ann0"] == pytest.approx(agg.reliability["ann1"], abs=1e-12)


def test_recovers_a_reliable_annotator_and_a_random_clicker():
    # ann0 reliable (0.9), ann1 clicks at random (0.5), ann2/ann3 decent (0.8) -- enough
    # informative annotators for the reliabilities to be identified. With 400 items the
    # estimates are noisy: over seeds 0..199 of this simulation ann0's error stays within
    # 0.05 in 97% of them and ann1's within 0.08 in 99.5%; seed 0 is the first.
    rng = np.random.default_rng(0)
    n = 400
    truth = rng.random(n) < 0.5
    votes = simulate([0.9, 0.5, 0.8, 0.8], truth, rng)
    agg = aggregate_votes(votes)
    assert agg.converged
    assert agg.reliability["ann0"] == pytest.approx(0.9, abs=0.05)
    assert agg.reliability["ann1"] == pytest.approx(0.5, abs=0.08)

    p = p_of(agg, n)
    own = np.array([(v.choice == "a") == truth[int(v.item[1:])] for v in votes
                    if v.annotator == "ann0"]).mean()
    assert accuracy(p, truth) >= own - 0.01
    # plain mean voting (each vote 1/4, the random clicker counted like the others; 2-2 ties
    # sit at 0.5) does clearly worse
    mean_vote = np.zeros(n)
    for v in votes:
        mean_vote[int(v.item[1:])] += (v.choice == "a") / 4
    assert accuracy(mean_vote, truth) < accuracy(p, truth) - 0.02


def test_an_adversarial_annotator_is_turned_around():
    # ann3 votes the wrong side 90% of the time: its reliability drops below 1/2 (allowed,
    # clipped at 0.01) and its votes then count for the other side. Mean voting, which
    # takes ann3 at its word, is right on ~70% of the items; the model on ~93%.
    rng = np.random.default_rng(5)
    n = 300
    truth = rng.random(n) < 0.5
    votes = simulate([0.8, 0.8, 0.8, 0.1], truth, rng)
    agg = aggregate_votes(votes)
    assert agg.reliability["ann3"] < 0.25
    mean_vote = np.zeros(n)
    for v in votes:
        mean_vote[int(v.item[1:])] += (v.choice == "a") / 4
    assert accuracy(p_of(agg, n), truth) > 0.9
    assert accuracy(p_of(agg, n), truth) > accuracy(mean_vote, truth) + 0.15


def test_posteriors_are_calibrated_on_simulated_votes():
    # Four annotators of reliability 0.6 .. 0.95; each of 2000 items gets 1-3 of them.
    # Within each bin of p_a the share of items where a is truly better should match the
    # mean posterior (the model is right here, so only estimation error is left).
    rng = np.random.default_rng(11)
    n = 2000
    truth = rng.random(n) < 0.5
    votes = simulate([0.6, 0.7, 0.85, 0.95], truth, rng, lambda g: int(g.integers(1, 4)))
    agg = aggregate_votes(votes, iterations=500)
    assert agg.converged      # sparse votes: EM needs ~130 iterations here
    p = p_of(agg, n)
    assert ece(p, truth.astype(float)) < 0.05
    # and the posteriors are sharp, not all near 1/2
    assert np.mean(np.abs(p - 0.5) > 0.3) > 0.5


# --- temperature scaling --------------------------------------------------------------------

def sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_temperature_undoes_an_exact_overconfidence():
    # p = sigmoid(3 x) against soft targets sigmoid(x): the NLL is minimised where
    # sigmoid(3 x / T) = sigmoid(x) for every item, i.e. T = 3 exactly. (|3x| <= 12 stays
    # inside the logit clip at 1e-6, |logit| <= 13.8, which would bend the answer.)
    x = np.random.default_rng(0).uniform(-4, 4, 500)
    assert fit_temperature(sig(3 * x), sig(x)) == pytest.approx(3.0, abs=1e-4)


def test_temperature_on_overconfident_and_on_calibrated_judges():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1.5, 4000)
    y = (rng.random(4000) < sig(x)).astype(float)     # human labels drawn from the truth
    over = calibrate(sig(3 * x), y)
    assert over.temperature == pytest.approx(3.0, rel=0.15)
    assert over.ece_after < over.ece_before
    assert over.nll_after < over.nll_before
    assert over.n == 4000 and over.note == ""
    fair = calibrate(sig(x), y)
    assert fair.temperature == pytest.approx(1.0, abs=0.15)


def test_unparsable_verdicts_are_excluded_and_counted():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1.5, 200)
    p, t = sig(3 * x), sig(x)
    res = calibrate(np.r_[p, np.nan, np.nan, 0.7], np.r_[t, 1.0, 0.0, np.nan])
    assert (res.n, res.n_excluded) == (200, 3)
    assert res.temperature == pytest.approx(fit_temperature(p, t), abs=1e-9)
    assert math.isnan(brier([np.nan], [1.0]))


def test_too_few_or_degenerate_sets_keep_temperature_one():
    few = calibrate([0.9, 0.2, 0.7], [1, 0, 0])
    assert few.temperature == 1.0 and "only 3" in few.note
    flat = calibrate([0.5] * 10, [1, 0] * 5)
    assert flat.temperature == 1.0 and "0.5" in flat.note
    one_class = calibrate([0.9, 0.8, 0.3, 0.6, 0.7], [1] * 5)
    assert one_class.temperature == 1.0 and "same hard label" in one_class.note
    with pytest.raises(LabelingError):
        calibrate([0.2, 1.3], [0, 1])


def test_ece_and_brier_by_hand():
    p, t = [0.1, 0.3, 0.8, 0.9], [0.0, 1.0, 1.0, 1.0]
    # 2 bins: [0, .5) holds .1, .3 -> |0.2 - 0.5| * 2/4 = 0.15; [.5, 1] holds .8, .9 ->
    # |0.85 - 1| * 2/4 = 0.075; ECE = 0.225
    assert expected_calibration_error(p, t, bins=2) == pytest.approx(0.225)
    # (0.01 + 0.49 + 0.04 + 0.01) / 4 = 0.1375
    assert brier(p, t) == pytest.approx(0.1375)
    # p = 1.0 falls in the last bin; a soft target 0.5 at p = 0.5 is calibrated
    assert expected_calibration_error([1.0, 0.5], [1.0, 0.5]) == pytest.approx(0.0)


def test_agreement_slope_says_what_a_temperature_cannot():
    """With targets sigmoid(x) and a judge p = sigmoid(c x), the NLL is least at slope 1/c:
    a sound judge (c = 2) gets 0.5 (= 1 / its temperature), an inverted one (c = -2) -0.5,
    which no temperature in (0, inf) can express; too few pairs or all 0.5 say nothing."""
    x = np.linspace(-3, 3, 41)
    t = 1 / (1 + np.exp(-x))
    for c in (2.0, -2.0):
        slope, n = agreement_slope(1 / (1 + np.exp(-c * x)), t)
        assert n == 41 and slope == pytest.approx(1 / c, abs=1e-4)
    assert math.isnan(agreement_slope([0.9, 0.1, 0.8], [1, 0, 1])[0])
    assert math.isnan(agreement_slope([0.5] * 10, [1, 0] * 5)[0])
