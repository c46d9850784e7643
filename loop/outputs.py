"""Where a command may write. Every `--out` is checked here before any work, so a refused
command changes nothing: no output replaces a file of a run directory (a `queue export
--out RUN/state.json` once replaced the run's state), and no existing output is replaced
without `--force`."""

from __future__ import annotations

import json
from pathlib import Path

from alignloop.artifacts import RUN_STATE
from alignloop.errors import AlignloopError


def enclosing_run(path: Path) -> Path | None:
    """The run directory `path` is or lies in: the nearest folder holding a run's
    state.json (a JSON object with a "rounds" mapping; other tools write files of that
    name too: `datasets.save_to_disk` does, into every dataset folder)."""
    p = Path(path).resolve()
    for d in (p, *p.parents):
        if _is_run_state(d / RUN_STATE):
            return d
    return None


def _is_run_state(path: Path) -> bool:
    try:
        if not path.is_file() or path.stat().st_size > 64 << 20:
            return False
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and isinstance(state.get("rounds"), dict)


def check_not_in_run(out: Path, flag: str = "--out") -> None:
    """An existing `out` that is a run directory or lies in one is refused, --force or
    not: the run's files are the loop's alone. (A new name inside a run is allowed.)"""
    run = enclosing_run(out)
    if run is not None and Path(out).exists():
        where = "is the run directory" if Path(out).resolve() == run else f"is in the run {run}"
        raise AlignloopError(f"{flag} {out}: {where}, whose files only `alignloop run` "
                             "writes; give a new path")


def check_new_output(out: Path, *, force: bool, flag: str = "--out") -> None:
    """`out` must not be in a run (`check_not_in_run`), and an existing file or non-empty
    directory is replaced only with --force."""
    check_not_in_run(out, flag)
    out = Path(out)
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise AlignloopError(f"{flag} {out}: exists; give another path, or --force to "
                             "replace it")
