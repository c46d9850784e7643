"""The eval stage saves model forwards without changing a number it writes: held-out pair
scores of a model an earlier round already scored are read back (bit for bit what scoring
again gives), and the policy's `hf` sampler hands its model to scoring instead of a second
load. Real tiny models throughout; only `load_model` and `score_token_sequences` are
wrapped, to count what ran."""

import copy
import json

import pytest
import torch
from alignloop.artifacts import read_parquet
from alignloop.config import load_config
from alignloop.data import read_pairs_parquet
from alignloop.labeling import logprobs
from alignloop.models import load_model, load_tokenizer, prompt_token_ids, response_token_ids
from alignloop.rounds import Loop
from alignloop.stages import evaluate as ev

from tests.test_loop import FAST
from tests.test_loop import TINY as TINY_CONFIG

TINY = "builtin:tiny-random"


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    """A perturbed copy of the tiny model (a second, different set of weights)."""
    model = copy.deepcopy(load_model(TINY))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    out = tmp_path_factory.mktemp("other")
    model.save_pretrained(out)
    load_tokenizer(TINY).save_pretrained(out)
    return str(out)


@pytest.fixture
def counted(monkeypatch):
    """{"load": [refs loaded by the eval stage], "score": [desc of each scoring pass]}."""
    import alignloop.models as models

    seen = {"load": [], "score": []}
    real_load, real_score = models.load_model, logprobs.score_token_sequences

    def load(ref, *a, **k):
        seen["load"].append(ref)
        return real_load(ref, *a, **k)

    def score(model, seqs, **k):
        seen["score"].append(k.get("desc", ""))
        return real_score(model, seqs, **k)

    monkeypatch.setattr(models, "load_model", load)
    monkeypatch.setattr(logprobs, "score_token_sequences", score)
    return seen


def _seqs(n: int) -> list[tuple[list[int], list[int]]]:
    tok = load_tokenizer(TINY)
    out = []
    for i in range(n):
        prompt = f"Question {i}: what is {i} plus {i * 3}?"
        out.append((prompt_token_ids(tok, prompt),
                    response_token_ids(tok, prompt, "It is " + "many " * (i % 4) + str(4 * i))))
    return out


def test_known_scores_and_a_loaded_model_are_not_computed_again(other_model, counted):
    kl, held = _seqs(5), _seqs(9)
    models = {"policy": other_model, "reference": TINY, "base": TINY}
    fresh = ev.score_sequences(models, kl, held)
    assert fresh[1]["policy"] != fresh[1]["base"]                  # two different models
    assert counted["load"] == [other_model, TINY] and len(counted["score"]) == 4
    counted["load"].clear(), counted["score"].clear()

    preloaded = {other_model: load_model(other_model)}
    counted["load"].clear()
    again = ev.score_sequences(models, kl, held, known=[{}, {TINY: fresh[1]["base"]}],
                               loaded=preloaded)
    assert again == fresh                                           # the same numbers, exactly
    assert counted["load"] == [TINY]                                # the policy was handed in
    assert len(counted["score"]) == 3                               # base scores only kl
    assert preloaded == {}                                          # not kept past scoring

    counted["load"].clear()
    known = [{TINY: fresh[0]["base"]}, {TINY: fresh[1]["base"]}]
    ev.score_sequences({"base": TINY}, kl, held, known=known)
    assert counted["load"] == []                                    # known everywhere: no load


def test_known_heldout_scores_read_the_first_round_that_scored_a_model(tmp_path):
    from alignloop.evaluation import HeldoutPair, write_eval

    nan = float("nan")
    rows = {0: [HeldoutPair("p1", "", 1.0, -1.0, -2.0, -3.0, -4.0, -3.0, -4.0),
                HeldoutPair("p2", "", 1.0, -5.0, -6.0, -7.0, -8.0, nan, nan)],
            1: [HeldoutPair("p1", "", 1.0, -9.0, -9.5, -1.0, -2.0, -30.0, -40.0)]}
    for k, held in rows.items():
        write_eval(tmp_path / f"r{k}", heldout=held)
    known = ev.known_heldout_scores([
        (tmp_path / "r0", {"policy": "pol0", "reference": "base", "base": "base"}),
        (tmp_path / "r1", {"policy": "pol1", "reference": "pol0", "base": "base"}),
        (tmp_path / "none", {"policy": "pol2", "reference": "pol1", "base": "base"})])
    assert known["pol0"] == {"p1": (-1.0, -2.0), "p2": (-5.0, -6.0)}
    assert known["pol1"] == {"p1": (-9.0, -9.5)}
    assert known["base"] == {"p1": (-3.0, -4.0), "p2": (-7.0, -8.0)}  # round 0's, NaN skipped


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    # fp32 pinned: what is reused is checked byte for byte against fp32 forwards (under
    # bf16-mixed, `auto` on a CPU with fast bf16, the policy is scored again: not covered)
    loop = Loop(load_config(TINY_CONFIG, [*FAST, "model.precision=fp32"]), run_dir)
    assert loop.run()["rounds"] == [0, 1]
    return loop


