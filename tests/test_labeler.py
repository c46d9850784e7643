"""The labeler end to end: completions -> candidates -> queue -> votes -> soft-labeled pairs,
and the `alignloop judge` command on the tiny config."""

import json
import math
from pathlib import Path

import pytest
from alignloop.artifacts import read_parquet
from alignloop.cli import main
from alignloop.config import config_from_dict, load_config
from alignloop.labeling import LabelingError
from alignloop.labeling.ensemble import Ensemble
from alignloop.labeling.handoff import HumanVote, MemoryQueue
from alignloop.labeling.labeler import (
    groups_from_completions,
    judge_candidates,
    learn_from_labels,
    queue_items,
    soft_labels,
)
from alignloop.labeling.labels import read_labels, write_labels

ROOT = Path(__file__).resolve().parents[1]

GOOD = ["I'm so sorry, I will fix it today and refund you.", "Thank you! Happy to help anytime.",
        "We apologise; a replacement ships tomorrow.", "Great question, glad you asked!"]
BAD = ["Not my problem.", "Whatever.", "Read the manual yourself.", "Stop bothering us."]


def completions(n_prompts=8, k=4):
    rows = []
    for p in range(n_prompts):
        prompt = [{"role": "user", "content": f"Order {p} arrived broken, what now?"}]
        for s in range(k):
            text = (GOOD if s % 2 == 0 else BAD)[(p + s) % 4] + ("" if s < 2 else f" (ref {p}{s})")
            rows.append({"prompt_id": f"p{p}", "sample_index": s, "text": text,
                         "prompt": json.dumps(prompt), "slice": "complaint" if p < 4 else "other",
                         "logprob_sum": -10.0 - s})
    return rows


def score(prompt, response):
    """A scripted utility: kind words good, curt words bad, with a tie-ish middle."""
    return sum(w in response.lower() for w in ("sorry", "thank", "glad", "apologise")) - \
        sum(w in response.lower() for w in ("not my", "whatever", "manual", "stop"))


def labeling_cfg(**human):
    return config_from_dict({"labeling": {
        "judges": [{"kind": "python", "function": "tests.test_labeler:score", "name": "kind"}],
        "selection": {"strategy": "uncertainty", "pairs_per_prompt": 2, "random_share": 0.25},
        "routing": {"auto_threshold": 0.3},
        "human": {"budget": 3, **human}}}).labeling


def test_groups_need_prompt_text():
    rows = completions()
    del rows[3]["prompt"]
    with pytest.raises(LabelingError, match="row 4: missing column 'prompt'"):
        groups_from_completions(rows)


def test_label_round_trip_with_people():
    cfg = labeling_cfg()
    groups = groups_from_completions(completions())
    ensemble = Ensemble.from_specs(cfg.judges)
    table = judge_candidates(groups, ensemble, cfg, round=2)
    sel = table.selected()
    assert len(sel) == 16                                   # 8 prompts x 2 per prompt
    decisions = [r["decision"] for r in sel]
    assert decisions.count("human") == 3                    # the human budget
    for r in table.rows:
        assert r["decision"] in ("auto", "human", "drop") and r["reason"]
        if r["decision"] == "auto":
            assert abs(r["p_a"] - 0.5) >= 0.3 and r["order_consistent"]

    queue = MemoryQueue()
    items = queue_items(table, cfg.human)
    assert queue.submit(items) == 3 and queue.submit(items) == 0   # idempotent by item id
    assert [i.priority for i in items] == sorted((i.priority for i in items), reverse=True)
    queue.answer("ann1", lambda it: "a")
    assert queue.pending(2) == 0
    votes = queue.votes(2) + [HumanVote(items[0].item_id, "ann2", "a", 2)]

    result = soft_labels(table, votes, cfg, round=2, ensemble=ensemble)
    by_source = {s: [p for p in result.pairs if p.source == s] for s in ("judge", "human")}
    assert len(by_source["human"]) == 3
    assert len(by_source["judge"]) == decisions.count("auto")
    for p in result.pairs:
        assert 0.5 < p.p_chosen < 1.0 and p.round == 2       # soft, never certainty
    two = next(p for p in by_source["human"] if p.n_votes == 2)
    one = next(p for p in by_source["human"] if p.n_votes == 1)
    assert two.p_chosen > one.p_chosen                      # a second agreeing vote adds confidence
    assert one.p_chosen == pytest.approx(cfg.aggregation.prior_reliability, abs=0.05)
    assert result.calibration["kind"]["n"] == 3            # fitted on the 3 human pairs
    # labels.parquet keeps every raw judgement (one per judge per selected pair) and vote
    assert sum(lab.source == "judge" for lab in result.labels) == 16
    assert sum(lab.source == "human" for lab in result.labels) == 4
    assert len(result.dropped) == decisions.count("drop")


