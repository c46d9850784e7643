"""Prompt files and the loop's prompt pool, split into training and held-out prompts.

A prompt row has `prompt` (text or chat messages) and optionally `prompt_id`,
`slice` and `split` (`train` | `eval`). Rows without a split are assigned by
their id, so adding prompts never moves an existing one across the split.
Held-out prompts are only ever evaluated on: the driver generates and trains on
`train` prompts alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from alignloop.errors import AlignloopError, not_found
from alignloop.records import label_problem, messages_from_json, unit_interval

log = logging.getLogger(__name__)

BUILTIN_POOLS = {"builtin:demo-prompts": Path(__file__).parent / "demo" / "data" / "demo_prompts.jsonl"}


class PromptError(AlignloopError, ValueError):
    """A prompt file that cannot be read, naming the file and row."""


@dataclass(frozen=True)
class PromptPool:
    train: list  # PromptItem
    eval: list   # PromptItem


def _prompt_id(prompt) -> str:
    return hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).hexdigest()[:16]


def read_prompt_rows(path: str | Path) -> list[dict]:
    """Rows of a JSONL or parquet prompt file (or a built-in pool), each checked here so
    that a bad prompt fails before any model loads, naming the file and row."""
    from alignloop.artifacts import read_rows

    name = str(path)
    p = BUILTIN_POOLS.get(name, Path(path).expanduser())
    if not p.exists():
        raise not_found("prompts file", name)
    if p.is_file() and p.suffix not in (".jsonl", ".json", ".parquet"):
        raise PromptError(f"{name}: unsupported file type {p.suffix!r}; a prompts file is "
                          ".jsonl, .json or .parquet")
    rows = _json_list(p, name) if p.suffix == ".json" else read_rows(p, PromptError, name)
    if not rows:
        raise PromptError(f"{name}: holds no prompts")
    if p.suffix == ".parquet":
        rows = _decoded_round_prompts(rows)
    for n, row in enumerate(rows, start=1):
        where = f"{name} row {n}"
        if not isinstance(row, dict):
            raise PromptError(f"{where}: the row is a {type(row).__name__}, not an object")
        if "prompt" not in row:
            raise PromptError(f"{where}: no 'prompt' field (the row has {sorted(row)[:6]}); "
                              "a prompt is text, or chat messages as a list of "
                              "{role, content} objects, under 'prompt'")
        row["prompt"] = _checked_prompt(row.get("prompt"), where)
        _check_slice(row.get("slice"), where)
        split = row.get("split")
        if split not in (None, "", "train", "eval"):
            raise PromptError(f"{where}: 'split' must be train or eval, got {split!r}")
    return rows


def _json_list(path: Path, name: str) -> list:
    """The rows of a `.json` prompt file: a list of rows, as pairs files may be."""
    from alignloop.data import DataError, InvalidRow, json_rows

    try:
        rows = list(json_rows(path))
    except DataError as e:
        raise PromptError(str(e).replace(str(path), name, 1)) from None
    for n, row in rows:
        if isinstance(row, InvalidRow):
            raise PromptError(f"{name} row {n}: {row.detail}")
    return [row for _, row in rows]


ROUND_PROMPT_COLUMNS = {"prompt_id", "prompt", "slice"}   # a round's prompts.parquet


def _decoded_round_prompts(rows: list) -> list:
    """A round's `prompts.parquet` stores every prompt as JSON (text prompts quoted), so
    passed back as a prompts file its prompts are decoded: known by its exact columns and
    by every prompt being JSON text or a JSON list. Any other parquet is read as given."""
    decoded = []
    for row in rows:
        if not isinstance(row, dict) or set(row) != ROUND_PROMPT_COLUMNS:
            return rows
        try:
            prompt = json.loads(row["prompt"]) if isinstance(row["prompt"], str) else None
        except (ValueError, RecursionError):
            return rows
        if not isinstance(prompt, (str, list)):
            return rows
        decoded.append({**row, "prompt": prompt})
    return decoded


def _check_slice(value, where: str) -> None:
    """A slice name is a label (`records.label_problem`)."""
    if value is None:
        return
    if not isinstance(value, str):
        raise PromptError(f"{where}: 'slice' must be text, got {type(value).__name__}")
    problem = label_problem(value)
    if problem:
        raise PromptError(f"{where}: 'slice' {problem}")


def _checked_prompt(prompt, where: str):
    """The row's prompt, text or chat messages, checked as the pairs reader checks them
    (known roles, non-empty string contents). Text holding a JSON message list is chat
    messages (parquet stores them so); any other text, even valid JSON, is a text prompt."""
    from alignloop.data import DataError, check_messages, check_text

    if isinstance(prompt, str):
        prompt = messages_from_json(prompt) or prompt
    if prompt is not None and not isinstance(prompt, (str, list)):
        raise PromptError(f"{where}: 'prompt' must be text or a list of {{role, content}} "
                          f"messages, not {type(prompt).__name__} ({str(prompt)[:40]})")
    if not prompt:
        raise PromptError(f"{where}: missing or empty 'prompt' (text or messages)")
    try:
        if isinstance(prompt, list):
            check_messages(prompt, "prompt")   # the messages are kept as given (extra keys too)
        else:
            check_text(prompt, "prompt")
    except DataError as e:
        raise PromptError(f"{where}: {e}") from None
    texts = [prompt] if isinstance(prompt, str) else [str(m.get("content", "")) for m in prompt]
    for text in texts:
        if "\x00" in text:   # no queue database can store it: found here, not at round 1's label
            raise PromptError(f"{where}: 'prompt' contains a NUL character (U+0000) at "
                              f"position {text.index(chr(0))}")
    return prompt


def _rows_with_ids(path: str | Path) -> list[tuple[str, dict]]:
    """(prompt id, row) per row: the row's `prompt_id`, else a hash of the prompt. Ids are
    unique: a repeated one (the same id, or the same prompt twice without ids) is an error
    naming both rows, since seeds, samples and pairs are keyed by it."""
    first: dict[str, int] = {}
    out = []
    for n, r in enumerate(read_prompt_rows(path), start=1):
        pid = str(r.get("prompt_id") or _prompt_id(r["prompt"]))
        if pid in first:
            what = "prompt_id" if r.get("prompt_id") else "prompt (no prompt_id)"
            raise PromptError(f"{path} rows {first[pid]} and {n}: the same {what} {pid!r}; "
                              "every prompt needs its own prompt_id")
        first[pid] = n
        out.append((pid, r))
    return out


def read_prompts(path: str | Path) -> list:
    """PromptItems of a prompt file (every row, whatever its split)."""
    from alignloop.generation import PromptItem

    return [PromptItem(pid, r["prompt"], str(r.get("slice") or ""))
            for pid, r in _rows_with_ids(path)]


def load_pool(path: str | Path, eval_share: float = 0.25) -> PromptPool:
    """The pool split into training and held-out prompts (ids unique across both)."""
    from alignloop.generation import PromptItem

    train, held = [], []
    for pid, r in _rows_with_ids(path):
        split = r.get("split") or ("eval" if unit_interval(pid) < eval_share else "train")
        item = PromptItem(pid, r["prompt"], str(r.get("slice") or ""))
        (held if split == "eval" else train).append(item)
    held_text = {json.dumps(it.prompt, sort_keys=True): it.prompt_id for it in held}
    leaking = [(it.prompt_id, held_text[key]) for it in train
               if (key := json.dumps(it.prompt, sort_keys=True)) in held_text]
    if leaking:   # trained on, a copy of a held-out prompt would leak into its evaluation
        shown = ", ".join(f"{t} (= {h})" for t, h in leaking[:3])
        log.warning("%s: left out %d training prompts whose text is a held-out prompt's: %s%s",
                    path, len(leaking), shown, " ..." if len(leaking) > 3 else "")
        left_out = {t for t, _ in leaking}
        train = [it for it in train if it.prompt_id not in left_out]
    if not train or not held:
        raise PromptError(f"{path}: the pool needs both training and held-out prompts "
                          f"(got {len(train)} train, {len(held)} eval)")
    return PromptPool(train, held)
