"""Writing the reports of a run directory: one per round, and the cross-round view.

    round_NNN/report/report.json   written last: its presence means the report is complete
    round_NNN/report/report.md     the numbers as Markdown tables
    round_NNN/report/report.html   one self-contained file, figures embedded
    round_NNN/report/*.png         the figures
    RUN_DIR/report.html            every headline metric across rounds, and the run's state
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from alignloop.artifacts import RUN_STATE
from alignloop.errors import AlignloopError
from alignloop.evaluation import SAMPLES, round_dir
from alignloop.report.inputs import MissingRunConfig, load_round, resolve_config
from alignloop.report.schema import validate_report
from alignloop.report.sections import build_round_report, pick_examples

REPORT_DIR = "report"


def write_round_report(run_dir: str | Path, round: int, *, config=None,
                       previous: int | None | Literal["state"] = "state") -> Path:
    """Write round_NNN/report/{report.json, report.md, report.html, *.png}; returns the
    path of report.json. `config` is a Config (default: RUN_DIR/config.yaml, which must
    exist); `previous` as in `load_round` (default: from state.json)."""
    from alignloop.artifacts import atomic_write_bytes, atomic_write_json, atomic_write_text
    from alignloop.report.html import render_round_html
    from alignloop.report.markdown import render_markdown
    from alignloop.report.plots import round_figures

    cfg = resolve_config(run_dir, config)
    inp = load_round(run_dir, round, previous=previous)
    if not inp.dir.exists():
        raise FileNotFoundError(f"no round {round} in {run_dir}: {inp.dir} not found")
    report = build_round_report(inp, cfg)
    validate_report(report)
    out = inp.dir / REPORT_DIR
    figures = round_figures(report, inp.train_log or [])
    for name, png in figures.items():
        atomic_write_bytes(out / f"{name}.png", png)
    for old in out.glob("*.png"):                 # figures of an earlier report with more data
        if old.stem not in figures:
            old.unlink()
    atomic_write_text(out / "report.md", render_markdown(report, figures))
    examples = pick_examples(inp, cfg.report.examples, cfg.report.seed)
    atomic_write_text(out / "report.html", render_round_html(report, figures, examples))
    return atomic_write_json(out / "report.json", report)


def read_round_report(run_dir: str | Path, k: int, config=None) -> tuple[dict | None, str]:
    """(report, status) of round k: its report.json ("done"), one computed in memory from
    its eval artifacts ("computed"), or (None, why not) when it has no eval yet ("in
    progress") or the report cannot be computed."""
    rdir = round_dir(run_dir, k)
    path = rdir / REPORT_DIR / "report.json"
    if path.exists():
        try:
            return json.loads(path.read_text()), "done"
        except json.JSONDecodeError:
            pass
    if not (rdir / SAMPLES).exists():
        return None, "in progress"
    try:
        cfg = resolve_config(run_dir, config)
    except MissingRunConfig:
        return None, "not computed: the run directory has no config.yaml"
    except AlignloopError as e:                   # config.yaml unreadable
        return None, f"not computed: {e}"
    try:
        return build_round_report(load_round(run_dir, k), cfg), "computed"
    except (AlignloopError, OSError, ValueError) as e:   # the run view never fails on one round
        return None, f"eval artifacts unreadable: {e}"


def round_numbers(run_dir: str | Path) -> list[int]:
    return sorted(int(p.name[6:]) for p in Path(run_dir).glob("round_*")
                  if p.is_dir() and p.name[6:].isdigit())


def write_run_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html: every headline metric across rounds and the run's state
    (see `alignloop.report.html.render_run_html` for the state.json contract)."""
    from alignloop.artifacts import atomic_write_text
    from alignloop.report.html import render_run_html

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    state_path = run_dir / RUN_STATE
    from alignloop.rounds.state import read_state

    state = read_state(state_path) if state_path.exists() else None
    rounds = sorted(set(round_numbers(run_dir)) | {int(k) for k in (state or {}).get("rounds", {})})
    if state is None and not rounds:     # write no report.html into a folder that is no run
        from alignloop.rounds.state import RunError

        raise RunError(f"{run_dir} is not a run directory: no state.json and no round_NNN")
    reports = {k: read_round_report(run_dir, k) for k in rounds}
    return atomic_write_text(run_dir / "report.html", render_run_html(run_dir, reports, state))
