"""The `data:` section: where the static preference pairs come from and how they are tokenised."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from alignloop.config.base import require


@dataclass(frozen=True)
class DataConfig:
    path: str = ""
    """Pairs source: `builtin:demo-pairs` (bundled), a .jsonl/.json or .parquet file, or `hf:NAME` for any
    `datasets.load_dataset` source (a hub id, or a local dataset directory)."""
    format: Literal["auto", "plain", "conversational", "hh"] = "auto"
    """Row format: `plain` prompt/chosen/rejected strings; `conversational`
    lists of {role, content} messages (TRL's format); `hh` Anthropic-HH
    transcripts in `chosen`/`rejected` with no prompt column; `auto` detects per row."""
    columns: dict[str, str] = field(default_factory=dict)
    """Column mapping {our_field: source_column}, e.g. {prompt: question}. Our
    fields: prompt, chosen, rejected, p_chosen, weight, pair_id, slice."""
    split: str = "train"
    """Split for `hf:` sources."""
    subset: str = ""
    """Dataset configuration name for `hf:` sources (empty: the default)."""
    limit: int = 0
    """Use only the first N valid pairs (0: all)."""
    on_invalid: Literal["error", "skip"] = "error"
    """Invalid rows: `error` stops naming file, row and reason; `skip` drops
    them and logs how many were dropped and why."""
    chat_template: Literal["auto", "always", "never"] = "auto"
    """How a plain-text prompt is rendered, the same in training, generation, judging and
    evaluation: `auto` makes it one user turn of the chat template when the model has one
    (an instruct model) and keeps it as written otherwise (a base model); `always` makes
    it a user turn and refuses a model without a template; `never` keeps it as written,
    a raw continuation (what TRL does with plain-text rows). Chat-message prompts always
    use the template."""
    max_length: int = 512
    """Most tokens of prompt + one response after prompt truncation."""
    max_prompt_length: int = 384
    """Prompts longer than this (in tokens) are handled by `truncation`."""
    truncation: Literal["keep_end", "error"] = "keep_end"
    """Long prompts: `keep_end` drops their first tokens (the end of a dialogue
    matters most); `error` treats the row as invalid. Responses are never cut."""

    def __post_init__(self) -> None:
        require(self.limit >= 0, "limit", "must be >= 0")
        require(self.max_length >= 2, "max_length", "must be >= 2")
        require(self.max_prompt_length >= 1, "max_prompt_length", "must be >= 1")
        require(self.max_prompt_length < self.max_length, "max_prompt_length",
                 f"must be < data.max_length ({self.max_length})")
        known = {"prompt", "chosen", "rejected", "p_chosen", "weight", "pair_id", "slice"}
        for ours in self.columns:
            require(ours in known, f"columns.{ours}", f"unknown field; expected one of {sorted(known)}")
