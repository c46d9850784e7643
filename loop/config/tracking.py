"""The `tracking:` section: experiment trackers a run reports to (`alignloop.tracking`).

None of these keys changes what a run computes, so none is in the run's fingerprint
(`alignloop.rounds.state.NOT_FINGERPRINTED`): a run may be resumed with tracking turned
on, off or pointed elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from alignloop.config.base import require

TRACKERS = ("tensorboard", "mlflow", "wandb", "trackio")


@dataclass(frozen=True)
class TrackingConfig:
    report_to: tuple[Literal["tensorboard", "mlflow", "wandb", "trackio"], ...] = ()
    """Experiment trackers to log to, as the Hugging Face Trainer's `report_to` (a list;
    default none): every training step's train_log.jsonl metrics, each round's headline
    drift numbers, alerts, label statistics and gate, and the resolved config once. A run
    is one tracked run; a resumed run continues it (ids kept in RUN_DIR/tracking.json)."""
    project: str = "alignloop"
    """Project (wandb, trackio) or experiment (MLflow) name."""
    run_name: str = ""
    """Name of the tracked run ("": the run directory's name)."""
    dir: str = ""
    """Where local tracker files go: TensorBoard event files (DIR/tensorboard), wandb's run
    files (DIR/wandb), the default MLflow store (DIR/mlflow.db). "": RUN_DIR/tracking."""
    mlflow_tracking_uri: str = ""
    """MLflow tracking URI ("": $MLFLOW_TRACKING_URI if set, else a SQLite store
    `sqlite:///DIR/mlflow.db`, MLflow's recommended local backend)."""

    def __post_init__(self) -> None:
        require(len(set(self.report_to)) == len(self.report_to), "report_to",
                f"lists a tracker twice: {list(self.report_to)}")
