"""Reading preference pairs from files and datasets, and writing `pairs.parquet`.

Bad rows are caught here, before any model is loaded, with a message naming
the file, the row and the reason. Row numbers are 1-based everywhere: the line
number in a JSONL file, the position in a JSON list, parquet file or dataset
split. Token-length checks need the tokenizer and happen in the trainer.

Row formats (`format="auto"` decides per row):
- plain: `prompt`, `chosen`, `rejected` are strings, kept exactly as given.
- conversational (TRL's): `prompt` is a list of `{role, content}` messages,
  `chosen`/`rejected` are message lists ending with the assistant answer.
  Messages they share before the answer belong to the prompt: this covers the
  implicit-prompt form (whole conversations, no `prompt`) and datasets that
  repeat the prompt inside each conversation. A text prompt next to message
  lists is one user message.
- hh: Anthropic-HH transcripts ("\\n\\nHuman: ...\\n\\nAssistant: ...") in
  `chosen`/`rejected` only; the turns before the final "Assistant:" are the
  prompt and must be the same in both.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from alignloop.artifacts import iter_jsonl, read_parquet, write_parquet
from alignloop.config import DataConfig
from alignloop.errors import AlignloopError
from alignloop.records import PAIR_COLUMNS, Message, Pair, Prompt

log = logging.getLogger("alignloop.data")

FIELDS = ("prompt", "chosen", "rejected", "p_chosen", "weight", "pair_id", "slice")
FORMATS = ("auto", "plain", "conversational", "hh")
ROLES = ("system", "user", "assistant")
# `hf:BUILDER:FILES` loads local files with one of the packaged `datasets` builders.
_DEMO_DATA = Path(__file__).parent / "demo" / "data"
# Pair sets shipped with the package, usable from any working directory.
BUILTIN_SOURCES = {"builtin:demo-pairs": str(_DEMO_DATA / "static_pairs.jsonl"),
                   "builtin:demo-static": str(_DEMO_DATA / "demo_static_pairs.jsonl")}
HF_BUILDERS = ("json", "csv", "parquet", "arrow")
_HH_ANSWER = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


class DataError(AlignloopError, ValueError):
    """Unusable pairs data; the message names the file, the 1-based row and the reason."""


@dataclass
class LoadReport:
    """Rows looked at (a `limit` stops reading early), pairs returned, dropped rows per reason."""

    n_read: int
    n_valid: int
    skipped: dict[str, int] = field(default_factory=dict)


class _Invalid(Exception):
    """A row that cannot become a Pair: `reason` is counted in `LoadReport.skipped`, `detail` shown."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


# --------------------------------------------------------------------------- reading rows


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    for n, value, error in iter_jsonl(path):
        yield n, (_Invalid("invalid JSON", error) if error else value)


def _json_rows(path: Path) -> Iterator[tuple[int, Any]]:
    text = path.read_text(encoding="utf-8-sig")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several top-level values: JSON lines under a .json name
            yield from _jsonl_rows(path)
            return
        raise DataError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: holds a JSON {type(data).__name__}; expected a list of objects")
    yield from enumerate(data, 1)


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    yield from enumerate((row for batch in batches for row in batch.to_pylist()), 1)


def _load_hf(spec: str, split: str, subset: str):
    """The `datasets.Dataset` behind `hf:SPEC`; only a hub id (the last case) goes online."""
    import datasets

    builder, _, files = spec.partition(":")
    if builder in HF_BUILDERS and files:
        if not any(c in files for c in "*?[") and not Path(files).exists():
            raise FileNotFoundError(f"pairs file not found: {files}")
        return datasets.load_dataset(builder, data_files={split: files}, split=split)
    local = Path(spec).expanduser()
    if local.is_dir():
        if (local / "dataset_info.json").exists() or (local / "dataset_dict.json").exists():
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"hf:{spec}: no split '{split}'; it has {sorted(ds)}")
                ds = ds[split]
            return ds
        return datasets.load_dataset(str(local), subset or None, split=split)
    if local.exists():
        raise DataError(f"hf:{spec} is a file; read it without hf:, or as hf:json:PATH (csv, parquet, arrow)")
    if spec.startswith(("/", ".", "~")):
        raise FileNotFoundError(f"pairs dataset directory not found: {spec}")
    return datasets.load_dataset(spec, subset or None, split=split)


