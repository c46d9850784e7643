"""Resumable mid-run checkpoints: `OUT/checkpoint/` holds everything needed to continue.

Saved through `accelerate` (model, optimizer, registered scheduler, RNG
states), so the same code works for one CPU process, DDP and FSDP. A
`trainer_state.json` records the finished step and a fingerprint of the run
(pairs, config, starting weights); a checkpoint of a different run is refused
rather than silently continued. The checkpoint also carries the step log as it
stood at that step, and a resume puts it back: lines written after the
checkpoint (or half-written by a kill) are replaced by the resumed steps, so the
log ends as an uninterrupted run's.

`CheckpointSchedule` decides when to save: every N steps and/or every N seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from alignloop.errors import AlignloopError

CHECKPOINT = "checkpoint"
STATE_FILE = "trainer_state.json"


class ForeignCheckpoint(AlignloopError):
    """OUT/checkpoint was written by a training run with other pairs, settings or
    starting weights: continuing it would train neither run."""


def check_checkpoint(out_dir: Path, *, fingerprint: str, discard: bool = False) -> None:
    """Before any work: refuse a checkpoint of another run in `out_dir` (or, with
    `discard`, delete it, so that the run starts over). Main process only."""
    ckpt = Path(out_dir) / CHECKPOINT
    state_file = ckpt / STATE_FILE
    if not state_file.exists() or json.loads(state_file.read_text())["fingerprint"] == fingerprint:
        return
    if not discard:
        raise ForeignCheckpoint(
            f"{ckpt} was left by a different training run (other pairs, settings or starting "
            "weights), so it cannot be resumed with these: rerun with the settings it was "
            "made with to finish it, or add --force to start over (the checkpoint is deleted)")
    shutil.rmtree(ckpt)


def save_checkpoint(accelerator, out_dir: Path, *, step: int, fingerprint: str,
                    log_path: Path) -> Path:
    """Write OUT/checkpoint atomically (collective: every process must call it), with a
    copy of the step log at `log_path` as it stands after `step`."""
    final = out_dir / CHECKPOINT
    tmp = out_dir / f".{CHECKPOINT}.tmp"  # same name on every process
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, "fingerprint": fingerprint}))
        if log_path.exists():  # absent when `log_every` has not logged a step yet
            shutil.copyfile(log_path, tmp / log_path.name)
        old = out_dir / f".{CHECKPOINT}.old"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, out_dir: Path, *, fingerprint: str, log_path: Path) -> int:
    """Restore OUT/checkpoint if present, the step log at `log_path` included; return
    the number of finished steps (0 if none: `log_path` is then left alone)."""
    ckpt = out_dir / CHECKPOINT
    state_file = ckpt / STATE_FILE
    if not state_file.exists():
        return 0
    state = json.loads(state_file.read_text())
    if state["fingerprint"] != fingerprint:
        check_checkpoint(out_dir, fingerprint=fingerprint)     # raises ForeignCheckpoint
    accelerator.load_state(str(ckpt))
    if accelerator.is_main_process:
        saved_log = ckpt / log_path.name
        if saved_log.exists():
            tmp = log_path.with_name(f".{log_path.name}.tmp")
            shutil.copyfile(saved_log, tmp)
            os.replace(tmp, log_path)  # a kill here leaves the old log, and the next resume redoes this
        else:
            log_path.unlink(missing_ok=True)
    return int(state["step"])


def remove_checkpoint(accelerator, out_dir: Path) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(out_dir / CHECKPOINT, ignore_errors=True)


def _now() -> float:
    """The clock of time-based checkpoints (a function of its own, so tests can move it)."""
    return time.monotonic()


class CheckpointSchedule:
    """When to save a mid-run checkpoint: after every `every_steps` steps, and once
    `every_s` seconds have passed since the last checkpoint (or since the start);
    0 turns either off.

    Saving is collective, so every process must decide the same at every step. The
    step count is the same everywhere; clocks are not, so under DDP/FSDP the main
    process decides the time-based part and broadcasts its answer (one tiny
    broadcast per step, none with one process or `every_s=0`).
    """

    def __init__(self, accelerator, *, every_steps: int, every_s: float):
        self.accelerator = accelerator
        self.every_steps = every_steps
        self.every_s = every_s
        self.last = _now()

    def due(self, step: int) -> bool:
        """Whether to checkpoint after `step` finished steps (call it on every process)."""
        if self.every_steps and step % self.every_steps == 0:
            return True
        return bool(self.every_s) and self._time_is_up()

    def saved(self) -> None:
        self.last = _now()

    def _time_is_up(self) -> bool:
        up = _now() - self.last >= self.every_s
        if self.accelerator.num_processes > 1:
            import torch
            from accelerate.utils import broadcast

            flag = torch.tensor([int(up)], device=self.accelerator.device)
            up = bool(broadcast(flag, from_process=0).item())
        return up
