"""Generate: k samples per chosen prompt from the round's starting policy
-> generations.parquet (one row per sample, `completion_rows`)."""

from __future__ import annotations

from pathlib import Path

from alignloop import artifacts as A
from alignloop.config import GenerationConfig


def generate(rdir: Path, *, cfg: GenerationConfig, policy: str, prompts: list,
             chat_template: str = "auto", placement=None) -> list[dict]:
    """Sample `cfg.n` responses per prompt from `policy` -> generations.parquet (the `hf`
    backend where `placement` says). An `openai` backend keeps what the server already
    answered in generations.received.jsonl, so a rerun after a failure asks only for
    what is missing."""
    from alignloop.generation import SamplingParams, completion_rows, generator_for

    generator = generator_for(cfg, policy, cache_path=str(rdir / "generations.received.jsonl"),
                              chat_template=chat_template, placement=placement)
    completions = generator.sample(prompts, SamplingParams.from_config(cfg))
    rows = completion_rows(completions, prompts)
    A.write_parquet(rdir / A.GENERATIONS, rows)
    return rows
