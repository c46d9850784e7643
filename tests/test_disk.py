"""A run directory's size in `alignloop status`, and `alignloop prune` removing only the
rebuildable merged-weight caches of LoRA rounds."""

from __future__ import annotations

import json

import pytest
from alignloop import artifacts as A
from alignloop import models
from alignloop.cli import main
from alignloop.rounds.disk import disk_use, prune
from alignloop.rounds.loop import stage_names
from alignloop.rounds.state import status_table


def _fake_run(tmp_path):
    """A run with a LoRA round 0 whose merged cache was built, and a round 1 without one."""
    run = tmp_path / "run"
    for k in (0, 1):
        policy = A.round_dir(run, k) / A.POLICY
        policy.mkdir(parents=True)
        (policy / "adapter_model.safetensors").write_bytes(b"a" * 1000)
        (policy / models.ADAPTER_BASE_FILE).write_text('{"base": "builtin:tiny-random"}')
    merged = A.round_dir(run, 0) / A.MERGED
    merged.mkdir()
    (merged / "model.safetensors").write_bytes(b"m" * 50_000)
    (run / "state.json").write_text(json.dumps({"version": 1, "rounds": {"0": {"stages": {}}}}))
    return run


def test_merged_cache_name_agrees_with_models():
    assert A.MERGED == f"{A.POLICY}/{models.MERGED_CACHE}"


def test_status_shows_run_size_and_caches(tmp_path):
    run = _fake_run(tmp_path)
    use = disk_use(run)
    assert use.caches == [A.round_dir(run, 0) / A.MERGED] and use.cache_bytes == 50_000
    assert use.total == 50_000 + 2 * 1000 + 2 * len('{"base": "builtin:tiny-random"}') \
        + (run / "state.json").stat().st_size
    last = status_table(run, stage_names).splitlines()[-1]
    assert last.startswith("run directory: 50.9 KB on disk") and "48.8 KB in 1 merged-weight" in last


def test_prune_removes_only_merged_caches(tmp_path):
    run = _fake_run(tmp_path)
    before = sorted(p for p in run.rglob("*"))
    prune(run, dry_run=True)
    assert sorted(p for p in run.rglob("*")) == before          # a dry run changes nothing
    prune(run)
    after = sorted(p for p in run.rglob("*"))
    assert [p for p in before if p not in after] == [A.round_dir(run, 0) / A.MERGED,
                                                      A.round_dir(run, 0) / A.MERGED / "model.safetensors"]
    assert "merged-weight" not in status_table(run, stage_names)


def test_prune_leaves_caches_reached_through_symlinks(tmp_path):
    # a symlinked cache or round points outside the run: pruning would delete what it
    # points at (or die on the link halfway)
    run = _fake_run(tmp_path)
    other = _fake_run(tmp_path / "other")
    linked_round = run / "round_007"
    linked_round.symlink_to(A.round_dir(other, 0), target_is_directory=True)
    cache = A.round_dir(run, 0) / A.MERGED
    moved = tmp_path / "elsewhere"
    cache.rename(moved)
    cache.symlink_to(moved, target_is_directory=True)
    assert disk_use(run).caches == []
    prune(run)
    assert (moved / "model.safetensors").exists()
    assert (A.round_dir(other, 0) / A.MERGED / "model.safetensors").exists()


def test_prune_cli_and_refusal(tmp_path, capsys):
    run = _fake_run(tmp_path)
    assert main(["prune", str(run)]) == 0
    out = capsys.readouterr().out
    assert "removed 48.8 KB" in out and "round_000/policy/merged" in out
    assert not (A.round_dir(run, 0) / A.MERGED).exists()
    # not a run: an error naming the missing state.json, nothing created
    assert main(["prune", str(tmp_path / "nope")]) == 2
    assert "nope/state.json not found" in capsys.readouterr().err
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("dry", [True, False])
def test_prune_on_a_run_without_caches_is_a_no_op(tmp_path, dry):
    run = _fake_run(tmp_path)
    prune(run)
    assert prune(run, dry_run=dry).caches == []
