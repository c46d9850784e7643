"""Pair selection strategies and routing, on scripted judges (our own protocol boundary)."""

import math

import numpy as np
import pytest
from alignloop.config.labeling import RoutingConfig, SelectionConfig
from alignloop.labeling import Comparison, Judgement, LabelingError
from alignloop.labeling.ensemble import Ensemble, Member
from alignloop.labeling.route import route
from alignloop.labeling.select import CandidateGroup, candidate_pairs, select_pairs, similarity

STRATEGIES = ["max_min", "random", "uncertainty", "double_thompson", "apl", "bald", "bald_diverse"]


class UtilityJudge:
    """M members, each a noisy copy of a latent utility read from the response text."""

    learns = False

    def __init__(self, utility, n_members=4, noise=0.5, seed=0, name="utility"):
        self.utility, self.n_members, self.name = utility, n_members, name
        rng = np.random.default_rng(seed)
        self.offsets: dict[str, np.ndarray] = {}
        self.rng, self.noise = rng, noise

    def _u(self, text):
        if text not in self.offsets:
            self.offsets[text] = self.rng.normal(0, self.noise, self.n_members)
        return self.utility(text) + self.offsets[text]

    def judge(self, items):
        out = []
        for c in items:
            d = self._u(c.a) - self._u(c.b)
            out.append(Judgement.from_members(1 / (1 + np.exp(-d))))
        return out


def _groups(n_prompts=12, k=5, seed=0, duplicates=True):
    rng = np.random.default_rng(seed)
    groups = []
    for p in range(n_prompts):
        responses = [f"answer {p}-{i} quality {rng.integers(0, 10)}" for i in range(k)]
        if duplicates:
            responses[-1] = responses[0]               # an exact duplicate
            responses[-2] = responses[1] + " ."        # a near duplicate
        pol = tuple(float(x) for x in rng.normal(-20, 5, k))
        ref = tuple(float(x) for x in rng.normal(-20, 5, k))
        groups.append(CandidateGroup(f"p{p}", f"prompt {p}", tuple(responses), "s", pol, ref))
    return groups


def _quality(text):
    return float(text.split()[-1]) if text.split()[-1].isdigit() else float(text.split()[-2])


def _judged(groups, judge, near_duplicate=0.9):
    pairs = [candidate_pairs(g, near_duplicate) for g in groups]
    keys = [(g, i, j) for g, gp in enumerate(pairs) for i, j in gp]
    js = judge.judge([Comparison(groups[g].prompt, groups[g].responses[i], groups[g].responses[j])
                      for g, i, j in keys])
    return pairs, dict(zip(keys, js, strict=True))


def test_similarity_and_near_duplicates_are_never_candidates():
    assert similarity("a b c", "a  b c") == 1.0
    assert similarity("the cat sat", "a dog ran") == 0.0
    g = _groups(1)[0]
    pairs = candidate_pairs(g, 0.9)
    k = len(g.responses)
    assert (0, k - 1) not in pairs          # identical
    assert (1, k - 2) not in pairs          # word-level near-identical
    assert len(pairs) == k * (k - 1) // 2 - 2


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("budget,per_prompt", [(0, 1), (5, 1), (20, 2)])
def test_strategies_return_valid_pairs_within_budget(strategy, budget, per_prompt):
    groups = _groups()
    pairs, judged = _judged(groups, UtilityJudge(_quality))
    cfg = SelectionConfig(strategy=strategy, budget=budget, pairs_per_prompt=per_prompt,
                          random_share=0.2)
    picks = select_pairs(groups, pairs, judged, cfg, beta=0.1)
    expected_budget = budget or per_prompt * len(groups)
    assert 0 < len(picks) <= expected_budget
    seen = set()
    for p in picks:
        assert p.i < p.j and (p.i, p.j) in pairs[p.group]
        r = groups[p.group].responses
        assert similarity(r[p.i], r[p.j]) < 0.9
        assert (p.group, p.i, p.j) not in seen
        seen.add((p.group, p.i, p.j))
    per_group = np.bincount([p.group for p in picks], minlength=len(groups))
    assert per_group.max() <= per_prompt
    n_random = sum(p.reason == "random share" for p in picks)
    if strategy != "apl":  # apl keeps only its high-entropy prompts, the rest of the budget waits
        assert len(picks) == expected_budget
        assert n_random == round(0.2 * expected_budget)


def test_max_min_picks_best_and_worst():
    groups = _groups(duplicates=False)
    pairs, judged = _judged(groups, UtilityJudge(_quality, noise=0.0))
    picks = select_pairs(groups, pairs, judged, SelectionConfig(strategy="max_min", random_share=0))
    for p in picks:
        q = [_quality(r) for r in groups[p.group].responses]
        assert {q[p.i], q[p.j]} == {max(q), min(q)}


def test_uncertainty_picks_the_pair_members_disagree_on():
    groups = _groups(duplicates=False)
    pairs, judged = _judged(groups, UtilityJudge(_quality, noise=1.0))
    picks = select_pairs(groups, pairs, judged, SelectionConfig(strategy="uncertainty",
                                                                random_share=0))
    for p in picks:
        spreads = [judged[(p.group, i, j)].uncertainty for i, j in pairs[p.group]]
        assert judged[(p.group, p.i, p.j)].uncertainty == pytest.approx(max(spreads))