def _open_rows(path: str, split: str, subset: str) -> tuple[str, Iterator[tuple[int, Any]]]:
    """(name used in messages, iterator of (1-based row number, row))."""
    if path.startswith("hf:"):
        ds = _load_hf(path[3:], split, subset)
        return f"{path}[{split}]", (row for row in enumerate(ds, 1))
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"pairs file not found: {path}")
    if p.is_dir():
        raise DataError(f"{path} is a directory; a pairs file is .jsonl, .json or .parquet "
                        "(a saved datasets directory is read as hf:PATH)")
    readers = {".jsonl": _jsonl_rows, ".json": _json_rows, ".parquet": _parquet_rows}
    if p.suffix not in readers:
        raise DataError(f"{path}: unsupported file type '{p.suffix}'; expected .jsonl, .json, "
                        ".parquet or an hf: source")
    return path, readers[p.suffix](p)


# --------------------------------------------------------------------------- parsing one row


def _field(row: dict, name: str, columns: dict[str, str], required: bool) -> Any:
    """The row's value for our field `name` (None when absent and optional)."""
    col = columns.get(name, name)
    value = row.get(col)
    # A column named in the mapping must exist even for an optional field (catches typos).
    if value is None and (required or (name in columns and col not in row)):
        where = f" (column '{col}')" if col != name else ""
        raise _Invalid("missing field", f"missing field '{name}'{where}")
    return value


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise _Invalid("non-string text", f"{name} is not a string (got {type(value).__name__})")
    if not value.strip():
        raise _Invalid("empty text", f"{name} is empty")
    return value


def _messages(value: Any, name: str, text_ok: bool = False) -> list[Message]:
    if text_ok and isinstance(value, str):  # a text prompt beside message-list responses
        return [{"role": "user", "content": _text(value, name)}]
    if not isinstance(value, list):
        raise _Invalid("malformed message", f"{name} is not a list of messages (got {type(value).__name__})")
    out = []
    for i, m in enumerate(value, 1):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise _Invalid("malformed message",
                           f"{name} message {i} is not a {{role, content}} mapping of strings")
        if m["role"] not in ROLES:
            raise _Invalid("malformed message",
                           f"{name} message {i} has role '{m['role']}'; expected one of {', '.join(ROLES)}")
        _text(m["content"], f"{name} message {i}")
        out.append({"role": m["role"], "content": m["content"]})  # extra keys are dropped
    return out


def _conversational(prompt: Any, chosen: Any, rejected: Any) -> tuple[Prompt, str, str]:
    head = _messages(prompt, "prompt", text_ok=True) if prompt is not None else []
    convs = {"chosen": _messages(chosen, "chosen"), "rejected": _messages(rejected, "rejected")}
    for name, conv in convs.items():
        if not conv:
            raise _Invalid("empty text", f"{name} has no messages")
        if conv[-1]["role"] != "assistant":
            raise _Invalid("malformed message",
                           f"the last {name} message has role '{conv[-1]['role']}'; expected assistant")
    c, r = convs["chosen"], convs["rejected"]
    shared = c[:-1]
    if shared != r[:-1]:
        raise _Invalid("mismatched prompts", "chosen and rejected differ before their final message")
    messages = shared if shared[: len(head)] == head else head + shared
    if not messages:
        raise _Invalid("missing field", "missing field 'prompt' (chosen and rejected hold only the answer)")
    return messages, c[-1]["content"], r[-1]["content"]


