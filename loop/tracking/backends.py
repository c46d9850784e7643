"""One class per experiment tracker, each on that library's own API, imported lazily.

A backend logs scalars on one of two axes, `train` (the run's global optimizer step)
and `round` (the round number), text (alerts, the gate verdict) and the run's config.
`open_backend(name, ...)` opens it for a tracked run, creating the run or continuing the
one whose id `resume` holds, and returns it with the ids to keep for the next resume.

    tensorboard  torch.utils.tensorboard.SummaryWriter; one log directory per tracked run
                 (a resumed run adds an event file to it)
    mlflow       mlflow.tracking.MlflowClient (no global active run); resumes by run id
    wandb        wandb.init(id=..., resume="allow"); `define_metric` gives each axis its
                 own step metric, so rounds and steps never fight over wandb's step
    trackio      trackio.init(name=..., resume="allow"), keyed by run name
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb",
            "trackio": "trackio"}
"""The package each tracker needs (mlflow-skinny provides `mlflow` too)."""

AXES = {"train": "train/global_step", "round": "round/round"}
"""The step metric of each axis (wandb's `define_metric`; logged with the values elsewhere)."""


class Backend(Protocol):
    name: str

    def log(self, metrics: dict[str, float], *, axis: str, step: int) -> None: ...
    def log_text(self, tag: str, text: str, *, step: int) -> None: ...
    def log_config(self, config: dict) -> None: ...
    def close(self, failed: bool = False) -> None: ...


def missing_packages(names: tuple[str, ...]) -> list[str]:
    """The trackers in `names` whose package is not installed."""
    return [n for n in names if importlib.util.find_spec(PACKAGES[n]) is None]


@contextlib.contextmanager
def _quiet():
    """Trackers print banners to stdout; alignloop prints nothing by default: keep them in
    the debug log."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        yield
    if out.getvalue().strip():
        log.debug("%s", out.getvalue().strip())


def flat_config(config: dict, prefix: str = "") -> dict[str, str]:
    """{dotted key: value as text} of a nested config (MLflow params)."""
    out: dict[str, str] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if not isinstance(v, str) else v
    return out


class TensorBoard:
    name = "tensorboard"

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, metrics, *, axis, step):
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def log_text(self, tag, text, *, step):
        self.writer.add_text(tag, text, global_step=step)
        self.writer.flush()

    def log_config(self, config):
        import yaml

        self.writer.add_text("config", "```yaml\n" + yaml.safe_dump(config, sort_keys=False)
                             + "```", global_step=0)
        self.writer.flush()

    def close(self, failed=False):
        self.writer.close()


class MLflow:
    name = "mlflow"
    PARAM_CHARS = 500   # MLflow caps a param's value; the whole config is also an artifact

    def __init__(self, uri: str, experiment: str, run_name: str, run_id: str | None,
                 artifacts: Path):
        from mlflow.tracking import MlflowClient

        mlflow_log = logging.getLogger("mlflow")
        level = mlflow_log.level                # a new SQLite store logs its migrations at INFO
        mlflow_log.setLevel(max(level, logging.WARNING))
        try:
            self.client = MlflowClient(tracking_uri=uri)
            self.client.search_experiments(max_results=1)   # opens (and creates) the store
        finally:
            mlflow_log.setLevel(level)
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
            return
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(
            experiment, artifact_location=artifacts.resolve().as_uri()
            if uri.startswith("sqlite:") else None)
        self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id

    def log(self, metrics, *, axis, step):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step)
                                                    for k, v in metrics.items()])

    def log_text(self, tag, text, *, step):
        self.client.log_text(self.run_id, text, f"{tag}/{step:06d}.md")

    def log_config(self, config):
        import yaml
        from mlflow.entities import Param

        params = [Param(k, v[:self.PARAM_CHARS]) for k, v in flat_config(config).items()]
        for i in range(0, len(params), 100):            # log_batch takes 100 params at most
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.client.log_text(self.run_id, yaml.safe_dump(config, sort_keys=False), "config.yaml")

    def close(self, failed=False):
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


class Wandb:
    name = "wandb"

    def __init__(self, project: str, run_name: str, run_id: str | None, where: Path,
                 config: dict):
        import wandb

        where.mkdir(parents=True, exist_ok=True)
        quiet = not logging.getLogger("alignloop").isEnabledFor(logging.DEBUG)
        with _quiet():
            self.run = wandb.init(project=project, name=run_name, id=run_id, resume="allow",
                                  dir=str(where), config=config,
                                  settings=wandb.Settings(silent=quiet, quiet=quiet))
        for axis, step_metric in AXES.items():
            self.run.define_metric(step_metric)
            self.run.define_metric(f"{axis}/*", step_metric=step_metric)

    def log(self, metrics, *, axis, step):
        self.run.log({**metrics, AXES[axis]: step})

    def log_text(self, tag, text, *, step):
        import wandb

        self.run.log({tag: wandb.Html(f"<pre>{_escape(text)}</pre>"), AXES["round"]: step})

    def log_config(self, config):
        pass    # given to wandb.init, which keeps it with the run

    def close(self, failed=False):
        with _quiet():
            self.run.finish(exit_code=1 if failed else 0)


class Trackio:
    name = "trackio"

    def __init__(self, project: str, run_name: str, config: dict):
        import trackio

        with _quiet():
            self.run = trackio.init(project=project, name=run_name, resume="allow", config=config,
                                    embed=False, auto_log_cpu=False, auto_log_gpu=False)

    def log(self, metrics, *, axis, step):
        self.run.log({**metrics, AXES[axis]: step}, step=step)

    def log_text(self, tag, text, *, step):
        import trackio

        self.run.log({tag: trackio.Markdown(text)}, step=step)

    def log_config(self, config):
        pass    # given to trackio.init (again on every resume: trackio replaces it)

    def close(self, failed=False):
        import trackio

        with _quiet():
            if trackio.context_vars.current_run.get() is self.run:
                trackio.finish()    # also forgets the run: its exit hook finished it again, aloud
            else:
                self.run.finish()


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def open_backend(name: str, *, where: Path, project: str, run_name: str, mlflow_uri: str,
                 resume: dict, config: dict) -> tuple[Backend, dict]:
    """(backend, ids to keep) for tracker `name`; `resume` holds the ids kept last time
    ({} for a new tracked run)."""
    if name == "tensorboard":
        log_dir = where / "tensorboard" / run_name
        return TensorBoard(log_dir), {"log_dir": str(log_dir)}
    if name == "mlflow":
        uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or \
            f"sqlite:///{(where / 'mlflow.db').resolve()}"
        if uri.startswith("sqlite:"):
            where.mkdir(parents=True, exist_ok=True)
        run_id = resume.get("run_id") if resume.get("uri") == uri else None
        b = MLflow(uri, project, run_name, run_id, artifacts=where / "mlartifacts")
        return b, {"uri": uri, "run_id": b.run_id}
    if name == "wandb":
        b = Wandb(project, run_name, resume.get("run_id"), where, config)
        return b, {"run_id": b.run.id}
    if name == "trackio":
        return Trackio(project, run_name, config), {"run_name": run_name}
    raise ValueError(f"unknown tracker {name!r}; known: {sorted(PACKAGES)}")