def test_double_thompson_pairs_include_a_plausible_best():
    # With a confident ensemble, both draws agree on the best, so the pair is (best, second
    # best under some member): the first slot is the true best in every group.
    groups = _groups(duplicates=False)
    pairs, judged = _judged(groups, UtilityJudge(lambda t: 5 * _quality(t), noise=0.01))
    picks = select_pairs(groups, pairs, judged,
                         SelectionConfig(strategy="double_thompson", random_share=0))
    for p in picks:
        q = [_quality(r) for r in groups[p.group].responses]
        best = [i for i, x in enumerate(q) if x == max(q)]
        assert p.i in best or p.j in best


def test_apl_takes_high_entropy_prompts_and_largest_implicit_gap():
    groups = _groups(duplicates=False)
    pairs, judged = _judged(groups, UtilityJudge(_quality))
    cfg = SelectionConfig(strategy="apl", random_share=0, apl_prompt_share=0.5)
    picks = select_pairs(groups, pairs, judged, cfg, beta=0.1)
    entropy = {g.prompt_id: -np.mean(g.policy_logps) for g in groups}
    top = sorted(entropy, key=lambda k: -entropy[k])[:6]
    assert {groups[p.group].prompt_id for p in picks} == set(top)
    for p in picks:
        g = groups[p.group]
        r = np.array(g.policy_logps) - np.array(g.reference_logps)
        gaps = [abs(r[i] - r[j]) for i, j in pairs[p.group]]
        assert abs(r[p.i] - r[p.j]) == pytest.approx(max(gaps))


def test_apl_without_logprobs_names_what_is_missing():
    g = CandidateGroup("p0", "x", ("a b", "c d"))
    pairs, judged = _judged([g], UtilityJudge(lambda t: 0.0))
    with pytest.raises(LabelingError, match="reference_logprob"):
        select_pairs([g], pairs, judged, SelectionConfig(strategy="apl"))


def test_random_share_is_seeded():
    groups = _groups()
    pairs, judged = _judged(groups, UtilityJudge(_quality))
    cfg = SelectionConfig(strategy="random", budget=6, seed=3)
    a = select_pairs(groups, pairs, judged, cfg)
    b = select_pairs(groups, pairs, judged, cfg)
    assert [(p.group, p.i, p.j) for p in a] == [(p.group, p.i, p.j) for p in b]


# --------------------------------------------------------------------------- routing


def J(p, spread=0.0, consistent=True):
    return Judgement(p, (p,), spread, consistent, True, "")


def test_routing_follows_the_thresholds_and_budget():
    cfg = RoutingConfig(auto_threshold=0.25, max_auto_uncertainty=0.1)
    js = [J(0.9), J(0.1), J(0.74), J(0.95, spread=0.2), J(0.95, consistent=False), J(0.55),
          Judgement.invalid(1, "unparsable verdict"), None]
    routes = route(js, cfg, human_budget=3)
    d = [r.decision for r in routes]
    assert d[:2] == ["auto", "auto"]
    assert "within 0.25" in routes[2].reason
    assert "spread 0.20" in routes[3].reason
    assert "order-inconsistent" in routes[4].reason
    # six pairs want people; the three most informative get them: the unreadable one and
    # the no-judge one (informativeness 1.0), then p=0.55 (0.45 from 0.5).
    assert d[6] == d[7] == d[5] == "human"
    assert d[2] == d[3] == d[4] == "drop"
    assert all("budget (3) spent" in routes[n].reason for n in (2, 3, 4))
    assert [r.decision for r in route(js, RoutingConfig(unparsable="drop"),
                                      human_budget=10)][6] == "drop"


def test_routing_boundary_is_inclusive():
    routes = route([J(0.75), J(0.7499)], RoutingConfig(auto_threshold=0.25), human_budget=0)
    assert [r.decision for r in routes] == ["auto", "drop"]


# --------------------------------------------------------------------------- ensemble


class Fixed:
    learns = False

    def __init__(self, name, members, valid=True):
        self.name, self.members, self.valid = name, members, valid
        self.n_members = len(members)

    def judge(self, items):
        if not self.valid:
            return [Judgement.invalid(self.n_members, "unparsable") for _ in items]
        return [Judgement.from_members(self.members) for _ in items]


def test_ensemble_pools_members_with_weights_and_temperatures():
    e = Ensemble([Member(Fixed("x", [0.9, 0.7]), weight=1.0), Member(Fixed("y", [0.2]), 2.0)])
    (j,) = e.judge([Comparison("p", "a", "b")])
    # weights: x's two members 0.5 each, y's one member 2.0 -> mean (0.45+0.35+0.4)/3 = 0.4
    assert j.p_a == pytest.approx((0.5 * 0.9 + 0.5 * 0.7 + 2.0 * 0.2) / 3.0)
    assert len(j.members) == 3
    hot = e.with_temperatures({"y": 1e6})
    (h,) = hot.judge([Comparison("p", "a", "b")])
    assert h.members[2] == pytest.approx(0.5, abs=1e-5)


def test_ensemble_skips_an_invalid_judge_and_is_invalid_when_all_are():
    e = Ensemble([Member(Fixed("x", [0.8])), Member(Fixed("bad", [0.1, 0.1], valid=False))])
    (j,) = e.judge([Comparison("p", "a", "b")])
    assert j.valid and j.p_a == pytest.approx(0.8)
    assert math.isnan(j.members[1]) and "bad: unparsable" in j.detail
    (k,) = Ensemble([Member(Fixed("bad", [0.1], valid=False))]).judge([Comparison("p", "a", "b")])
    assert not k.valid and math.isnan(k.p_a)