def test_labels_file_round_trips_and_teaches_the_embedding_judge(tmp_path):
    cfg = labeling_cfg()
    groups = groups_from_completions(completions())
    table = judge_candidates(groups, Ensemble.from_specs(cfg.judges), cfg)
    queue = MemoryQueue()
    queue.submit(queue_items(table, cfg.human))
    queue.answer("ann1", lambda it: "a" if score(it.prompt, it.a) > score(it.prompt, it.b) else "b")
    result = soft_labels(table, queue.votes(0), cfg)
    path = write_labels(tmp_path / "labels.parquet", result.labels)
    back = read_labels(path)
    assert [lab.to_row() for lab in back] == [lab.to_row() for lab in result.labels]

    cfg2 = config_from_dict({"labeling": {"judges": [
        {"kind": "python", "function": "tests.test_labeler:score", "name": "kind"},
        {"kind": "embedding_ensemble", "members": 4}]}}).labeling
    ensemble = Ensemble.from_specs(cfg2.judges)
    emb = ensemble.members[1].judge
    assert not emb.heads.fitted
    ensemble, report = learn_from_labels(ensemble, back, cfg2)
    assert emb.heads.fitted and emb.heads.n_labels == 3
    assert "kind" in report and math.isfinite(report["kind"]["temperature"])


def test_no_judges_sends_everything_selected_to_people():
    cfg = config_from_dict({"labeling": {"human": {"budget": 5}}}).labeling
    table = judge_candidates(groups_from_completions(completions()), None, cfg)
    sel = table.selected()
    assert [r["decision"] for r in sel].count("human") == 5
    assert all("no judges" in r["reason"] for r in sel)