def _hh_split(text: Any, name: str) -> tuple[list[Message], str]:
    """An HH transcript -> (the turns before the final Assistant answer, that answer)."""
    text = _text(text, name)
    if not text.startswith("\n\n"):
        text = "\n\n" + text.lstrip()
    cut = text.rfind(_HH_ANSWER)
    if cut < 0:
        raise _Invalid("malformed transcript", f"{name} has no '\\n\\nAssistant:' turn")
    parts = _HH_TURN.split(text[:cut])
    if parts[0].strip() or len(parts) < 3:
        raise _Invalid("malformed transcript", f"{name} does not start with a '\\n\\nHuman:' turn")
    turns = []
    for speaker, content in zip(parts[1::2], parts[2::2], strict=True):
        if not content.strip():
            raise _Invalid("empty text", f"{name} has an empty {speaker} turn")
        turns.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    answer = text[cut + len(_HH_ANSWER):].strip()
    if not answer:
        raise _Invalid("empty text", f"{name} has an empty final answer")
    return turns, answer


def _detect(prompt: Any, chosen: Any) -> str:
    if isinstance(prompt, list) or isinstance(chosen, list):
        return "conversational"
    if prompt is None and isinstance(chosen, str) and _HH_ANSWER in chosen:
        return "hh"
    return "plain"


def _number(value: Any, name: str, default: float) -> float:
    if value is None:
        return default
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise _Invalid(f"invalid {name}", f"{name} is not a finite number (got {value!r})")
    return float(value)


def _parse_row(row: Any, fmt: str, columns: dict[str, str]) -> Pair:
    """One source row -> Pair (without origin); raises _Invalid."""
    if isinstance(row, _Invalid):
        raise row
    if not isinstance(row, dict):
        raise _Invalid("not an object", f"row is a {type(row).__name__}, not an object")
    chosen = _field(row, "chosen", columns, required=True)
    rejected = _field(row, "rejected", columns, required=True)
    kind = _detect(row.get(columns.get("prompt", "prompt")), chosen) if fmt == "auto" else fmt
    if kind == "hh":
        (prompt, chosen), (other, rejected) = _hh_split(chosen, "chosen"), _hh_split(rejected, "rejected")
        if prompt != other:
            raise _Invalid("mismatched prompts",
                           "chosen and rejected have different turns before the final Assistant answer")
    elif kind == "conversational":
        raw_prompt = _field(row, "prompt", columns, required=False)
        prompt, chosen, rejected = _conversational(raw_prompt, chosen, rejected)
    else:
        prompt = _text(_field(row, "prompt", columns, required=True), "prompt")
        chosen, rejected = _text(chosen, "chosen"), _text(rejected, "rejected")
    if chosen.strip() == rejected.strip():
        raise _Invalid("identical responses", "chosen is identical to rejected")

    p_chosen = _number(_field(row, "p_chosen", columns, required=False), "p_chosen", 1.0)
    if not 0.0 <= p_chosen <= 1.0:
        raise _Invalid("invalid p_chosen", f"p_chosen is {p_chosen}, outside [0, 1]")
    weight = _number(_field(row, "weight", columns, required=False), "weight", 1.0)
    if weight <= 0:
        raise _Invalid("invalid weight", f"weight is {weight}; it must be positive")
    pair_id = _field(row, "pair_id", columns, required=False)
    if pair_id is not None and (isinstance(pair_id, bool) or not isinstance(pair_id, (str, int))):
        raise _Invalid("invalid pair_id", f"pair_id is not a string or integer (got {pair_id!r})")
    slice_ = _field(row, "slice", columns, required=False)
    if slice_ is not None and not isinstance(slice_, str):
        raise _Invalid("invalid slice", f"slice is not a string (got {slice_!r})")
    return Pair(prompt=prompt, chosen=chosen, rejected=rejected, p_chosen=p_chosen, weight=weight,
                source="static", slice=slice_ or "", pair_id="" if pair_id is None else str(pair_id))


# --------------------------------------------------------------------------- public API


