"""`alignloop run`, `status`, `report` and `config`: running the loop and looking at it."""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path


def cmd_run(args: argparse.Namespace) -> int:
    """Run, or resume, the hybrid loop: round 0 offline DPO, then online rounds on failure
    slices, each with a drift report. Rerunning skips every finished stage."""
    from alignloop.config import load_config
    from alignloop.errors import PAUSED_EXIT, Paused
    from alignloop.rounds import Loop

    sets = [*args.sets, f"loop.rounds={args.rounds}"] if args.rounds is not None else args.sets
    cfg = load_config(args.config, sets)
    run_dir = args.run_dir or f"runs/{Path(args.config).stem}"
    try:
        summary = Loop(cfg, run_dir).run(redo_from=args.redo_from, verbosity=args.verbosity)
    except Paused as e:      # labeling.human.wait: exit, and the round is short of labels
        queue = "--db URL" if cfg.labeling.human.db else f"--run-dir {run_dir}"
        print(f"paused{' at ' + e.where if e.where else ''}: {e}.\nLabel them first, in the "
              f"browser (alignloop queue serve {queue}) or the terminal (alignloop queue "
              f"label {queue}); each person needs an account (alignloop queue add-annotator "
              f"{queue} NAME prints their token).", file=sys.stderr)
        return PAUSED_EXIT
    if summary.get("stopped"):
        print(f"stopped: {summary['stopped']}")
    print(f"rounds finished: {summary['rounds']}")
    print(f"report: {summary['report']}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Per round, each stage's state, time and output size; the run directory's size on disk."""
    from alignloop.rounds.loop import stage_names
    from alignloop.rounds.state import status_table

    print(status_table(args.run_dir, stage_names))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    """Remove what a run directory can rebuild: the merged full weights of LoRA rounds
    (policy/merged/, built for backends that read a model directory, such as vLLM). Each
    round keeps its adapter, so every policy still loads. Refused while a loop runs in that
    directory."""
    from alignloop.rounds.disk import human_bytes, prune

    with _held(args.run_dir) as run_dir:   # never under a running loop, which reads them
        use = prune(run_dir, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for cache in use.caches:
        print(f"{verb} {cache}")
    print(f"{verb} {human_bytes(use.cache_bytes)} of {human_bytes(use.total)} "
          f"({len(use.caches)} merged-weight caches)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Render RUN_DIR/report.html (every headline metric across rounds, where the loop stopped
    or was gated) and, with --round, that round's report (report.json, report.md, report.html)."""
    from alignloop.report import write_round_report, write_run_report

    with _held(args.run_dir) as run_dir:   # a running loop writes these reports itself
        if args.round is not None:
            path = write_round_report(run_dir, args.round)
            print(f"round {args.round}: {path.parent / 'report.html'} (report.json, report.md)")
        print(f"run: {write_run_report(run_dir)}")
    return 0


@contextmanager
def _held(run_dir: str):
    """The run directory as a Path, held against a loop running there (`run_lock`)."""
    from alignloop.rounds.state import run_lock

    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"no run here: {path / 'state.json'} not found")
    with run_lock(path):
        yield path


def cmd_config(args: argparse.Namespace) -> int:
    """Print the resolved config (every default written out), or the documented schema."""
    import yaml
    from alignloop.config import field_docs, load_config, to_dict

    if args.docs:
        for key, doc in field_docs().items():
            print(f"{key}: {doc}")
        return 0
    cfg = load_config(args.config, args.sets)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0