@pytest.mark.slow   # the default run keeps the byte-equality test below
def test_round_one_reads_held_out_scores_that_equal_fresh_ones(tiny_run):
    loop = tiny_run
    r0 = read_parquet(loop.rdir(0) / "eval" / "heldout_pairs.parquet")
    r1 = read_parquet(loop.rdir(1) / "eval" / "heldout_pairs.parquet")
    assert r0 and [r["pair_id"] for r in r0] == [r["pair_id"] for r in r1]
    # scored from scratch by the three models of round 1: the file holds exactly these
    heldout = read_pairs_parquet(loop.rdir(0) / "heldout_pairs.parquet")
    tok = load_tokenizer(str(loop.rdir(1) / "policy"))
    seqs = [s for p in heldout for s in ev._pair_tokens(tok, p)]
    models = {"policy": str(loop.rdir(1) / "policy"), "reference": loop.reference(1),
              "base": loop.base}
    assert loop.reference(1) == str(loop.rdir(0) / "policy")
    fresh, = ev.score_sequences(models, seqs)
    for n, row in enumerate(r1):
        for m in models:
            assert (row[f"logp_{m}_chosen"], row[f"logp_{m}_rejected"]) == (
                fresh[m][2 * n], fresh[m][2 * n + 1]), (m, n)
    assert r1[0]["logp_policy_chosen"] != r1[0]["logp_reference_chosen"]


def _redo_eval(loop, counted):
    import shutil

    shutil.rmtree(loop.rdir(1) / "eval")
    loop.evaluate(1)
    return counted["load"], counted["score"]


def test_round_one_eval_skips_known_forwards_and_writes_the_same_bytes(tiny_run, counted):
    loop = tiny_run
    before = {f.name: f.read_bytes() for f in (loop.rdir(1) / "eval").glob("*.parquet")}
    loads, scores = _redo_eval(loop, counted)
    after = {f.name: f.read_bytes() for f in (loop.rdir(1) / "eval").glob("*.parquet")}
    assert after == before
    policy = str(loop.rdir(1) / "policy")
    assert loads.count(policy) == 1                   # the sampler's model scored too
    # the policy scores only the held-out pairs (its KL samples' log-probs are the ones its
    # sampler recorded); the reference (round 0's policy) and the base only the KL samples
    assert sorted(scores) == ["log-probs (base)", "log-probs (policy)", "log-probs (reference)"]


def test_policy_kl_logprobs_from_the_sampler_match_a_separate_forward(tiny_run, monkeypatch,
                                                                       counted):
    """With the sampler's model not handed over, the policy scores its KL samples in a
    separate forward: the same rows, log-probs within 1e-4 (decode with a KV cache vs one
    pass), every other column identical."""
    loop = tiny_run
    path = loop.rdir(1) / "eval" / "samples.parquet"
    recorded = read_parquet(path)
    real = ev.sample_heldout
    monkeypatch.setattr(ev, "sample_heldout", lambda *a, **k: real(*a, **{**k, "keep": None}))
    try:
        scores = list(_redo_eval(loop, counted)[1])
        separate = read_parquet(path)
    finally:
        monkeypatch.setattr(ev, "sample_heldout", real)
        _redo_eval(loop, counted)                      # the module's run dir as it was
    assert scores.count("log-probs (policy)") == 2     # KL samples and held-out pairs
    kl = [n for n, r in enumerate(recorded) if r["logp_policy"] == r["logp_policy"]]
    assert kl and len(recorded) == len(separate)
    for n, (a, b) in enumerate(zip(recorded, separate, strict=True)):
        if n in kl:
            assert a["logp_policy"] == pytest.approx(b["logp_policy"], abs=1e-4), n
            assert a["logp_policy"] != 0.0
        assert {k: v for k, v in a.items() if k != "logp_policy"} == \
            {k: v for k, v in b.items() if k != "logp_policy"}, n


@pytest.mark.slow   # the default run keeps the byte-equality test below
def test_no_reuse_from_a_round_run_with_another_placement(tiny_run, counted):
    loop = tiny_run
    rs = loop.state.round_state(0)
    recorded = json.loads(json.dumps(rs["placement"]))
    assert (recorded["device"], recorded["precision"]) == ("cpu", "fp32")
    rs["placement"] = {**recorded, "precision": "bf16-mixed"}
    try:
        before = (loop.rdir(1) / "eval" / "heldout_pairs.parquet").read_bytes()
        _, scores = _redo_eval(loop, counted)
    finally:
        rs["placement"] = recorded
    # nothing is reused from round 0: the reference and the base score both lists; the
    # policy still scores only the held-out pairs (its sampler recorded its KL samples')
    assert sorted(scores) == ["log-probs (base)"] * 2 + ["log-probs (policy)"] + \
        ["log-probs (reference)"] * 2
    assert (loop.rdir(1) / "eval" / "heldout_pairs.parquet").read_bytes() == before