def read_pairs(path: str | Path, *, format: str = "auto", columns: dict[str, str] | None = None,
               split: str = "train", subset: str = "", limit: int = 0,
               on_invalid: str = "error",
               skip_hint: str = "set data.on_invalid=skip") -> tuple[list[Pair], LoadReport]:
    """Read and validate preference pairs from `path`.

    `path` is `builtin:demo-pairs` (the bundled demo set), a `.jsonl`, `.json` (a list of objects) or `.parquet` file, or
    `hf:SOURCE` for `datasets`: `hf:json:PATH` (also csv, parquet, arrow;
    PATH may be a glob) for local files, `hf:DIR` for a local dataset
    directory, `hf:OWNER/NAME` for a hub dataset (`subset` is its
    configuration, `split` the split). `columns` maps our fields to source
    columns, e.g. `{"prompt": "question"}`. `limit` keeps the first N valid
    pairs. Invalid rows raise `DataError` (`on_invalid="error"`) or are
    dropped and counted by reason (`"skip"`); the error says how to skip them (`skip_hint`,
    the caller's own setting or flag). Zero valid pairs is an error.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(FIELDS))
    if unknown:
        raise ValueError(f"columns: unknown field(s) {unknown}; expected some of {list(FIELDS)}")

    path = BUILTIN_SOURCES.get(str(path), path)
    name, rows = _open_rows(str(path), split, subset)
    pairs: list[Pair] = []
    seen: dict[str, Pair] = {}
    skipped: Counter[str] = Counter()
    n_read = 0
    with closing(rows):
        for n, row in rows:
            if limit and len(pairs) >= limit:
                break
            n_read += 1
            origin = f"{name} row {n}"
            try:
                pair = _parse_row(row, format, columns)
                # A reused id would make the reference log-prob cache mix up two pairs.
                other = seen.get(pair.pair_id)
                if other is not None and other != pair:
                    raise _Invalid("duplicate pair_id", f"pair_id '{pair.pair_id}' is already used "
                                                        f"by {other.origin} for a different pair")
            except _Invalid as bad:
                if on_invalid == "error":
                    raise DataError(f"{origin}: {bad.detail} ({skip_hint} to drop invalid "
                                    "rows)") from None
                skipped[bad.reason] += 1
                continue
            pair = replace(pair, origin=origin)
            seen.setdefault(pair.pair_id, pair)
            pairs.append(pair)

    report = LoadReport(n_read=n_read, n_valid=len(pairs), skipped=dict(skipped))
    if skipped:
        log.warning("%s: skipped %d of %d rows: %s", name, sum(skipped.values()), n_read,
                    ", ".join(f"{k} ({v})" for k, v in skipped.most_common()))
    if not pairs:
        why = f"; skipped: {report.skipped}" if skipped else ""
        raise DataError(f"{name}: no valid pairs (read {n_read} rows{why})")
    return pairs, report


def read_pairs_from_config(cfg: DataConfig, path_override: str | None = None) -> tuple[list[Pair], LoadReport]:
    """`read_pairs` with the settings of a `DataConfig` (`path_override` replaces `cfg.path`)."""
    path = path_override or cfg.path
    if not path:
        raise DataError("no pairs source: set data.path")
    return read_pairs(path, format=cfg.format, columns=dict(cfg.columns), split=cfg.split,
                      subset=cfg.subset, limit=cfg.limit, on_invalid=cfg.on_invalid)


def write_pairs(path: str | Path, pairs: list[Pair]) -> Path:
    """Write `pairs.parquet` (columns `PAIR_COLUMNS`; chat prompts as JSON text), atomically."""
    import pyarrow as pa

    # An explicit schema keeps the column types fixed, even for zero pairs.
    types = {"p_chosen": pa.float64(), "weight": pa.float64(), "n_votes": pa.int64(), "round": pa.int64()}
    schema = pa.schema([(c, types.get(c, pa.string())) for c in PAIR_COLUMNS])
    return write_parquet(Path(path), [p.to_row() for p in pairs], schema=schema)


def read_pairs_parquet(path: str | Path) -> list[Pair]:
    """Read back a `write_pairs` file (no validation: the pairs were checked when made)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"pairs file not found: {path}")
    return [Pair.from_row(row, origin=f"{path} row {n}") for n, row in enumerate(read_parquet(path), 1)]
