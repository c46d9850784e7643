"""The `alignloop` command: train end to end, and one-line errors that name the key, file and row."""

import json
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


def test_train_writes_artifacts(tmp_path):
    out = run("train", "configs/tiny.yaml", "--out", str(tmp_path / "r"), "--set", "train.max_steps=1",
              "--set", "data.limit=8", "--set", "train.loss=ipo")
    assert out.returncode == 0, out.stderr
    r = tmp_path / "r"
    for name in ("config.yaml", "reference_logps.parquet", "train_log.jsonl", "policy/model.safetensors"):
        assert (r / name).exists(), name
    assert "loss: ipo" in (r / "config.yaml").read_text()
    assert "limit: 8" in (r / "config.yaml").read_text()
    assert "trained 1 steps on 8 pairs" in out.stdout


def test_config_error_names_key(tmp_path):
    out = run("train", "configs/tiny.yaml", "--out", str(tmp_path), "--set", "train.beta=0")
    assert out.returncode == 2
    assert "config key 'train.beta': must be > 0" in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_row_names_file_and_row(tmp_path):
    bad = tmp_path / "pairs.jsonl"
    good = {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({**good, "rejected": "Hello!"}) + "\n")
    out = run("train", "configs/tiny.yaml", "--pairs", str(bad), "--out", str(tmp_path / "r"))
    assert out.returncode == 2
    assert "pairs.jsonl row 2" in out.stderr and "identical" in out.stderr
    assert not (tmp_path / "r" / "policy").exists()


def test_config_docs():
    out = run("config", "--docs")
    assert out.returncode == 0 and "train.beta:" in out.stdout
