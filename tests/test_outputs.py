"""Every `--out` is checked before any work: none replaces a file of a run directory
(`queue export --out RUN/state.json` once did), and none replaces an existing output
without --force. A refused command leaves every file as it was."""

from __future__ import annotations

import hashlib
import json

import pytest
from alignloop.cli import main
from alignloop.labeling.handoff import QueueItem
from alignloop.labeling.queue.store import QueueStore


def _tree(root) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def run(tmp_path):
    run = tmp_path / "run"
    (run / "round_000" / "policy").mkdir(parents=True)
    (run / "state.json").write_text(json.dumps({"version": 1, "rounds": {}}))
    (run / "round_000" / "pairs.parquet").write_bytes(b"PAR1 not really")
    (run / "round_000" / "policy" / "config.json").write_text("{}")
    store = QueueStore.open(run)
    store.submit([QueueItem("it1", 0, "Hi?", "Hello!", "Go.")])
    store.close()
    return run


@pytest.fixture
def pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "Hi", "chosen": "Hello", "rejected": "Go"}) + "\n")
    return path


def _refused(capsys, argv, match: str) -> None:
    assert main(["-q", *argv]) == 2
    assert match in capsys.readouterr().err


def test_no_output_replaces_a_file_of_a_run(run, pairs, tmp_path, capsys):
    before = _tree(run)
    q = ["queue", "export", "--run-dir", str(run)]
    for target, fmt in ((run / "state.json", "dpo"), (run / "round_000" / "pairs.parquet", "raw"),
                        (run, "hf")):
        for force in ([], ["--force"]):
            _refused(capsys, [*q, "--format", fmt, "--out", str(target), *force],
                     "whose files only `alignloop run` writes")
    for out in (run, run / "round_000" / "policy"):
        _refused(capsys, ["train", "configs/tiny.yaml", "--pairs", str(pairs), "--out",
                          str(out), "--force"], "whose files only `alignloop run` writes")
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "Hi?"}\n')
    _refused(capsys, ["generate", "configs/tiny.yaml", "--prompts", str(tmp_path / "prompts.jsonl"),
                      "--out", str(run / "round_000" / "pairs.parquet"), "--force"],
             "is in the run")
    assert _tree(run) == before


def test_an_existing_output_is_replaced_only_with_force(run, tmp_path, capsys):
    out = tmp_path / "votes.jsonl"
    out.write_text("mine\n")
    q = ["queue", "export", "--run-dir", str(run), "--format", "raw", "--out", str(out)]
    _refused(capsys, q, "exists; give another path, or --force to replace it")
    assert out.read_text() == "mine\n"
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "Hi?"}\n')
    done = tmp_path / "done.parquet"
    done.write_bytes(b"earlier samples")
    _refused(capsys, ["generate", "configs/tiny.yaml", "--prompts",
                      str(tmp_path / "prompts.jsonl"), "--out", str(done)], "--force")
    assert done.read_bytes() == b"earlier samples"
    # a new name inside a run is allowed, and --force replaces an output outside one
    assert main(["-q", "queue", "export", "--run-dir", str(run), "--format", "raw", "--out",
                 str(run / "votes.jsonl")]) == 0
    assert main(["-q", *q, "--force"]) == 0 and out.read_text() != "mine\n"


def test_a_folder_is_a_run_only_by_a_run_state(run, tmp_path, capsys):
    """Any folder with a state.json counted as a run: `datasets` writes one into every
    dataset folder, so `--format hf --force` could never replace an earlier export, and
    another tool's state.json made its folder a run."""
    store = QueueStore.open(run)
    ann = store.authenticate(store.add_annotator("ann")).id
    lease = store.next_item(ann)
    store.record_label(ann, item_id=lease.item.item_id, lease_id=lease.lease_id, choice="a",
                       confidence=3, idempotency_key="k1")
    store.close()
    out = tmp_path / "hf_export"
    q = ["queue", "export", "--run-dir", str(run), "--format", "hf", "--out", str(out)]
    assert main(["-q", *q]) == 0 and (out / "state.json").is_file()
    _refused(capsys, q, "exists; give another path, or --force to replace it")
    assert main(["-q", *q, "--force"]) == 0
    other = tmp_path / "other_tool"
    other.mkdir()
    (other / "state.json").write_text('{"app": "my other tool"}')
    (other / "votes.jsonl").write_text("old\n")
    assert main(["-q", "queue", "export", "--run-dir", str(run), "--format", "raw", "--out",
                 str(other / "votes.jsonl"), "--force"]) == 0
    assert (other / "votes.jsonl").read_text() != "old\n"