def test_cli_judge_on_the_tiny_config(tmp_path, capsys):
    src = tmp_path / "completions.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in completions()))
    out = tmp_path / "candidates.parquet"
    assert main(["judge", str(ROOT / "configs/tiny.yaml"), "--candidates", str(src),
                 "--out", str(out)]) == 0
    rows = read_parquet(out)
    for col in ("p_a", "uncertainty", "decision", "reason"):
        assert col in rows[0]
    cfg = load_config(ROOT / "configs/tiny.yaml")
    selected = [r for r in rows if r["selected"]]
    assert sum(r["decision"] == "human" for r in selected) <= cfg.labeling.human.budget
    assert "candidate pairs" in capsys.readouterr().out

    assert main(["judge", str(ROOT / "configs/tiny.yaml"), "--candidates",
                 str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_judge_guards_its_output(tmp_path, capsys):
    """`judge --out` replaced any file without a word: its own --candidates, a run's
    candidates.parquet, a file named .csv written as JSONL. Its JSONL had NaN (not JSON)
    and the prompt as JSON text inside a string."""
    cfg = str(ROOT / "configs/tiny.yaml")
    src = tmp_path / "completions.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in completions()))
    before = src.read_bytes()
    run = tmp_path / "run"
    (run / "round_001").mkdir(parents=True)
    (run / "state.json").write_text(json.dumps({"version": 1, "rounds": {}}))
    (run / "round_001" / "candidates.parquet").write_bytes(b"the run's own")
    for out, want in ((src, "is the --candidates file itself"),
                      (run / "round_001" / "candidates.parquet", "is in the run"),
                      (tmp_path / "c.csv", "written as .parquet or .jsonl")):
        assert main(["judge", cfg, "--candidates", str(src), "--out", str(out), "--force"]) == 2
        assert want in capsys.readouterr().err
    assert src.read_bytes() == before and not (tmp_path / "c.csv").exists()
    assert (run / "round_001" / "candidates.parquet").read_bytes() == b"the run's own"

    out = tmp_path / "c.jsonl"
    assert main(["judge", cfg, "--candidates", str(src), "--out", str(out)]) == 0
    text = out.read_text()
    rows = [json.loads(x, parse_constant=lambda c: pytest.fail(f"{c} in JSONL")) for x in
            text.splitlines()]
    given = {json.dumps(json.loads(c["prompt"])) for c in completions()}   # chat messages
    assert {json.dumps(r["prompt"]) for r in rows} <= given       # as given, not JSON text
    assert any(r["selection_score"] is None for r in rows)        # NaN in parquet: null
    assert main(["judge", cfg, "--candidates", str(src), "--out", str(out)]) == 2
    assert "exists; give another path, or --force" in capsys.readouterr().err
    assert main(["judge", cfg, "--candidates", str(src), "--out", str(out), "--force"]) == 0


def test_candidates_survive_a_round_trip_through_parquet(tmp_path):
    from alignloop.artifacts import write_parquet
    from alignloop.labeling.labeler import candidates_from_rows

    cfg = labeling_cfg()
    ensemble = Ensemble.from_specs(cfg.judges)
    table = judge_candidates(groups_from_completions(completions()), ensemble, cfg)
    back = candidates_from_rows(read_parquet(write_parquet(tmp_path / "c.parquet", table.rows)))
    assert back.by_judge.keys() == table.by_judge.keys()
    for name in table.by_judge:
        assert [j.p_a for j in back.by_judge[name]] == pytest.approx(
            [j.p_a for j in table.by_judge[name]])
    votes = [HumanVote(r["item_id"], "ann", "a") for r in table.selected("human")]
    a = soft_labels(table, votes, cfg, ensemble=ensemble)
    b = soft_labels(back, votes, cfg, ensemble=ensemble)
    assert [p.to_row() for p in a.pairs] == [p.to_row() for p in b.pairs]


def test_cli_judge_names_a_bad_row(tmp_path, capsys):
    src = tmp_path / "c.jsonl"
    src.write_text(json.dumps(completions()[0]) + "\n{not json\n")
    assert main(["judge", str(ROOT / "configs/tiny.yaml"), "--candidates", str(src),
                 "--out", str(tmp_path / "o.parquet")]) == 2
    err = capsys.readouterr().err
    assert "c.jsonl row 2: " in err and "valid JSON" in err   # the bad row, named
    assert not (tmp_path / "o.parquet").exists()


def unkind(prompt, response):
    """A planted inverted judge: prefers what `score` (the people's utility) does not."""
    return -score(prompt, response)


@pytest.mark.parametrize("judge, set_aside", [("unkind", True), ("score", False)])
def test_a_judge_that_disagrees_with_people_is_set_aside_and_its_pairs_go_to_them(judge, set_aside):
    """Round A: people label every selected pair (the judge decides none). Round B: the judge
    refit on those labels. An inverted judge is set aside (its agreement slope with people
    is negative; a temperature could only shrink it towards a coin flip), so in round B
    none of its pairs is labeled automatically: they go to people, with the reason; a sound
    judge on the same pairs keeps labeling the confident ones itself."""
    def cfg_with(auto_threshold):
        return config_from_dict({"labeling": {
            "judges": [{"kind": "python", "function": f"tests.test_labeler:{judge}",
                        "name": "j"}],
            "selection": {"strategy": "max_min", "pairs_per_prompt": 1, "random_share": 0.0},
            "routing": {"auto_threshold": auto_threshold},
            "human": {"budget": 6}}}).labeling

    groups = groups_from_completions(completions())
    first = cfg_with(0.5)                       # nothing is confident enough: all to people
    table = judge_candidates(groups, Ensemble.from_specs(first.judges), first)
    assert {r["decision"] for r in table.selected()} <= {"human", "drop"}
    queue = MemoryQueue()
    queue.submit(queue_items(table, first.human))
    queue.answer("ann1", lambda it: "a" if score(it.prompt, it.a) > score(it.prompt, it.b) else "b")
    labels = soft_labels(table, queue.votes(0), first).labels

    later = cfg_with(0.2)
    ensemble, report = learn_from_labels(Ensemble.from_specs(later.judges), labels, later)
    slope = report["j"]["agreement_slope"]
    assert (slope < 0) if set_aside else (slope > later.routing.min_judge_slope)
    assert ("set_aside" in report["j"]) is set_aside and set(ensemble.set_aside) == (
        {"j"} if set_aside else set())
    again = judge_candidates(groups, ensemble, later, round=1).selected()
    decisions = [r["decision"] for r in again]
    if set_aside:
        assert "auto" not in decisions and decisions.count("human") == 6
        assert all("j set aside: agreement with people" in r["reason"] for r in again)
    else:
        assert "auto" in decisions


def test_two_prompts_under_one_prompt_id_are_refused_naming_the_rows():
    rows = [{"prompt_id": "a", "prompt": "x", "text": "one"},
            {"prompt_id": "a", "prompt": "x", "text": "two"},
            {"prompt_id": "a", "prompt": "y", "text": "three"}]
    with pytest.raises(LabelingError, match="c.jsonl row 3: prompt_id 'a' has another prompt "
                                            "than row 1"):
        groups_from_completions(rows, source="c.jsonl")
