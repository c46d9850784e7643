"""Model cards: each round's `policy/README.md`, with Hugging Face Hub metadata.

The card says what the policy is and how it got there: the round, the objective (loss,
beta), what it was trained against (the reference mode and the round's reference), the
pairs by source, and the round's headline drift numbers with their 95% intervals, the
alerts and the gate, all read from the round's own artifacts (pairs.parquet,
train_log.jsonl, report/report.json). The YAML header is the Hub's model-card metadata:
base_model, library_name, license (the base model's, when known locally), tags, datasets.

The same run gives the same bytes: no time, no absolute path, numbers formatted as
report.md formats them (`alignloop.report.markdown`). The report stage writes it, right
after the drift report it quotes; `alignloop push --merged` writes the variant for the
merged weights.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import yaml
from alignloop import artifacts as A

BUILTIN_HUB = {"builtin:smollm2-135m-instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct",
                                                 "apache-2.0")}
"""Built-in model -> (the Hub model it derives from, its license). The built-in SmolLM2 is
the Q4_1 GGUF of that model, dequantised: its weights are close to, not equal to, the
Hub's."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _front_matter(readme: Path) -> dict:
    text = readme.read_text(errors="replace") if readme.is_file() else ""
    if not text.startswith("---"):
        return {}
    try:
        meta = yaml.safe_load(text.split("---", 2)[1])
    except (yaml.YAMLError, IndexError):
        return {}
    return meta if isinstance(meta, dict) else {}


def base_model_info(name: str) -> tuple[str | None, str | None]:
    """(Hub id, license) of the base model `name`, from what is on this machine only: a
    built-in's known origin, a local directory's README.md metadata, or a hub id's README
    in the Hugging Face cache. Nothing is downloaded."""
    if name in BUILTIN_HUB:
        return BUILTIN_HUB[name]
    path = Path(name).expanduser()
    if path.is_dir():
        meta = _front_matter(path / "README.md")
        base = meta.get("base_model")
        return (base if isinstance(base, str) else None), meta.get("license")
    if not _HUB_ID.match(name):
        return None, None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "README.md")
    except Exception:  # noqa: BLE001 (no cache, or an unusual one: the license stays unknown)
        cached = None
    return name, _front_matter(Path(cached)).get("license") if isinstance(cached, str) else None


def adapter_base(policy: Path) -> str:
    """The model a LoRA policy's adapter applies to (`alignloop_base.json`; a relative base
    is relative to the policy directory), as `alignloop.models.adapter_base` reads it."""
    base = json.loads((policy / "alignloop_base.json").read_text())["base"]
    return os.path.normpath(policy / base) if base.startswith(("./", "../")) else base


def _hub_datasets(data_path: str) -> list[str]:
    spec = data_path[3:] if data_path.startswith("hf:") else ""
    return [spec] if _HUB_ID.match(spec) and not Path(spec).exists() else []


def _describe(ref: str, run_dir: Path, base: str) -> str:
    if ref == base:
        return f"the base model (`{base}`)"
    try:
        return f"`{Path(ref).resolve().relative_to(run_dir.resolve())}`"
    except ValueError:
        return f"`{ref}`"


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def model_card(run_dir: str | Path, k: int, cfg, *, reference: str, merged: bool = False) -> str:
    """The model card of round k's policy (`cfg`: the run's Config; `reference`: the model
    round k trained against). `merged`: the card of its merged full weights (a LoRA
    round's `policy/` holds only an adapter)."""
    from alignloop.report.alerts import gate_verdict
    from alignloop.report.markdown import fmt, headline_rows, md_text

    run_dir = Path(run_dir)
    rdir = A.round_dir(run_dir, k)
    base = cfg.model.name
    hub_base, license_ = base_model_info(base)
    adapter = (rdir / A.POLICY / "alignloop_base.json").is_file() and not merged
    meta: dict = {}
    if hub_base:
        meta["base_model"] = hub_base
    meta["library_name"] = "peft" if adapter else "transformers"
    if license_:
        meta["license"] = license_
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = ["alignloop", "dpo", f"loss-{cfg.train.loss}"] + (["lora"] if adapter else [])
    if datasets := _hub_datasets(cfg.data.path):
        meta["datasets"] = datasets

    pairs = A.read_parquet(rdir / A.PAIRS) if (rdir / A.PAIRS).exists() else []
    by_source = Counter(p["source"] for p in pairs)
    new = sum(p["round"] == k for p in pairs)
    log = [json.loads(x) for x in (rdir / A.TRAIN_LOG).read_text().splitlines() if x.strip()] \
        if (rdir / A.TRAIN_LOG).exists() else []
    report = json.loads((rdir / A.REPORT_JSON).read_text()) if (rdir / A.REPORT_JSON).exists() \
        else None
    what = (f"a LoRA adapter on {_describe(adapter_base(rdir / A.POLICY), run_dir, base)}"
            if adapter else "full weights" + (" (the LoRA adapter merged in)" if merged else ""))
    lines = [f"# {run_dir.name}: round {k} policy", "",
             f"Round {k} of an alignloop run: iterative DPO "
             f"({'offline, on the static pairs' if k == 0 else 'online, on failure slices'}), "
             f"starting from `{base}`" + (f" (from `{hub_base}`)" if hub_base and hub_base != base
                                          else "") + f". These are {what}.", "",
             "## Training", ""]
    lines += _table(("setting", "value"), [
        ("loss", f"`{cfg.train.loss}`"), ("β", fmt(cfg.train.beta)),
        ("reference mode", f"`{cfg.reference.mode}`"),
        ("reference this round", _describe(reference, run_dir, base)),
        ("optimizer steps", log[-1]["step"] if log else "—"),
        ("final loss", fmt(log[-1]["loss"], 4) if log else "—"),
        ("learning rate", fmt(cfg.train.learning_rate)),
    ])
    lines += ["", f"## Pairs ({len(pairs)}: {new} new this round, {len(pairs) - new} replayed)",
              ""]
    lines += _table(("source", "pairs"), sorted(by_source.items()))
    lines += ["", "## Drift (this round's report)", ""]
    if report is None:
        lines.append("No drift report for this round.")
    else:
        lines += _table(("metric", "value", "95% interval", "n"), headline_rows(report))
        alerts = report.get("alerts") or []
        lines += ["", f"Alerts: {len(alerts)}."] + [f"- {md_text(a['message'])}" for a in alerts]
        gate = gate_verdict(report, cfg.loop.gate,
                            min_slice_samples=cfg.report.min_slice_samples)
        lines += ["", "Gate: " + (f"tripped ({md_text(gate['reason'])}), action {gate['action']}."
                                  if gate["tripped"] else "passed.")]
    header = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return f"---\n{header}---\n\n" + "\n".join(lines) + "\n"


def write_model_card(run_dir: str | Path, k: int, cfg, *, reference: str) -> Path:
    """Write round k's `policy/README.md` (atomically) and return its path."""
    path = A.round_dir(run_dir, k) / A.MODEL_CARD
    return A.atomic_write_text(path, model_card(run_dir, k, cfg, reference=reference))
