"""The team commands: `queue guidelines`, `disable`, `rotate-token`, skipping and the
guideline in `queue label`, and `queue export --format hf` (a `datasets.Dataset` read back
with `load_from_disk`; the Hub upload only against a mocked `push_to_hub`)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from alignloop.cli import main
from alignloop.labeling.handoff import QueueItem
from alignloop.labeling.queue import adjudication, guidelines, skips
from alignloop.labeling.queue.store import QueueStore


def _run(capsys, *argv: str) -> str:
    assert main(["-q", *argv]) == 0
    return capsys.readouterr().out


@pytest.fixture
def run_dir(tmp_path):
    """A queue with three annotators and an admin: item q0 voted a, a, b; q1 voted b, b
    (chat prompt); q2 voted tie only; q3 unvoted."""
    path = tmp_path / "run"
    with QueueStore.open(path, seed=0) as store:
        chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
        store.submit([QueueItem("q0", 0, "Greet.", "Hello!", "What.", votes_required=3,
                                max_votes=3),
                      QueueItem("q1", 0, chat, "Hi there.", "Go away.", votes_required=2,
                                max_votes=2),
                      QueueItem("q2", 1, "Thank.", "Thanks!", "k", votes_required=1,
                                max_votes=1),
                      QueueItem("q3", 1, "Bye.", "Bye!", "...", votes_required=1,
                                max_votes=1)])
        ids = {n: store.authenticate(store.add_annotator(n)).id for n in ("x", "y", "z")}
        boss = store.authenticate(store.add_annotator("boss", "admin")).id
        plan = {"x": {"q0": "a", "q1": "b", "q2": "tie"}, "y": {"q0": "a", "q1": "b"},
                "z": {"q0": "b"}}
        for name, answers in plan.items():
            while (job := store.next_item(ids[name])) is not None:
                choice = answers.get(job.item.item_id)
                if choice is None:
                    skips.record_skip(store, ids[name], item_id=job.item.item_id,
                                      lease_id=job.lease_id, reason="other")
                    continue
                store.record_label(ids[name], item_id=job.item.item_id, lease_id=job.lease_id,
                                   choice=choice, confidence=3,
                                   idempotency_key=f"{name}-{job.item.item_id}",
                                   comment=f"{name} on {job.item.item_id}")
        adjudication.record_verdict(store, boss, item_id="q0", choice="b")
    return path


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def test_export_hf_loads_back_with_trl_columns_votes_and_soft_labels(run_dir, tmp_path, capsys):
    import datasets

    out = tmp_path / "hf"
    said = _run(capsys, "queue", "export", "--run-dir", str(run_dir), "--format", "hf",
                "--out", str(out))
    assert "wrote 2 pairs" in said           # q2 (a tie only) and q3 (no vote) left out
    ds = datasets.load_from_disk(str(out))
    assert {"prompt", "chosen", "rejected", "p_chosen", "n_votes", "votes",
            "adjudicated", "votes_chosen", "votes_rejected"} <= set(ds.column_names)
    rows = {r["item_id"]: r for r in ds}
    q0, q1 = rows["q0"], rows["q1"]
    # a chat prompt among them: every row conversational, as TRL reads it
    assert q0["prompt"] == [{"role": "user", "content": "Greet."}]
    assert q1["prompt"][0] == {"role": "system", "content": "Be brief."}
    # q0: votes a, a, b but the adjudicated verdict b wins
    assert q0["chosen"] == [{"role": "assistant", "content": "What."}]
    assert q0["adjudicated"] == "chosen" and q0["votes_chosen"] == 1
    assert q0["votes_rejected"] == 2 and q0["n_votes"] == 3 and q0["p_chosen"] > 0.9
    assert {v["annotator"] for v in q0["votes"]} == {"x", "y", "z"}
    assert q1["chosen"][0]["content"] == "Go away." and q1["adjudicated"] == ""
    assert 0.5 < q1["p_chosen"] < 1
    again = tmp_path / "hf2"
    _run(capsys, "queue", "export", "--run-dir", str(run_dir), "--format", "hf", "--out",
         str(again))
    assert _tree_digest(out) == _tree_digest(again)     # same queue, same bytes


def test_export_hf_push_to_hub_calls_the_hub_boundary(run_dir, tmp_path, capsys, monkeypatch):
    import datasets

    calls = []
    monkeypatch.setattr(datasets.Dataset, "push_to_hub",
                        lambda self, repo, **kw: calls.append((repo, kw, len(self))))
    _run(capsys, "queue", "export", "--run-dir", str(run_dir), "--format", "hf", "--out",
         str(tmp_path / "hf"), "--round", "0", "--push-to-hub", "me/prefs")
    assert calls == [("me/prefs", {"private": True}, 2)]
    assert main(["-q", "queue", "export", "--run-dir", str(run_dir), "--out",
                 str(tmp_path / "x.jsonl"), "--push-to-hub", "me/prefs"]) == 2   # an error: 2
    assert "--push-to-hub needs --format hf" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists() and len(calls) == 1


def test_guidelines_command_sets_versions_and_shows_them(run_dir, tmp_path, capsys):
    text = tmp_path / "guide.md"
    text.write_text("# How to judge\n- facts first\n")
    said = _run(capsys, "queue", "guidelines", "--run-dir", str(run_dir), "--set", str(text),
                "--author", "boss")
    assert "version 1" in said and "every round" in said
    text.write_text("Round 1: be strict.")
    assert "version 2 (round 1)" in _run(capsys, "queue", "guidelines", "--run-dir",
                                         str(run_dir), "--set", str(text), "--round", "1")
    shown = _run(capsys, "queue", "guidelines", "--run-dir", str(run_dir), "--round", "1")
    assert "be strict" in shown and "version 2" in shown
    bad = tmp_path / "bad.md"
    bad.write_bytes(b"nul \x00 here")
    assert main(["-q", "queue", "guidelines", "--run-dir", str(run_dir), "--set", str(bad)]) == 2
    missing = tmp_path / "nowhere"
    assert main(["-q", "queue", "guidelines", "--run-dir", str(missing), "--set",
                 str(text)]) == 2
    assert not missing.exists()                   # refused: nothing created
    with QueueStore.open(run_dir) as store:
        assert [g.version for g in guidelines.history(store)] == [2, 1]


def test_disable_and_rotate_token_commands(run_dir, capsys):
    with QueueStore.open(run_dir) as store:
        old = store.add_annotator("ada")
    new = _run(capsys, "queue", "rotate-token", "--run-dir", str(run_dir), "ada").strip()
    with QueueStore.open(run_dir) as store:
        assert store.authenticate(old) is None and store.authenticate(new).name == "ada"
    _run(capsys, "queue", "disable", "--run-dir", str(run_dir), "ada")
    with QueueStore.open(run_dir) as store:
        assert store.authenticate(new) is None
    assert main(["-q", "queue", "rotate-token", "--run-dir", str(run_dir), "nobody"]) == 2


def test_terminal_labeling_shows_the_guideline_and_skips_with_a_reason(tmp_path, capsys):
    run_dir = tmp_path / "run"
    with QueueStore.open(run_dir) as store:
        store.submit([QueueItem(f"t{i}", 0, f"prompt {i}", f"a{i}", f"b{i}", votes_required=1,
                                max_votes=1) for i in range(2)])
        guidelines.set_guideline(store, "Prefer **kind** answers.")
        token = store.add_annotator("tty")
    # skip the first (s, reason 3 = needs expertise, a comment), label the second (1, conf 2)
    proc = subprocess.run([sys.executable, "-m", "alignloop.cli", "queue", "label", "--run-dir",
                           str(run_dir)], input="s\n3\nnot my field\n1\n\n\n",
                          capture_output=True, text=True, timeout=60,
                          env={"ALIGNLOOP_TOKEN": token, "COLUMNS": "100", "PATH": "/usr/bin"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.count("Guidelines (version 1)") == 1 and "Prefer **kind** answers." in out
    assert "skipped" in out and "1 labels recorded" in out
    with QueueStore.open(run_dir) as store:
        (skip,) = skips.export_skips(store)
        assert (skip["reason"], skip["comment"]) == ("needs_expertise", "not my field")
        (vote,) = store.votes(0)
        assert vote.item_id != skip["item_id"]
        assert store.export_raw()[0]["guideline_version"] == 1
