"""The `alignloop` command: train end to end, and one-line errors that name the key, file and row."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "alignloop.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_help_is_fast_and_lists_commands():
    out = run("--help")
    assert out.returncode == 0 and "train" in out.stdout


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_train_writes_artifacts_and_a_failed_train_changes_nothing(tmp_path):
    out = run("train", "configs/tiny.yaml", "--out", str(tmp_path / "r"), "--set", "train.max_steps=1",
              "--set", "data.limit=8", "--set", "train.loss=ipo")
    assert out.returncode == 0, out.stderr
    r = tmp_path / "r"
    for name in ("config.yaml", "reference_logps.parquet", "train_log.jsonl", "policy/model.safetensors"):
        assert (r / name).exists(), name
    assert "loss: ipo" in (r / "config.yaml").read_text()
    assert "limit: 8" in (r / "config.yaml").read_text()
    assert "trained 1 steps on 8 pairs" in out.stdout
    # a refused train into the same folder leaves it byte-identical (config.yaml included)
    before = _tree(r)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Hi", "chosen": "a", "rejected": "a"}\n')
    for args in (["--pairs", str(bad)], ["--set", "model.name=no/such/dir/x"]):
        out = run("train", "configs/tiny.yaml", "--out", str(r), "--set", "train.beta=0.5", *args)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert _tree(r) == before, args


def test_config_error_names_key(tmp_path):
    out = run("train", "configs/tiny.yaml", "--out", str(tmp_path), "--set", "train.beta=0")
    assert out.returncode == 2
    assert "config key 'train.beta': must be > 0" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_config_that_is_not_yaml_is_one_line_and_no_run_directory(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [1, 2\n")
    out = run("run", str(broken), "--run-dir", str(tmp_path / "r"))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "broken.yaml is not valid YAML (line 2, column 1" in out.stderr
    assert not (tmp_path / "r").exists()


def test_bad_row_names_file_and_row(tmp_path):
    bad = tmp_path / "pairs.jsonl"
    good = {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({**good, "rejected": "Hello!"}) + "\n")
    out = run("train", "configs/tiny.yaml", "--pairs", str(bad), "--out", str(tmp_path / "r"))
    assert out.returncode == 2
    assert "pairs.jsonl row 2" in out.stderr and "identical" in out.stderr
    assert not (tmp_path / "r").exists()                  # no new folder left behind


def test_config_docs():
    out = run("config", "--docs")
    assert out.returncode == 0 and "train.beta:" in out.stdout


def test_generate_writes_completions(tmp_path):
    import pyarrow.parquet as pq

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Say hi", "prompt_id": "p1", "slice": "small_talk"}) + "\n"
                       + json.dumps({"prompt": [{"role": "user", "content": "Late order."}]}) + "\n")
    out = run("generate", "configs/tiny.yaml", "--prompts", str(prompts), "--out", str(tmp_path / "g.parquet"),
              "--n", "3", "--set", "generation.max_new_tokens=5")
    assert out.returncode == 0, out.stderr
    rows = pq.read_table(tmp_path / "g.parquet").to_pylist()
    assert len(rows) == 6 and rows[0]["prompt_id"] == "p1" and rows[0]["slice"] == "small_talk"
    assert all(len(r["token_ids"]) == len(r["token_logprobs"]) for r in rows)
    bad = run("generate", "configs/tiny.yaml", "--prompts", str(prompts), "--out", str(tmp_path / "x.parquet"),
              "--n", "0")
    assert bad.returncode == 2 and "generation.n" in bad.stderr
    prompts.write_text(json.dumps({"prompt": ""}) + "\n")
    bad = run("generate", "configs/tiny.yaml", "--prompts", str(prompts), "--out", str(tmp_path / "x.parquet"))
    assert bad.returncode == 2 and "prompts.jsonl row 1" in bad.stderr


def test_invalid_pairs_are_refused_before_the_run_starts(tmp_path):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": "Hi", "chosen": "Hello!"}\n')      # no "rejected"
    out = run("run", "configs/tiny.yaml", "--run-dir", str(tmp_path / "r"), "--set", f"data.path={bad}")
    assert out.returncode == 2, out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert line == f"error: {bad} row 1: missing field 'rejected' (set data.on_invalid=skip to drop invalid rows)"
    assert not (tmp_path / "r").exists() and "Traceback" not in out.stderr


def test_a_failed_stage_names_its_round_and_stage(tmp_path):
    out = run("run", "configs/tiny.yaml", "--run-dir", str(tmp_path / "r"),
              "--set", "train.learning_rate=1e30", "--set", "loop.rounds=1",
              "--set", "train.max_steps=3")
    assert out.returncode == 2, out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("error: round 0, stage train: training diverged"), line
    assert "Traceback" not in out.stderr


def test_a_static_pair_too_long_is_refused_naming_its_row_before_the_run_exists(tmp_path):
    """Found in round 0's reference stage, it named the run's own pairs.parquet after the
    run directory was made, and neither a fixed file nor data.on_invalid=skip (the
    error's own advice) could then go on: both counted as a changed round 0."""
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go."},
            {"prompt": "Hi " * 40, "chosen": "Hello!", "rejected": "Go."}]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ("run", "configs/tiny.yaml", "--run-dir", str(tmp_path / "r"), "--set",
            f"data.path={pairs}", "--set", "data.max_length=64", "--set",
            "data.max_prompt_length=48", "--set", "data.truncation=error", "--set", "loop.rounds=1")
    out = run(*args)
    assert out.returncode == 2, out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"error: {re.escape(str(pairs))} row 2: prompt has \d+ tokens, over "
                        r"max_prompt_length=48 \(set data.on_invalid=skip to drop such rows\)",
                        line), line
    assert not (tmp_path / "r").exists() and "Traceback" not in out.stderr


