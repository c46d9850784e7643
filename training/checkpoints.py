"""Resumable mid-run checkpoints: `OUT/checkpoint/` holds everything needed to continue.

Saved through `accelerate` (model, optimizer, registered scheduler, RNG
states), so the same code works for one CPU process, DDP and FSDP. A
`trainer_state.json` records the finished step and a fingerprint of the run
(pairs, config, starting weights); a checkpoint of a different run is refused
rather than silently continued.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

CHECKPOINT = "checkpoint"
STATE_FILE = "trainer_state.json"


def save_checkpoint(accelerator, out_dir: Path, *, step: int, fingerprint: str) -> Path:
    """Write OUT/checkpoint atomically (collective: every process must call it)."""
    final = out_dir / CHECKPOINT
    tmp = out_dir / f".{CHECKPOINT}.tmp"  # same name on every process
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, "fingerprint": fingerprint}))
        old = out_dir / f".{CHECKPOINT}.old"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, out_dir: Path, *, fingerprint: str) -> int:
    """Restore OUT/checkpoint if present; return the number of finished steps (0 if none)."""
    ckpt = out_dir / CHECKPOINT
    state_file = ckpt / STATE_FILE
    if not state_file.exists():
        return 0
    state = json.loads(state_file.read_text())
    if state["fingerprint"] != fingerprint:
        raise RuntimeError(
            f"{ckpt} belongs to a different training run (other pairs, config or starting "
            f"weights). Delete it to start over, or use another output directory.")
    accelerator.load_state(str(ckpt))
    return int(state["step"])


def remove_checkpoint(accelerator, out_dir: Path) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(out_dir / CHECKPOINT, ignore_errors=True)
