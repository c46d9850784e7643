"""The artifact contract (the names of every file a round writes) and writing them
safely: write to a temporary name, then rename.

Every stage output goes through these helpers so that an interrupted process
never leaves a half-written file under its final name. Tests, reports and tools
read the names below; they are written nowhere else.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RUN_STATE = "state.json"                      # RUN_DIR/state.json: what makes a run directory

# --------------------------------------------------------------------------- names (RUN_DIR/round_NNN/...)

SLICES = "slices.json"                        # failure slices mined from the previous eval
PROMPTS = "prompts.parquet"                   # prompts chosen for generation
GENERATIONS = "generations.parquet"           # k samples per prompt
CANDIDATES = "candidates.parquet"             # judged, selected and routed candidate pairs
JUDGE_CACHE = "judge.received.jsonl"          # a served judge's answers (resume asks nothing twice)
JUDGE_USAGE = "judge_usage.json"              # served judges' requests and tokens this round
LABELS = "labels.parquet"                     # every label (judge or human)
LABELED_PAIRS = "labeled_pairs.parquet"       # this round's soft-labeled pairs
CALIBRATION = "calibration.json"              # judge calibration before / during the round
PAIRS = "pairs.parquet"                       # the pairs trained on this round
HELDOUT_PAIRS = "heldout_pairs.parquet"       # round 0: static pairs never trained on
REFERENCE_MODEL = "reference"                 # the EMA reference model (reference.mode: ema)
REFERENCE_LOGPS = "reference_logps.parquet"   # reference log-probs of the pairs
POLICY = "policy"                             # HF checkpoint, or a LoRA adapter + alignloop_base.json
MERGED = "policy/merged"                      # full weights built from that adapter: a cache (prune)
MODEL_CARD = "policy/README.md"               # the policy's model card (Hub metadata), by the report stage
TRAIN_LOG = "train_log.jsonl"                 # step metrics (what was computed: repeats byte for byte)
TRAIN_TIMING = "train_timing.jsonl"           # each logged step's seconds and tokens/s (wall clock)
EVAL_DIR = "eval"                             # eval/samples.parquet, comparisons, held-out pairs
EVAL_SAMPLES = "eval/samples.parquet"
REPORT_JSON = "report/report.json"            # written last: the report is complete


def round_dir(run_dir: str | Path, k: int) -> Path:
    """RUN_DIR/round_NNN."""
    return Path(run_dir) / f"round_{k:03d}"



def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """One JSON object per line, strict JSON (NaN and infinities, which JSON has not, are
    written as null), atomically."""
    return atomic_write_text(path, "".join(
        json.dumps(strict_json(r), ensure_ascii=False, allow_nan=False) + "\n" for r in rows))


def strict_json(value: Any) -> Any:
    """`value` with every non-finite float (NaN, inf) replaced by None, in nested lists and
    dicts too: what JSON readers other than Python's accept."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_parquet(path: Path, rows: list[dict[str, Any]], schema: Any = None) -> Path:
    """Write rows (dicts with the same keys) as one parquet file, atomically. `schema`
    fixes the column types. The same rows and schema give the same bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=schema)
    tmp = _tmp_name(path)
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """(1-based line number, value, None) per non-blank line of a JSON-lines file, or
    (line number, None, why the line is unreadable); a UTF-8 BOM on line 1 is allowed.
    Callers decide whether a bad line stops them (naming file and line) or is skipped."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError:
                yield n, None, "line is not valid UTF-8"
                continue
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                yield n, None, f"line is not valid JSON ({e.msg}, column {e.colno})"
                continue
            except RecursionError:
                yield n, None, "line is not valid JSON (nested too deeply)"
                continue
            except ValueError as e:  # an integer of more than 4300 digits
                yield n, None, f"line is not valid JSON ({str(e).split(':')[0]})"
                continue
            yield n, value, None


def read_rows(path: Path, error: type[Exception] = ValueError, name: str = "") -> list[Any]:
    """Every row of a parquet file, or every value of a JSON-lines file (any other suffix);
    the first unreadable line raises `error` naming the file (`name`, default the path)
    and the line."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{name or path} is a directory, not a file of rows")
    if path.suffix == ".parquet":
        import pyarrow as pa

        try:
            return read_parquet(path)
        except (OSError, pa.ArrowException) as e:
            raise error(f"{name or path}: not a readable parquet file ({e})") from None
    rows = []
    for n, value, problem in iter_jsonl(path):
        if problem:
            raise error(f"{name or path} row {n}: {problem}")
        rows.append(value)
    return rows


def read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


@contextmanager
def atomic_dir(path: Path):
    """Yield a temporary directory that replaces `path` only if the block completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
