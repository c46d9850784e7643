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

A parquet file written by `write_pairs` (a round's pairs.parquet, `queue export`)
is recognised by its columns, exactly `PAIR_COLUMNS`: its prompts are JSON text and
are decoded, and its pairs keep their id, votes, source and round.
"""

from __future__ import annotations

import glob
import json
import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from alignloop.artifacts import iter_jsonl, read_parquet, write_parquet
from alignloop.config import DataConfig
from alignloop.errors import AlignloopError, not_found
from alignloop.pair_rows import FIELDS, InvalidRow, checked_messages, checked_text, parse_row
from alignloop.records import PAIR_COLUMNS, Message, Pair

log = logging.getLogger("alignloop.data")

FORMATS = ("auto", "plain", "conversational", "hh")
_DEMO_DATA = Path(__file__).parent / "demo" / "data"
# Pair sets shipped with the package, usable from any working directory.
BUILTIN_SOURCES = {"builtin:demo-pairs": str(_DEMO_DATA / "static_pairs.jsonl"),
                   "builtin:demo-static": str(_DEMO_DATA / "demo_static_pairs.jsonl")}
# `hf:BUILDER:FILES` loads local files with one of the packaged `datasets` builders.
HF_BUILDERS = ("json", "csv", "parquet", "arrow")


class DataError(AlignloopError, ValueError):
    """Unusable pairs data; the message names the file, the 1-based row and the reason."""


@dataclass
class LoadReport:
    """Rows looked at (a `limit` stops reading early), pairs returned, dropped rows per reason."""

    n_read: int
    n_valid: int
    skipped: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- reading rows


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    for n, value, error in iter_jsonl(path):
        yield n, (InvalidRow("invalid JSON", error) if error else value)


def json_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(row number, value) of a `.json` file holding a list (JSON lines under a .json name
    too); an unreadable file raises DataError naming it, an unreadable line is an
    InvalidRow value."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 (a bad byte at offset {e.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several top-level values: JSON lines under a .json name
            yield from _jsonl_rows(path)
            return
        raise DataError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise DataError(f"{path}: not valid JSON (nested too deeply)") from None
    except ValueError as e:  # an integer of more than 4300 digits
        raise DataError(f"{path}: not valid JSON ({str(e).split(':')[0]})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: holds a JSON {type(data).__name__}; expected a list of objects")
    yield from enumerate(data, 1)


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """Rows of a parquet file; a `write_pairs` file's rows come decoded (`_stored_pair`).
    The file is read lazily, so damage found mid-file is reported too."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 0
    try:
        parquet = pq.ParquetFile(path)
        stored = _is_pairs_file(parquet.schema_arrow)
        for batch in parquet.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                n += 1
                yield n, (_stored_pair(row) if stored else row)
    except (pa.ArrowException, OSError) as e:
        after = f" after row {n}" if n else ""
        raise DataError(f"{path}: not a readable parquet file{after} ({_first_line(e)})") from None


def _is_pairs_file(schema) -> bool:
    """Written by `write_pairs`: exactly the pairs.parquet columns, in their order (a
    marker in the schema would change the bytes of every pairs.parquet, which runs made
    before it compare against)."""
    return tuple(schema.names) == PAIR_COLUMNS


def _stored_pair(row: dict) -> Pair | InvalidRow:
    """A `write_pairs` row decoded as `read_pairs_parquet` does (the prompt is JSON text);
    `parse_row` still validates it."""
    missing = [c for c in ("prompt", "chosen", "rejected") if row.get(c) is None]
    if missing:
        return InvalidRow("missing field", f"missing field '{missing[0]}'")
    try:
        return Pair.from_row(row)
    except json.JSONDecodeError as e:
        return InvalidRow("invalid JSON", f"prompt is not JSON text as pairs.parquet stores it "
                          f"({e.msg}); the file has exactly alignloop's pairs.parquet "
                          "columns, so it is read as one (a file of your own: store its "
                          "prompts as JSON text, or add a column)")
    except (ValueError, TypeError, RecursionError) as e:
        return InvalidRow("malformed pairs row", f"not a pairs.parquet row ({type(e).__name__}: {e})")


def _load_hf(spec: str, split: str, subset: str):
    """The `datasets.Dataset` behind `hf:SPEC`; only a hub id (the last case) goes online."""
    from alignloop.logs import datasets_bars

    with datasets_bars():
        return _load_hf_dataset(spec, split, subset)


def _load_hf_dataset(spec: str, split: str, subset: str):
    import datasets

    builder, _, files = spec.partition(":")
    if builder in HF_BUILDERS and files:
        if not any(c in files for c in "*?[") and not Path(files).exists():
            raise not_found("pairs file", files)
        if "://" not in files and not Path(files).exists() and not glob.glob(files):
            raise FileNotFoundError(f"no pairs file matches: {files}")
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


def _cause(error: BaseException) -> str:
    """The root of an exception chain, one line: `datasets` wraps the useful reason."""
    while True:
        inner = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if inner is None:
            break
        error = inner
    text = _first_line(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else ""


def _load_hf_or_fail(spec: str, split: str, subset: str):
    """`_load_hf`, with whatever `datasets` raises turned into a DataError naming `hf:SPEC`
    (its exception types vary by loader and version). A missing local path stays a
    FileNotFoundError, which names it already."""
    if not spec.strip():
        raise DataError("hf: names no source; use hf:json:FILE (also csv, parquet, arrow), "
                        "hf:DIR or hf:OWNER/NAME")
    try:
        return _load_hf(spec, split, subset)
    except (AlignloopError, FileNotFoundError):
        raise
    except Exception as e:  # noqa: BLE001 (a user's source: any failure is a data error)
        raise DataError(f"hf:{spec}: cannot load it ({_cause(e)})") from None


def _open_rows(path: str, split: str, subset: str) -> tuple[str, Iterator[tuple[int, Any]]]:
    """(name used in messages, iterator of (1-based row number, row))."""
    if path.startswith("hf:"):
        ds = _load_hf_or_fail(path[3:], split, subset)
        return f"{path}[{split}]", (row for row in enumerate(ds, 1))
    p = Path(path).expanduser()
    if not p.exists():
        raise not_found("pairs file", path)
    if p.is_dir():
        raise DataError(f"{path} is a directory; a pairs file is .jsonl, .json or .parquet "
                        "(a saved datasets directory is read as hf:PATH)")
    readers = {".jsonl": _jsonl_rows, ".json": json_rows, ".parquet": _parquet_rows}
    if p.suffix not in readers:
        hint = f" (a CSV file is read as hf:csv:{path})" if p.suffix.lower() == ".csv" else ""
        raise DataError(f"{path}: unsupported file type '{p.suffix}'; expected .jsonl, .json, "
                        f".parquet or an hf: source{hint}")
    return path, readers[p.suffix](p)


def check_messages(value: Any, name: str = "prompt") -> list[Message]:
    """`value` as chat messages checked as pairs are (roles, non-empty string contents),
    for readers of other files with prompts (prompt pools, candidate files): raises
    DataError with the reason only; the caller adds its file and row."""
    try:
        return checked_messages(value, name)
    except InvalidRow as bad:
        raise DataError(bad.detail) from None


def check_text(value: Any, name: str, empty_ok: bool = False) -> str:
    """`value` as text checked as pairs' text is (a string, valid Unicode, non-empty
    unless `empty_ok`); raises DataError with the reason only, like `check_messages`."""
    try:
        return checked_text(value, name, empty_ok)
    except InvalidRow as bad:
        raise DataError(bad.detail) from None



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
    repeats: list[tuple[str, str]] = []     # (first row, a later row with the same pair)
    skipped: Counter[str] = Counter()
    n_read = 0
    present: set = set()      # the columns the rows read have, for the mapping's typo check
    with closing(rows):
        for n, row in rows:
            if limit and len(pairs) >= limit:
                break
            n_read += 1
            if isinstance(row, dict):
                present.update(row)
            origin = f"{name} row {n}"
            try:
                pair = parse_row(row, format, columns)
                # A reused id would make the reference log-prob cache mix up two pairs.
                other = seen.get(pair.pair_id)
                if other is not None and other != pair:
                    raise InvalidRow("duplicate pair_id", f"pair_id '{pair.pair_id}' is already used "
                                                        f"by {other.origin} for a different pair")
            except InvalidRow as bad:
                if on_invalid == "error":
                    raise DataError(f"{origin}: {bad.detail} ({skip_hint} to drop invalid "
                                    "rows)") from None
                skipped[bad.reason] += 1
                continue
            pair = replace(pair, origin=origin)
            if other is not None:
                repeats.append((other.origin, origin))
            seen.setdefault(pair.pair_id, pair)
            pairs.append(pair)

    absent = [f for f, col in columns.items() if col not in present and present]
    if absent:   # a mapped column in no row: a typo, or the wrong file
        f = absent[0]
        raise DataError(f"{name}: no row has the column '{columns[f]}' that data.columns maps "
                        f"'{f}' to (columns seen: {sorted(present)[:8]})")
    report = LoadReport(n_read=n_read, n_valid=len(pairs), skipped=dict(skipped))
    if repeats:   # kept (a pair given twice may be meant to weigh twice), but never silently
        first, again = repeats[0]
        n = len(repeats)
        log.warning("%s: %d %s an earlier row's pair (e.g. %s repeats %s); each copy is "
                    "trained on, so a repeated pair weighs more", name, n,
                    "row repeats" if n == 1 else "rows repeat",
                    again.removeprefix(f"{name} "), first.removeprefix(f"{name} "))
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
    schema = pa.schema([(c, types.get(c, pa.string())) for c in PAIR_COLUMNS], )
    return write_parquet(Path(path), [p.to_row() for p in pairs], schema=schema)


def read_pairs_parquet(path: str | Path) -> list[Pair]:
    """Read back a `write_pairs` file (no validation: the pairs were checked when made)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"pairs file not found: {path}")
    return [Pair.from_row(row, origin=f"{path} row {n}") for n, row in enumerate(read_parquet(path), 1)]
