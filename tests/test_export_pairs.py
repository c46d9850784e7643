"""`alignloop export-pairs`: every pair a run trained on, once, as a `datasets.Dataset`
loaded back with `datasets.load_from_disk`; a non-empty OUT is refused without --force."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pytest
from alignloop.artifacts import read_parquet, write_parquet
from alignloop.cli import main
from alignloop.records import Pair

from tests.fake_run import make_fake_run


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    run = make_fake_run(tmp_path_factory.mktemp("fake"), rounds=2)
    # round 1 replays two round-0 pairs, as the loop's replay does (they keep round 0)
    r1 = run / "round_001/pairs.parquet"
    write_parquet(r1, read_parquet(r1) + read_parquet(run / "round_000/pairs.parquet")[:2])
    return run


def _pairs_by_id(run: Path) -> dict[str, dict]:
    out = {}
    for k in range(2):
        for row in read_parquet(run / f"round_{k:03d}/pairs.parquet"):
            out.setdefault(row["pair_id"], row)
    return out


def test_export_loads_back_with_every_pair_once(fake_run, tmp_path, capsys):
    out = tmp_path / "pairs"
    assert main(["export-pairs", str(fake_run), "--out", str(out)]) == 0
    ds = datasets.load_from_disk(str(out))
    expected = _pairs_by_id(fake_run)
    assert len(ds) == len(expected) == len(set(ds["pair_id"]))
    assert {"prompt", "chosen", "rejected", "p_chosen", "n_votes", "source", "slice",
            "round"} <= set(ds.column_names)
    for row in ds:
        want = Pair.from_row(expected[row["pair_id"]])
        assert row["p_chosen"] == pytest.approx(want.p_chosen)
        assert (row["n_votes"], row["source"], row["slice"], row["round"]) == \
            (want.n_votes, want.source, want.slice, want.round)
        # the fake prompts mix text and chat: every row is TRL's conversational format
        prompt = want.prompt if want.is_chat else [{"role": "user", "content": want.prompt}]
        assert row["prompt"] == prompt
        assert row["chosen"] == [{"role": "assistant", "content": want.chosen}]
        assert row["rejected"] == [{"role": "assistant", "content": want.rejected}]
    assert sorted(set(ds["round"])) == [0, 1] and set(ds["source"]) >= {"static", "judge"}
    assert f"wrote {len(ds)} pairs" in capsys.readouterr().out


def test_plain_prompts_stay_text(tmp_path):
    run = tmp_path / "run"
    pairs = [Pair("Say hi", "hi!", "go away", p_chosen=0.8, n_votes=3, source="human",
                  slice="greeting", round=0)]
    write_parquet(run / "round_000/pairs.parquet", [p.to_row() for p in pairs])
    assert main(["export-pairs", str(run), "--out", str(tmp_path / "out")]) == 0
    (row,) = datasets.load_from_disk(str(tmp_path / "out"))
    assert (row["prompt"], row["chosen"], row["rejected"]) == ("Say hi", "hi!", "go away")
    assert (row["p_chosen"], row["n_votes"], row["source"]) == (0.8, 3, "human")


def test_non_empty_out_is_refused_without_force(fake_run, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export-pairs", str(fake_run), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]          # untouched
    assert main(["export-pairs", str(fake_run), "--out", str(out), "--force"]) == 0
    assert not (out / "keep.txt").exists()
    assert len(datasets.load_from_disk(str(out))) == len(_pairs_by_id(fake_run))


def test_out_that_is_or_holds_the_run_is_refused_even_with_force(fake_run, capsys):
    # --force replaces --out whole: with the run (or a folder above it) as --out it would
    # have deleted the run it exports
    before = sorted(p.relative_to(fake_run) for p in fake_run.rglob("*"))
    for out in (fake_run, fake_run.parent):
        assert main(["export-pairs", str(fake_run), "--out", str(out), "--force"]) == 2
        assert "is the run directory or holds it" in capsys.readouterr().err
    assert sorted(p.relative_to(fake_run) for p in fake_run.rglob("*")) == before


def test_same_run_same_files(fake_run, tmp_path):
    for name in ("a", "b"):
        assert main(["export-pairs", str(fake_run), "--out", str(tmp_path / name)]) == 0
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    state = json.loads((tmp_path / "a" / "state.json").read_text())
    assert state["_fingerprint"]


def test_a_run_without_pairs_is_refused(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["export-pairs", str(tmp_path / "run"), "--out", str(tmp_path / "o")]) == 2
    assert "no pairs" in capsys.readouterr().err and not (tmp_path / "o").exists()
    shutil.rmtree(tmp_path / "run")
    assert main(["export-pairs", str(tmp_path / "run"), "--out", str(tmp_path / "o")]) == 2