def test_train_and_generate_refuse_unusable_out_paths_before_any_work(tmp_path):
    trained = tmp_path / "t"
    (trained / "policy").mkdir(parents=True)
    out = run("train", "configs/tiny.yaml", "--out", str(trained), "--set", "data.limit=8")
    assert out.returncode == 2 and "holds a trained policy already" in out.stderr, out.stderr
    assert "--force" in out.stderr and sorted(trained.iterdir()) == [trained / "policy"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    out = run("train", "configs/tiny.yaml", "--out", str(afile), "--set", "data.limit=8")
    assert out.returncode == 2 and f"--out {afile}: is a file" in out.stderr, out.stderr
    mine = tmp_path / "mine"                    # somebody's folder: not mixed into
    mine.mkdir()
    for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
        (mine / name).write_text(name)
    out = run("train", "configs/tiny.yaml", "--out", str(mine), "--set", "data.limit=8")
    assert out.returncode == 2, out.stderr
    assert (f"--out {mine}: holds other files (a.txt, b.txt, c.txt and 1 more) and no "
            "training run; give an empty or new directory") in out.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["a.txt", "b.txt", "c.txt", "d.txt"]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Say hi"}) + "\n")
    for target, message in ((afile / "g.parquet", "is a file, not a directory"),
                            (tmp_path / "g.jsonl", "ending in .parquet"),
                            (tmp_path, "ending in .parquet")):
        out = run("generate", "configs/tiny.yaml", "--prompts", str(prompts), "--out", str(target))
        assert out.returncode == 2 and message in out.stderr, (target, out.stderr)
        assert "Traceback" not in out.stderr
    assert not (tmp_path / "g.jsonl").exists()


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path):
    out = run("report", str(tmp_path))
    assert out.returncode == 2 and "is not a run directory" in out.stderr, out.stderr
    assert list(tmp_path.iterdir()) == []


