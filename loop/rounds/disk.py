"""A run directory's disk use, and the caches in it that can be rebuilt (`alignloop prune`).

A LoRA round keeps its adapter as its policy; full weights are built from it on demand
into `round_NNN/policy/merged/` for a backend that reads a directory (vLLM). Those
caches are the run's largest files and the only ones `prune` removes: everything else
is an artifact a later stage, a resume or a report reads.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from alignloop import artifacts as A


@dataclass(frozen=True)
class DiskUse:
    total: int           # bytes of every file under the run directory
    caches: list[Path]   # rebuildable caches (merged weights of adapter policies)
    cache_bytes: int


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and not f.is_symlink())


def disk_use(run_dir: str | Path) -> DiskUse:
    run = Path(run_dir)
    # only real folders inside the run: a symlinked round or cache points elsewhere (prune
    # would delete what it points at, or refuse it halfway)
    root = run.resolve()
    caches = sorted(p for p in run.glob(f"round_*/{A.MERGED}")
                    if p.is_dir() and p.resolve() == root / p.relative_to(run))
    return DiskUse(tree_bytes(run), caches, sum(tree_bytes(c) for c in caches))


def prune(run_dir: str | Path, *, dry_run: bool = False) -> DiskUse:
    """Remove the run's rebuildable caches; returns what was (or, dry, would be) removed."""
    run = Path(run_dir)
    if not (run / A.RUN_STATE).is_file():
        raise FileNotFoundError(f"no run here: {run / 'state.json'} not found")
    use = disk_use(run)
    if not dry_run:
        for cache in use.caches:
            shutil.rmtree(cache)
    return use


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
