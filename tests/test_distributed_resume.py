"""Time-based checkpoints under DDP: every process saves at the same steps although their
clocks differ (the main process decides), and a kill-and-resume over 2 CPU processes ends
with the weights of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = """
import itertools, os, sys
from alignloop.config import config_from_dict
from alignloop.data import read_pairs
from alignloop.training import checkpoints
from alignloop.training.trainer import FAIL_AT_STEP_ENV, train_dpo
out, bs, kill = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "kill"
if kill:
    # only rank 0's clock says that ten minutes pass per step: rank 1 would never save
    # on its own, and a save on one process alone would hang the collective
    rank0 = os.environ.get("RANK", "0") == "0"
    clock = itertools.count(0, 600 if rank0 else 0)
    checkpoints._now = lambda: next(clock)
    os.environ[FAIL_AT_STEP_ENV] = "2"
pairs = read_pairs("builtin:demo-pairs", limit=16)[0]
cfg = config_from_dict({"model": {"name": "builtin:tiny-random", "precision": "fp32"},
                        "train": {"batch_size": bs, "max_steps": 4, "learning_rate": 1e-3,
                                  "lr_schedule": "linear"}})
try:
    train_dpo(pairs, out_dir=out, policy=cfg.model.name, model_cfg=cfg.model, data_cfg=cfg.data,
              train_cfg=cfg.train, progress=False)
except RuntimeError as e:
    if "fault injection" not in str(e):
        raise
    sys.exit(3)
"""

TORCHRUN = Path(sys.executable).parent / "torchrun"


def _run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `cmd` in its own process group, all of which is killed on a timeout (the way
    this test fails if the processes disagree on a checkpoint: a collective hangs)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed next to this python")
def test_ddp_time_checkpoint_on_every_process_and_resume(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    ddp = [str(TORCHRUN), "--nproc_per_node", "2", "--master_port", "29518", str(script),
           str(tmp_path / "ddp"), "4"]
    killed = _run([*ddp, "kill"])
    assert killed.returncode != 0, killed.stderr[-3000:]   # the injected fault, after step 2
    state = json.loads((tmp_path / "ddp/checkpoint/trainer_state.json").read_text())
    assert state["step"] == 2
    for cmd in ([*ddp, "resume"], [sys.executable, str(script), str(tmp_path / "one"), "8", "resume"]):
        done = _run(cmd)
        assert done.returncode == 0, done.stderr[-3000:]
    resumed = load_file(tmp_path / "ddp/policy/model.safetensors")
    one = load_file(tmp_path / "one/policy/model.safetensors")
    for k in one:
        torch.testing.assert_close(resumed[k], one[k], atol=1e-5, rtol=0)
    steps = [json.loads(x)["step"] for x in (tmp_path / "ddp/train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