def test_train_refuses_another_runs_checkpoint_before_any_work_and_force_starts_over(tmp_path):
    """A changed config on an interrupted --out died with a RuntimeError traceback after the
    reference pass had rewritten reference_logps.parquet, and --force did not help."""
    r = tmp_path / "r"
    (r / "checkpoint").mkdir(parents=True)
    (r / "checkpoint" / "trainer_state.json").write_text('{"step": 1, "fingerprint": "other"}')
    (r / "reference_logps.parquet").write_bytes(b"as the interrupted run left it")
    before = _tree(r)
    args = ("train", "configs/tiny.yaml", "--out", str(r), "--set", "train.max_steps=1",
            "--set", "data.limit=8")
    out = run(*args)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "was left by a different training run" in out.stderr and "--force" in out.stderr
    assert _tree(r) == before
    out = run(*args, "--force")
    assert out.returncode == 0, out.stderr
    assert not (r / "checkpoint").exists() and (r / "policy").is_dir()


def test_train_and_run_keep_a_users_config_yaml_in_their_folder(tmp_path):
    """`train --out D` and `run --run-dir D` wrote their resolved config over D/config.yaml,
    the user's own file (often the config the command was given)."""
    for cmd in ("train", "run"):
        d = tmp_path / cmd
        d.mkdir()
        mine = (ROOT / "configs/tiny.yaml").read_text() + "# my notes\n"
        (d / "config.yaml").write_text(mine)
        flag = "--out" if cmd == "train" else "--run-dir"
        out = run(cmd, str(d / "config.yaml"), flag, str(d), "--set", "train.max_steps=1")
        assert out.returncode == 2 and "config.yaml" in out.stderr, out.stderr
        assert "move it out of the folder" in out.stderr or "move your config.yaml" in out.stderr
        assert [p.name for p in d.iterdir()] == ["config.yaml"]
        assert (d / "config.yaml").read_text() == mine


def test_ctrl_c_and_a_closed_pipe_end_in_one_line(monkeypatch, capsys):
    """Ctrl-C printed the 40-line stack it came through; `alignloop config --docs | head -1`
    a BrokenPipeError traceback."""
    from alignloop import cli

    def interrupted(args):
        e = KeyboardInterrupt()
        e.where = "round 1, stage train"        # as `Run.stage` marks it
        raise e

    monkeypatch.setattr(cli.run, "cmd_run", interrupted)
    assert cli.main(["run", "configs/tiny.yaml", "--run-dir", "nowhere"]) == 130
    assert capsys.readouterr().err.strip() == (
        "interrupted at round 1, stage train; rerun the same command to resume")

    # The reader is gone before the command writes (as `head` is after its line). Closing
    # the read end before the child starts makes that certain: the docs (26 KB) fit a pipe's
    # 64 KB buffer, so a reader that closes after reading a little can lose the race on a
    # loaded machine, the whole text already written and the command ending 0.
    read_end, write_end = os.pipe()
    os.close(read_end)
    p = subprocess.Popen([sys.executable, "-m", "alignloop.cli", "config", "--docs"], cwd=ROOT,
                         stdout=write_end, stderr=subprocess.PIPE)
    os.close(write_end)
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 1 and "Traceback" not in err, err


def test_a_hub_model_that_cannot_be_had_is_refused_before_anything_is_written(tmp_path):
    """An unreachable Hub id failed in the reference stage with a 23-frame traceback, after
    the run directory and round 0's pairs were written. (This machine has no Hub access,
    as a machine offline or a typo in the id would.)"""
    run_dir = tmp_path / "run"
    for cmd in (("run", "configs/tiny.yaml", "--run-dir", str(run_dir)),
                ("train", "configs/tiny.yaml", "--out", str(tmp_path / "t"))):
        out = run(*cmd, "--set", "model.name=Some/NonexistentModel")
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert "config key 'model.name': 'Some/NonexistentModel' is not a local folder" in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert list(tmp_path.iterdir()) == []
