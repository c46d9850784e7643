"""Agreement coefficients against hand-computed tables and published examples."""

import math

import pytest
from alignloop.labeling import LabelingError
from alignloop.labeling.agreement import (
    cohen_kappa,
    cohen_kappa_interval,
    krippendorff_alpha,
    percent_agreement,
)

N = None   # missing


def units(*coders):
    """{unit: {coder: value}} from one row of values per coder (None: not coded)."""
    out = {}
    for c, row in enumerate(coders):
        for u, v in enumerate(row):
            if v is not None:
                out.setdefault(u, {})[f"c{c}"] = v
    return out


def test_alpha_small_table_by_hand():
    # Units (coder 1, coder 2): (a, a), (a, b), (b, b).
    # Coincidences (each unit has m = 2 values, so each ordered pair adds 1/(2-1) = 1):
    #   o_aa = 2, o_ab = o_ba = 1, o_bb = 2;  n_a = n_b = 3, n = 6.
    # D_o = (o_ab + o_ba) / n = 2/6;  D_e = (n_a n_b + n_b n_a) / (n (n-1)) = 18/30.
    # alpha = 1 - (2/6) / (18/30) = 1 - 10/18 = 4/9.
    data = units(["a", "a", "b"], ["a", "b", "b"])
    assert krippendorff_alpha(data) == pytest.approx(4 / 9, abs=1e-12)
    # a unit coded once is not pairable, and a None value is missing: alpha is unchanged
    data[3] = {"c0": "tie"}
    data[4] = {"c0": "b", "c1": None}
    data[5] = {"c0": "a", "c1": float("nan")}
    assert krippendorff_alpha(data) == pytest.approx(4 / 9, abs=1e-12)
    # percent agreement: sum_c o_cc / n = (2 + 2) / 6 = 2/3 -- two of the three units agree
    assert percent_agreement(data) == pytest.approx(2 / 3, abs=1e-12)


def test_alpha_three_coders_by_hand():
    # Unit 1: (a, a, b): m = 3, each of the 6 ordered pairs adds 1/2:
    #   o_aa += 2 * 1/2 = 1, o_ab += 2 * 1/2 = 1, o_ba += 1.
    # Unit 2: (b, b, missing): o_bb += 2.
    # o = [[1, 1], [1, 2]], n_a = 2, n_b = 3, n = 5.
    # D_o = 2/5;  D_e = 2 * 2 * 3 / (5 * 4) = 12/20;  alpha = 1 - (2/5)/(12/20) = 1/3.
    data = units(["a", "b"], ["a", "b"], ["b", N])
    assert krippendorff_alpha(data) == pytest.approx(1 / 3, abs=1e-12)


