"""The `alignloop` command line. Subcommands import their heavy modules lazily,
so `alignloop --help` never imports torch.

    run.py     run, status, report, config     (the loop and looking at it)
    tools.py   train, generate, judge          (one step on files)
    queue.py   queue serve, add-annotator, ... (the human labeling queue)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from alignloop import __version__
from alignloop.cli import run, tools


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="YAML config file (see configs/)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.beta=0.2 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignloop", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"alignloop {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="DPO on a pairs file (JSONL, parquet, hf:...)",
                       description=tools.cmd_train.__doc__)
    _add_config_args(p)
    p.add_argument("--pairs", help="pairs source; overrides data.path")
    p.add_argument("--reference", help="reference model; overrides reference.model")
    p.add_argument("--out", default="alignloop-train", help="output directory (default: %(default)s)")
    p.set_defaults(func=tools.cmd_train)

    p = sub.add_parser("generate", help="sample completions for a prompts file",
                       description=tools.cmd_generate.__doc__)
    _add_config_args(p)
    p.add_argument("--prompts", required=True, help="JSONL or parquet with a `prompt` field")
    p.add_argument("--out", required=True, help="output parquet")
    p.add_argument("--n", type=int, help="samples per prompt; overrides generation.n")
    p.add_argument("--model", help="policy checkpoint; overrides model.name")
    p.set_defaults(func=tools.cmd_generate)

    p = sub.add_parser("run", help="run or resume the loop (round 0 DPO, online rounds, reports)",
                       description=run.cmd_run.__doc__)
    _add_config_args(p)
    p.add_argument("--rounds", type=int, help="rounds in the run; overrides loop.rounds")
    p.add_argument("--run-dir", help="run directory (default: runs/CONFIG_NAME)")
    p.add_argument("--redo-from", metavar="ROUND:STAGE",
                   help="forget that stage of that round and everything after it, e.g. 1:train "
                        "(needed to rerun a finished round with a changed config)")
    p.set_defaults(func=run.cmd_run)

    p = sub.add_parser("status", help="each stage's state, time and output size per round",
                       description=run.cmd_status.__doc__)
    p.add_argument("run_dir", help="run directory")
    p.set_defaults(func=run.cmd_status)

    p = sub.add_parser("report", help="drift reports: RUN_DIR/report.html across rounds",
                       description=run.cmd_report.__doc__)
    p.add_argument("run_dir", help="run directory")
    p.add_argument("--round", type=int, help="also (re)write this round's report")
    p.set_defaults(func=run.cmd_report)

    p = sub.add_parser("judge", help="judge, select and route pairs of sampled completions",
                       description=tools.cmd_judge.__doc__)
    _add_config_args(p)
    p.add_argument("--candidates", required=True,
                   help="completions (parquet/JSONL from `alignloop generate`)")
    p.add_argument("--out", required=True, help="candidate table (.parquet or .jsonl)")
    p.add_argument("--round", type=int, default=0, help="round number recorded in the table")
    p.add_argument("--labels", action="append", default=[], metavar="FILE",
                   help="labels.parquet of earlier rounds: the learning judges refit on its human "
                        "labels and every judge is calibrated on them (repeatable)")
    p.add_argument("--policy", help="apl: policy model (default model.name)")
    p.add_argument("--reference", help="apl: reference model (default reference.model)")
    p.set_defaults(func=tools.cmd_judge)

    from alignloop.cli.queue import add_queue_commands

    add_queue_commands(sub)

    p = sub.add_parser("config", help="print the resolved config or the documented schema",
                       description=run.cmd_config.__doc__)
    p.add_argument("config", type=Path, nargs="?", help="YAML config file (default: only defaults)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--docs", action="store_true", help="list every key with its documentation")
    p.set_defaults(func=run.cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from alignloop.errors import AlignloopError

    try:
        return args.func(args)
    except (AlignloopError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
