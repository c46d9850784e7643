"""The same trainer under DDP: 2 CPU processes (torchrun, gloo) x batch 4 == 1 process x batch 8."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = """
import sys
from alignloop.config import config_from_dict
from alignloop.data import read_pairs
from alignloop.training.trainer import train_dpo
out, bs = sys.argv[1], int(sys.argv[2])
pairs = read_pairs("builtin:demo-pairs", limit=16)[0]
cfg = config_from_dict({"model": {"name": "builtin:tiny-random", "precision": "fp32"},
                        "train": {"batch_size": bs, "max_steps": 2, "learning_rate": 1e-3,
                                  "lr_schedule": "constant"}})
train_dpo(pairs, out_dir=out, policy=cfg.model.name, model_cfg=cfg.model, data_cfg=cfg.data,
          train_cfg=cfg.train, progress=False)
"""


TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed next to this python")
def test_ddp_two_cpu_processes_equal_one(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    torchrun = str(TORCHRUN)
    subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29517", str(script),
                    str(tmp_path / "ddp"), "4"], check=True, capture_output=True, timeout=600)
    subprocess.run([sys.executable, str(script), str(tmp_path / "one"), "8"], check=True,
                   capture_output=True, timeout=600)
    ddp = load_file(tmp_path / "ddp/policy/model.safetensors")
    one = load_file(tmp_path / "one/policy/model.safetensors")
    for k in one:
        torch.testing.assert_close(ddp[k], one[k], atol=1e-5, rtol=0)
    log = (tmp_path / "ddp/train_log.jsonl").read_text().splitlines()
    assert len(log) == 2 and '"pairs": 8' in log[0]   # one log line per step, from rank 0 only
