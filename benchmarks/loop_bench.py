"""Shared by the experiments that run the loop on the demo task (hybrid_vs_offline,
label_noise): configs derived from configs/demo.yaml, pair files, the evaluation rows a
finished run left, and the statistics the tables print.

Every experiment run is an ordinary alignloop run directory under runs/bench/, so a
killed benchmark resumes where it stopped and every figure can be traced to its
report.json.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RUNS = ROOT / "runs" / "bench"
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"


def demo_raw() -> dict[str, Any]:
    return yaml.safe_load(DEMO_CONFIG.read_text())


def make_config(raw: dict[str, Any], overrides: dict[str, Any]):
    """A Config from a raw mapping plus `{"a.b": value}` overrides (values as JSON/YAML)."""
    from alignloop.config import config_from_dict

    return config_from_dict(raw, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])


def static_rows() -> list[dict]:
    """The demo's static preference set (base-model samples on the static prompt mix)."""
    from alignloop.data import BUILTIN_SOURCES

    path = Path(BUILTIN_SOURCES["builtin:demo-static"])
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_rows(path: Path, rows: list[dict]) -> Path:
    from alignloop.artifacts import write_jsonl

    path.parent.mkdir(parents=True, exist_ok=True)
    return write_jsonl(path, rows)


def run_loop(cfg, run_dir: Path) -> dict:
    """Run (or resume) the loop; a finished run returns at once."""
    from alignloop.rounds import Loop

    return Loop(cfg, run_dir).run()


def last_round(run_dir: Path) -> int:
    state = json.loads((run_dir / "state.json").read_text())
    done = [int(k) for k, r in state["rounds"].items() if "report" in r.get("stages", {})]
    return max(done)


def report(run_dir: Path, k: int) -> dict:
    return json.loads((run_dir / f"round_{k:03d}" / "report" / "report.json").read_text())


def samples(run_dir: Path, k: int, model: str = "policy") -> list[dict]:
    from alignloop.evaluation import read_samples

    return [r for r in read_samples(run_dir / f"round_{k:03d}") or [] if r["model"] == model]


def kl_to_base(rep: dict) -> dict:
    """{value, lo, hi} of the k1 per-sequence KL(policy || base) of a round report."""
    return rep["kl_to_base"]["k1"]["sequence"]


def mean_ci(values, groups=None, seed: int = 0) -> dict:
    """Mean with a 95% cluster-bootstrap interval (clusters: `groups`), via alignloop.report.metrics."""
    from alignloop.report.metrics import estimate

    return estimate(list(values), groups=None if groups is None else list(groups),
                    n_boot=2000, seed=seed)


def t_interval(values) -> dict:
    """Mean and 95% Student-t interval over independent replicates (seeds)."""
    from scipy import stats

    x = np.asarray(list(values), dtype=float)
    if x.size < 2:
        return {"value": float(x.mean()) if x.size else math.nan, "lo": math.nan,
                "hi": math.nan, "n": int(x.size)}
    half = stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return {"value": float(x.mean()), "lo": float(x.mean() - half),
            "hi": float(x.mean() + half), "n": int(x.size)}


def fmt_ci(e: dict, digits: int = 3) -> str:
    if e is None or e.get("value") is None or not math.isfinite(e["value"]):
        return "-"
    v = f"{e['value']:.{digits}f}"
    if math.isfinite(e.get("lo", math.nan)):
        v += f" [{e['lo']:.{digits}f}, {e['hi']:.{digits}f}]"
    return v