def test_alpha_published_examples():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", sec. E: 4 observers,
    # 12 units, missing data. Reported: nominal .743, ordinal .815, interval .849, ratio .797.
    paper = units([1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
                  [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
                  [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
                  [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N])
    assert round(krippendorff_alpha(paper, "nominal"), 3) == 0.743
    assert round(krippendorff_alpha(paper, "ordinal"), 3) == 0.815
    assert round(krippendorff_alpha(paper, "interval"), 3) == 0.849
    assert round(krippendorff_alpha(paper, "ratio"), 3) == 0.797
    # Wikipedia's computational example (3 coders, 15 units): nominal 0.691, interval 0.811.
    wiki = units([N, N, N, N, N, 3, 4, 1, 2, 1, 1, 3, 3, N, 3],
                 [1, N, 2, 1, 3, 3, 4, 3, N, N, N, N, N, N, N],
                 [N, N, 2, 1, 3, 4, 4, N, 2, 1, 1, 3, 3, N, 4])
    assert krippendorff_alpha(wiki) == pytest.approx(0.691358, abs=1e-6)
    assert krippendorff_alpha(wiki, "interval") == pytest.approx(0.810845, abs=1e-6)


def test_alpha_perfect_undefined_and_relabeling():
    choices = units(["a", "b", "tie", "both_bad"], ["a", "b", "tie", "both_bad"])
    assert krippendorff_alpha(choices) == 1.0
    assert percent_agreement(choices) == 1.0
    # one value everywhere: no expected disagreement, alpha undefined
    assert math.isnan(krippendorff_alpha(units(["a", "a"], ["a", "a"])))
    # nothing pairable
    assert math.isnan(krippendorff_alpha(units(["a", N], [N, "b"])))
    assert math.isnan(percent_agreement({}))
    # nominal alpha does not care what the labels are called
    data = units(["a", "b", "a", "tie"], ["a", "a", "a", "tie"], ["b", "b", N, "a"])
    renamed = {u: {c: {"a": 1, "b": "x", "tie": (0,)}[v] for c, v in cs.items()}
               for u, cs in data.items()}
    assert krippendorff_alpha(renamed) == pytest.approx(krippendorff_alpha(data), abs=1e-12)
    with pytest.raises(LabelingError, match="level"):
        krippendorff_alpha(data, "cardinal")


def test_cohen_kappa_two_by_two_by_hand():
    # 50 items: both "a" 20, A says a / B says b 5, A b / B a 10, both "b" 15.
    # p_o = 35/50 = 0.7; P_A(a) = 25/50 = 0.5, P_B(a) = 30/50 = 0.6;
    # p_e = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4.
    pairs = [("a", "a")] * 20 + [("a", "b")] * 5 + [("b", "a")] * 10 + [("b", "b")] * 15
    a = {i: x for i, (x, _) in enumerate(pairs)}
    b = {i: y for i, (_, y) in enumerate(pairs)}
    assert cohen_kappa(a, b) == pytest.approx(0.4, abs=1e-12)
    # items only one coder labeled do not count
    a_more = {**a, "extra1": "a", "extra2": "b"}
    b_more = {**b, "extra3": "tie", 0: "a"}
    assert cohen_kappa(a_more, b_more) == pytest.approx(0.4, abs=1e-12)


def test_cohen_kappa_identical_and_undefined():
    labels = {1: "a", 2: "b", 3: "tie", 4: "a"}
    assert cohen_kappa(labels, dict(labels)) == 1.0
    assert math.isnan(cohen_kappa({1: "a"}, {2: "a"}))             # nothing shared
    assert math.isnan(cohen_kappa({1: "a", 2: "a"}, {1: "a", 2: "a"}))   # p_e = 1
    # systematic disagreement on a balanced set: p_o = 0, p_e = 0.5, kappa = -1
    assert cohen_kappa({1: "a", 2: "b"}, {1: "b", 2: "a"}) == pytest.approx(-1.0)


def test_cohen_kappa_interval_brackets_kappa_and_narrows_with_items():
    pairs = [("a", "a")] * 20 + [("a", "b")] * 5 + [("b", "a")] * 10 + [("b", "b")] * 15
    a = {i: x for i, (x, _) in enumerate(pairs)}
    b = {i: y for i, (_, y) in enumerate(pairs)}
    lo, hi = cohen_kappa_interval(a, b)
    assert lo < 0.4 < hi
    # large-sample standard error of this kappa (Fleiss, Cohen & Everitt 1969) is about
    # 0.125 at 50 items, so the 95% interval is about 0.5 wide
    assert 0.35 < hi - lo < 0.65
    assert cohen_kappa_interval(a, b) == (lo, hi)                 # seeded: the same twice
    # four times the items: about half the width
    a4 = {(k, i): x for k in range(4) for i, x in a.items()}
    b4 = {(k, i): y for k in range(4) for i, y in b.items()}
    lo4, hi4 = cohen_kappa_interval(a4, b4)
    assert 0.4 < (hi4 - lo4) / (hi - lo) < 0.6
    # an inverted coder: the whole interval below zero
    flipped = {i: {"a": "b", "b": "a"}[y] for i, y in b.items()}
    assert cohen_kappa_interval(a, flipped)[1] < 0


def test_cohen_kappa_interval_undefined():
    assert all(math.isnan(x) for x in cohen_kappa_interval({1: "a"}, {1: "a"}))   # one item
    same = {i: "a" for i in range(10)}
    assert all(math.isnan(x) for x in cohen_kappa_interval(same, dict(same)))      # p_e = 1
