"""What a round report reads: the round's artifacts, the policy it is compared with, the config.

"Previous" is the policy round k started from, which is round k - 1's unless a gate
rolled that round back: `previous_round` walks back over rolled-back rounds in
RUN_DIR/state.json. The base model is sampled once, in round 0; later rounds without
"base" rows read round 0's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from alignloop.artifacts import RUN_STATE
from alignloop.errors import AlignloopError
from alignloop.evaluation import (
    COMPARISONS,
    HELDOUT_PAIRS,
    SAMPLES,
    read_comparisons,
    read_heldout_pairs,
    read_samples,
    round_dir,
)

CONFIG_FILE = "config.yaml"
STATE_FILE = RUN_STATE


class MissingRunConfig(AlignloopError, FileNotFoundError):
    """A run directory without config.yaml, and no config given."""


@dataclass
class RoundInputs:
    """Everything a round report reads; None where the artifact does not exist."""

    k: int
    dir: Path
    samples: list[dict] | None = None
    comparisons: list[dict] | None = None
    heldout: list[dict] | None = None
    previous: list[dict] | None = None          # policy samples of round `previous_round`
    previous_round: int | None = None           # the round whose policy round k started from
    base: list[dict] | None = None              # base-model samples (this round's or round 0's)
    previous_reason: str = ""                   # why `previous` is None
    labels: list[dict] | None = None
    candidates: list[dict] | None = None
    pairs: list[dict] | None = None
    train_log: list[dict] | None = None
    targeted_slices: list[str] | None = None    # slices.json "chosen": where round k sampled
    calibration: dict | None = None             # calibration.json "this_round": {judge: fit}
    gate_record: dict | None = None             # state.json's gate verdict on round k, once made
    inputs: dict = field(default_factory=dict)  # report.json "inputs": paths from report/

    def rows(self, model: str) -> list[dict]:
        return [r for r in self.samples or [] if r["model"] == model]


def resolve_config(run_dir: str | Path, config=None):
    """`config` if given, else RUN_DIR/config.yaml (`load_config`, which migrates old key
    names). No silent defaults: beta, the human budget and the thresholds of a report
    must be the run's own."""
    from alignloop.config import load_config

    if config is not None:
        return config
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise MissingRunConfig(
            f"{path} not found: a report needs the run's config (train.beta, "
            "labeling.human.budget, the report thresholds). Restore the run's config.yaml, or "
            "pass the config: write_round_report(run_dir, k, config=cfg)")
    return load_config(path)


def previous_round(run_dir: str | Path, k: int) -> int | None:
    """The round whose policy round k started from: k - 1, stepping back over every round
    whose gate tripped with action "rollback" in RUN_DIR/state.json (no state.json: k - 1).
    None when round k started from the base model (round 0, or every earlier round
    rolled back)."""
    from alignloop.rounds.state import start_round

    return start_round(_state_rounds(run_dir), k)


def _state_rounds(run_dir: str | Path) -> dict:
    """RUN_DIR/state.json's "rounds" ({} when there is no state.json)."""
    from alignloop.rounds.state import read_state

    path = Path(run_dir) / STATE_FILE
    return read_state(path)["rounds"] if path.exists() else {}


def load_round(run_dir: str | Path, k: int, *,
               previous: int | None | Literal["state"] = "state") -> RoundInputs:
    """Read round k's artifacts. `previous`: the round whose policy round k started from
    (None: the base model); "state" (default) asks `previous_round`, i.e. state.json."""
    from alignloop.rounds.state import start_round

    rounds = _state_rounds(run_dir)                    # state.json, read once
    if previous == "state":
        previous = start_round(rounds, k)
    rdir = round_dir(run_dir, k)
    inp = RoundInputs(k, rdir, read_samples(rdir), read_comparisons(rdir),
                      read_heldout_pairs(rdir), previous_round=previous,
                      gate_record=rounds.get(str(k), {}).get("gate"))
    _read_round_files(inp)
    _read_base(inp, run_dir)
    _read_previous(inp, run_dir)
    return inp


def _rel(path: Path) -> str | None:
    """`path` (a file of the round directory) relative to round_NNN/report/."""
    return f"../{path.name}" if path.exists() else None


def _read_round_files(inp: RoundInputs) -> None:
    from alignloop.artifacts import read_parquet

    rdir = inp.dir
    for name, f in (("samples", SAMPLES), ("comparisons", COMPARISONS),
                    ("heldout_pairs", HELDOUT_PAIRS)):
        inp.inputs[name] = f"../{f}" if (rdir / f).exists() else None
    for name in ("labels", "candidates", "pairs"):
        path = rdir / f"{name}.parquet"
        setattr(inp, name, read_parquet(path) if path.exists() else None)
        inp.inputs[name] = _rel(path)
    for name, f in (("slices", "slices.json"), ("calibration", "calibration.json")):
        path = rdir / f
        data = _json_file(path) if path.exists() else None
        inp.inputs[name] = _rel(path)
        if name == "slices" and isinstance(data, dict):
            inp.targeted_slices = [str(x) for x in data.get("chosen") or []]
        elif name == "calibration" and isinstance(data, dict):
            inp.calibration = data.get("this_round")
    log = rdir / "train_log.jsonl"
    if log.exists():
        inp.train_log = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    inp.inputs["train_log"] = _rel(log)


def _json_file(path: Path):
    """A round's JSON file (NaN allowed, as Python writes it); a damaged one is a named
    error, never a report quietly missing its section."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AlignloopError(f"{path}: not readable JSON ({e}); the round's report needs it. "
                             "Restore the file, or redo the round") from None


def _read_base(inp: RoundInputs, run_dir: str | Path) -> None:
    inp.base = inp.rows("base") or None
    inp.inputs["base_samples"] = inp.inputs["samples"] if inp.base else None
    if inp.base is None and inp.k > 0:            # the base model is sampled once, in round 0
        rows = read_samples(round_dir(run_dir, 0)) or []
        inp.base = [r for r in rows if r["model"] == "base"] or None
        inp.inputs["base_samples"] = f"../../round_000/{SAMPLES}" if inp.base else None


def _read_previous(inp: RoundInputs, run_dir: str | Path) -> None:
    k, p = inp.k, inp.previous_round
    inp.inputs["previous_samples"] = None
    if p is None:
        inp.previous_reason = ("round 0 has no previous policy" if k == 0 else
                               f"round {k} started from the base model, not from an earlier "
                               "round's policy (every earlier round was rolled back)")
    elif not round_dir(run_dir, p).exists():
        inp.previous_reason = f"round {p} does not exist in this run directory"
    else:
        rows = read_samples(round_dir(run_dir, p)) or []
        inp.previous = [r for r in rows if r["model"] == "policy"] or None
        if inp.previous is None:
            inp.previous_reason = f"round {p} has no policy samples in {SAMPLES}"
        else:
            inp.inputs["previous_samples"] = f"../../round_{p:03d}/{SAMPLES}"
