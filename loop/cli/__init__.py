"""The `alignloop` command line. Subcommands import their heavy modules lazily,
so `alignloop --help` never imports torch.

    run.py     run, status, report, config     (the loop and looking at it)
    tools.py   train, generate, judge          (one step on files); push, export-pairs
    queue.py   queue serve, add-annotator, ... (the human labeling queue)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import alignloop
from alignloop.cli import run, tools
from alignloop.cli.argtypes import round_number


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="YAML config file (see configs/)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.beta=0.2 (repeatable)")


def _add_verbosity_args(parser: argparse.ArgumentParser, default=0) -> None:
    """-q and -v on `parser` and on every (sub)command's parser below it, so they work
    before or after the command (`alignloop run CFG -q`). A command's parser leaves them
    unset when not given (SUPPRESS), so it keeps what was given before the command."""
    parser.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1,
                        default=default, help="only warnings, errors and the result (no "
                                              "progress bars)")
    parser.add_argument("-v", "--verbose", dest="verbosity", action="count", default=default,
                        help="also alignloop's INFO lines and the libraries' INFO lines, "
                             "warnings and progress bars (-vv: debug)")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in {id(p): p for p in action.choices.values()}.values():   # aliases once
                _add_verbosity_args(sub, default=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignloop", description=alignloop.__doc__.split("\n\n")[0],
        epilog="-q and -v go before or after the command; `alignloop COMMAND --help` lists "
               "its options.")
    parser.add_argument("--version", action="version", version=f"alignloop {alignloop.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="DPO on a pairs file (JSONL, parquet, hf:...)",
                       description=tools.cmd_train.__doc__)
    _add_config_args(p)
    p.add_argument("--pairs", help="pairs source; overrides data.path")
    p.add_argument("--reference", help="reference model; overrides reference.model")
    p.add_argument("--out", default="alignloop-train", help="output directory (default: %(default)s)")
    p.add_argument("--force", action="store_true",
                   help="train even if --out holds a trained policy (it is replaced) or "
                        "another run's checkpoint (it is deleted: training starts over)")
    p.set_defaults(func=tools.cmd_train)

    p = sub.add_parser("generate", help="sample completions for a prompts file",
                       description=tools.cmd_generate.__doc__)
    _add_config_args(p)
    p.add_argument("--prompts", required=True, help="JSONL, JSON (a list) or parquet with a "
                                                    "`prompt` field (optional `prompt_id`, `slice`)")
    p.add_argument("--out", required=True, help="output parquet (a path ending in .parquet)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
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

    p = sub.add_parser("prune", help="remove the merged-weight caches of LoRA rounds",
                       description=run.cmd_prune.__doc__)
    p.add_argument("run_dir", help="run directory")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed")
    p.set_defaults(func=run.cmd_prune)

    p = sub.add_parser("report", help="drift reports: RUN_DIR/report.html across rounds",
                       description=run.cmd_report.__doc__)
    p.add_argument("run_dir", help="run directory")
    p.add_argument("--round", type=round_number, help="also (re)write this round's report")
    p.set_defaults(func=run.cmd_report)

    p = sub.add_parser("judge", help="judge, select and route pairs of sampled completions",
                       description=tools.cmd_judge.__doc__)
    _add_config_args(p)
    p.add_argument("--candidates", required=True,
                   help="completions: `alignloop generate`'s parquet, or parquet/JSONL rows "
                        "with prompt_id, prompt and text (samples of a prompt share its "
                        "prompt_id)")
    p.add_argument("--out", required=True, help="candidate table (.parquet or .jsonl; not in a "
                                                "run directory)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--round", type=round_number, default=0, help="round number recorded in the table")
    p.add_argument("--labels", action="append", default=[], metavar="FILE",
                   help="labels.parquet of earlier rounds: the learning judges refit on its human "
                        "labels and every judge is calibrated on them (repeatable)")
    p.add_argument("--policy", help="apl: policy model (default model.name)")
    p.add_argument("--reference", help="apl: reference model (default reference.model)")
    p.set_defaults(func=tools.cmd_judge)

    p = sub.add_parser("push", help="upload a round's policy and model card to the Hugging Face Hub",
                       description=tools.cmd_push.__doc__)
    p.add_argument("run_dir", help="run directory")
    p.add_argument("--round", type=round_number, required=True, help="the round whose policy to upload")
    p.add_argument("--repo", required=True, help="Hub model repository, e.g. me/my-policy")
    p.add_argument("--merged", action="store_true",
                   help="upload the merged full weights of a LoRA round (built if missing)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.set_defaults(func=tools.cmd_push)

    p = sub.add_parser("export-pairs", help="every pair of a run as a datasets.Dataset (TRL columns)",
                       description=tools.cmd_export_pairs.__doc__)
    p.add_argument("run_dir", help="run directory")
    p.add_argument("--out", required=True, help="output directory (datasets save_to_disk)")
    p.add_argument("--force", action="store_true", help="replace a non-empty OUT")
    p.set_defaults(func=tools.cmd_export_pairs)

    from alignloop.cli.queue import add_queue_commands

    add_queue_commands(sub)

    p = sub.add_parser("config", help="print the resolved config or the documented schema",
                       description=run.cmd_config.__doc__)
    p.add_argument("config", type=Path, nargs="?", help="YAML config file (default: only defaults)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.beta=0.2 (repeatable)")
    p.add_argument("--docs", action="store_true", help="list every key with its documentation")
    p.set_defaults(func=run.cmd_config)
    _add_verbosity_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from alignloop.errors import AlignloopError
    from alignloop.logs import setup_logging

    setup_logging(args.verbosity)

    try:
        return args.func(args)
    except (AlignloopError, FileNotFoundError) as e:
        where = f"{e.where}: " if getattr(e, "where", None) else ""
        print(f"error: {where}{e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:      # Ctrl-C: one line, not the stack it came through
        where = f" at {e.where}" if getattr(e, "where", None) else ""
        resumes = args.func in (run.cmd_run, tools.cmd_train)
        print(f"\ninterrupted{where}" + ("; rerun the same command to resume" if resumes else ""),
              file=sys.stderr)
        return 130
    except BrokenPipeError:             # the reader went away (`alignloop ... | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 1


if __name__ == "__main__":
    sys.exit(main())
