"""Experiment tracking: a run's numbers sent to TensorBoard, MLflow, wandb or trackio
(`tracking.report_to`, the Hugging Face Trainer convention; none by default).

One alignloop run is one tracked run with two axes: a global optimizer step across
rounds (round k's steps continue where round k-1's ended) for every train_log.jsonl line,
and the round number for each round's headline drift numbers, alerts, label statistics
and gate. The resolved config is logged once. RUN_DIR/tracking.json keeps each tracker's
run id and what it already holds, so a resumed run continues the same tracked run, logs
no round twice, and a tracker added later is sent the finished rounds (their steps read
back from train_log.jsonl). Steps redone after an interruption are sent again with the
same values (TensorBoard and wandb keep the later copy; MLflow keeps both points).

    tracker = open_tracker(cfg.tracking, run_dir, config=to_dict(cfg))   # None: no tracker
    train_dpo(..., on_log=tracker.step_logger(k, offset=step_offset(run_dir, k)))
    tracker.train_done(k); tracker.log_round(k, report, gate); tracker.close()
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from alignloop.artifacts import TRAIN_LOG, TRAIN_TIMING, atomic_write_json, round_dir
from alignloop.errors import AlignloopError
from alignloop.tracking.backends import PACKAGES, Backend, missing_packages, open_backend
from alignloop.tracking.metrics import round_scalars, round_text, step_scalars

log = logging.getLogger(__name__)

STATE_FILE = "tracking.json"


class TrackingError(AlignloopError, RuntimeError):
    """A tracker that cannot be used (its package is missing, ...)."""


def check_trackers(report_to: tuple[str, ...]) -> None:
    """Raise TrackingError naming each tracker of `report_to` whose package is missing."""
    missing = missing_packages(tuple(report_to))
    if missing:
        pkgs = " ".join(PACKAGES[m] for m in missing)
        raise TrackingError(f"config key 'tracking.report_to' lists {', '.join(missing)}, but "
                            f"the package is not installed: pip install {pkgs}")


def read_train_log(path: Path) -> list[dict]:
    """The rows of a train_log.jsonl, each with its step's timing from the train_timing.jsonl
    beside it (what the trainer's `on_log` gave the trackers live)."""
    def rows(p: Path) -> list[dict]:
        return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] \
            if p.exists() else []
    timing = {r["step"]: r for r in rows(path.with_name(TRAIN_TIMING))}
    return [{**r, **timing.get(r["step"], {})} for r in rows(path)]


def step_offset(run_dir: str | Path, k: int) -> int:
    """Optimizer steps of rounds 0..k-1 (the last step in each train_log.jsonl): where
    round k's steps start on the run's global step axis."""
    total = 0
    for j in range(k):
        rows = read_train_log(round_dir(run_dir, j) / TRAIN_LOG)
        total += rows[-1]["step"] if rows else 0
    return total


class Tracker:
    """The trackers of one run and what each already holds (RUN_DIR/tracking.json)."""

    def __init__(self, backends: dict[str, Backend], state: dict, path: Path, run_dir: Path):
        self.backends, self.state, self.path, self.run_dir = backends, state, path, run_dir

    def _save(self) -> None:
        atomic_write_json(self.path, self.state)

    def _mark(self, name: str, what: str, k: int) -> None:
        held = self.state[name].setdefault(what, [])
        if k not in held:
            held.append(k)
            held.sort()

    def log_steps(self, rows: list[dict], *, round: int | None, offset: int,
                  only: list[str] | None = None) -> None:
        for row in rows:
            scalars = step_scalars(row, round)
            for name, b in self.backends.items():
                if only is None or name in only:
                    b.log(scalars, axis="train", step=offset + int(row["step"]))

    def step_logger(self, k: int | None, *, offset: int = 0) -> Callable[[dict], None]:
        """The trainer's per-step hook (`train_dpo(on_log=...)`) for round k."""
        return lambda row: self.log_steps([row], round=k, offset=offset)

    def train_done(self, k: int) -> None:
        """Round k's steps were all sent (live, by `step_logger`)."""
        for name in self.backends:
            self._mark(name, "train", k)
        self._save()

    def log_round(self, k: int, report: dict, gate: dict | None) -> None:
        """Round k's numbers, to each tracker that lacks them; one that missed round k's
        steps (added later, or the train ran before it) is sent them from train_log.jsonl."""
        todo = [n for n in self.backends if k not in self.state[n].get("rounds", [])]
        late = [n for n in todo if k not in self.state[n].get("train", [])]
        if late:
            rows = read_train_log(round_dir(self.run_dir, k) / TRAIN_LOG)
            self.log_steps(rows, round=k, offset=step_offset(self.run_dir, k), only=late)
        scalars, text = round_scalars(report, gate), round_text(report, gate)
        for name in todo:
            self.backends[name].log(scalars, axis="round", step=k)
            self.backends[name].log_text("round/alerts_text", text, step=k)
            self._mark(name, "train", k)
            self._mark(name, "rounds", k)
        if todo:
            self._save()

    def close(self, failed: bool = False) -> None:
        """End each tracked run (`failed`: as failed, where the tracker has such a state)."""
        for name, b in self.backends.items():
            try:
                b.close(failed)
            except Exception as e:  # noqa: BLE001 (a tracker failing to close loses nothing of ours)
                log.warning("closing the %s tracker failed: %s", name, e)


def open_tracker(cfg, run_dir: str | Path, *, config: dict) -> Tracker | None:
    """The run's trackers (`cfg` is the `tracking` section), continuing the tracked run
    named in RUN_DIR/tracking.json; None when `cfg.report_to` is empty. The config is
    logged to each tracker once per tracked run."""
    if not cfg.report_to:
        return None
    check_trackers(cfg.report_to)
    run_dir = Path(run_dir)
    path = run_dir / STATE_FILE
    state = json.loads(path.read_text()) if path.exists() else {}
    where = Path(cfg.dir) if cfg.dir else run_dir / "tracking"
    run_name = cfg.run_name or run_dir.resolve().name
    backends: dict[str, Backend] = {}
    made = not where.exists()           # removed again when a tracker cannot start
    for name in cfg.report_to:
        old = state.get(name, {})
        try:
            backend, ids = open_backend(name, where=where, project=cfg.project,
                                        run_name=run_name, mlflow_uri=cfg.mlflow_tracking_uri,
                                        resume=old.get("ids", {}), config=config)
        except Exception as e:  # noqa: BLE001 (a login or server a tracker wants: one line)
            Tracker(backends, state, path, run_dir).close(failed=True)
            if made:
                shutil.rmtree(where, ignore_errors=True)
            why = " ".join(str(e).split())[:300] or type(e).__name__
            raise TrackingError(f"config key 'tracking.report_to': {name} could not start: "
                                f"{why}") from None
        if ids != old.get("ids"):           # a new tracked run: it holds nothing yet
            old = {"ids": ids}
        if not old.get("config"):
            backend.log_config(config)
            old["config"] = True
        state[name] = old
        backends[name] = backend
    tracker = Tracker(backends, state, path, run_dir)
    tracker._save()
    return tracker


__all__ = ["Tracker", "TrackingError", "check_trackers", "open_tracker", "step_offset"]
