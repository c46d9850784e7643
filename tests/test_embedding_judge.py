"""The embedding ensemble judge (real all-MiniLM-L6-v2) and its Bradley-Terry heads."""

import math

import numpy as np
import pytest
from alignloop.config.labeling import JudgeSpec
from alignloop.labeling import Comparison, make_judge
from alignloop.labeling.embedding import BTEnsemble, EmbeddingEnsembleJudge


def _synthetic(n, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=dim)
    diffs = rng.normal(size=(n, dim))
    p = 1 / (1 + np.exp(-diffs @ w))
    labels = (rng.random(n) < p).astype(float)
    return w, diffs, labels


def test_bt_heads_are_antisymmetric_and_learn_the_direction():
    w, diffs, labels = _synthetic(400)
    heads = BTEnsemble(members=4, l2=0.1).fit(diffs, labels)
    p = heads.member_probs(diffs[:50])
    q = heads.member_probs(-diffs[:50])
    assert np.allclose(p + q, 1.0)
    cos = heads.weights.mean(0) @ w / (np.linalg.norm(heads.weights.mean(0)) * np.linalg.norm(w))
    assert cos > 0.9


def test_bt_heads_spread_falls_with_more_labels():
    _, diffs, labels = _synthetic(1000, seed=1)
    _, test, _ = _synthetic(200, seed=2)
    spread = []
    for n in (20, 100, 800):
        heads = BTEnsemble(members=8, l2=0.1, seed=0).fit(diffs[:n], labels[:n])
        spread.append(heads.member_probs(test).std(0).mean())
    assert spread[0] > spread[1] > spread[2]


def test_soft_labels_enter_as_weights():
    # One comparison labeled p=0.5 everywhere: the heads learn nothing -> p stays 0.5.
    d = np.random.default_rng(0).normal(size=(50, 4))
    heads = BTEnsemble(members=2).fit(d, np.full(50, 0.5))
    assert np.allclose(heads.member_probs(d), 0.5, atol=1e-6)


POLITE = ["I'm so sorry for the trouble, let me fix that for you right away.",
          "Thank you for telling us, I apologise and will sort it out today.",
          "Sorry about that! A replacement is on its way to you now.",
          "I understand how annoying that is; we'll make it right immediately.",
          "My apologies, I've refunded you and added a voucher.",
          "Thanks for your patience, I'm fixing this for you now."]
RUDE = ["Not my problem.", "Read the manual.", "Whatever, deal with it yourself.",
        "Stop complaining.", "That's your fault, not ours.", "We don't care, go away."]


def _comparisons(n, seed=0):
    rng = np.random.default_rng(seed)
    items, p = [], []
    for k in range(n):
        good, bad = POLITE[rng.integers(6)], RUDE[rng.integers(6)]
        prompt = f"My order number {k} arrived broken."
        if rng.random() < 0.5:
            items.append(Comparison(prompt, good, bad))
            p.append(1.0)
        else:
            items.append(Comparison(prompt, bad, good))
            p.append(0.0)
    return items, p


@pytest.fixture(scope="module")
def judge():
    return make_judge(JudgeSpec(kind="embedding_ensemble", members=8))


def test_unfitted_judge_has_no_verdict(judge):
    assert isinstance(judge, EmbeddingEnsembleJudge) and judge.learns
    fresh = EmbeddingEnsembleJudge(encoder=judge.encoder)
    (j,) = fresh.judge([Comparison("x", "a", "b")])
    assert not j.valid and math.isnan(j.p_a) and "no labels" in j.detail


def test_embedding_judge_learns_and_uncertainty_falls(judge):
    test, truth = _comparisons(24, seed=99)
    spreads, accs = [], []
    for n in (4, 60):
        items, p = _comparisons(n, seed=1)
        judge.fit(items, p)
        js = judge.judge(test)
        spreads.append(np.mean([j.uncertainty for j in js]))
        accs.append(np.mean([(j.p_a > 0.5) == (t > 0.5) for j, t in zip(js, truth, strict=True)]))
        assert all(j.valid and len(j.members) == 8 for j in js)
    assert spreads[1] < spreads[0]
    assert accs[1] >= 0.9
