"""`alignloop queue ...` commands an annotation team's admin runs: `guidelines` (show or
set the labeling guideline), `disable`, `rotate-token` and `set-role` (annotator
management), and the `hf` format of `queue export` (a `datasets.Dataset`, optionally
pushed to the Hub).
Registered by `queue.add_queue_commands`; heavy modules are imported inside commands.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alignloop.cli.argtypes import round_number


def cmd_guidelines(args: argparse.Namespace) -> int:
    """Show the labeling guideline (the queue's, or --round K's), or store a new version of
    it from a markdown file with --set FILE. Every label records the version it was given
    under; annotators see it on the labeling page and in `queue label`."""
    from alignloop.cli.queue import _open as open_queue
    from alignloop.errors import AlignloopError
    from alignloop.labeling.queue import guidelines

    if args.set:
        path = Path(args.set)
        if not path.is_file():
            raise AlignloopError(f"--set {path}: no such file")
        try:
            body = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise AlignloopError(f"--set {path}: not UTF-8 text ({e})") from None
        guidelines.check_body(body)   # refused before the queue is touched
        version = guidelines.set_guideline(open_queue(args), body, round=args.round,
                                           author=args.author)
        scope = f"round {args.round}" if args.round is not None else "every round"
        print(f"guideline version {version} ({scope}) stored")
        return 0
    g = guidelines.current(open_queue(args), args.round)
    if g is None:
        print("no guideline yet: alignloop queue guidelines --set FILE", file=sys.stderr)
        return 0
    scope = f"round {g.round}" if g.round >= 0 else "every round"
    from alignloop.logs import visible

    # escaped for the terminal, as `queue label` shows it (a queue may hold text stored
    # before check_body normalised line ends)
    print(f"# guideline version {g.version} ({scope})\n{visible(g.body)}")
    return 0


def cmd_rotate_token(args: argparse.Namespace) -> int:
    """Give an annotator a new token and print it (shown once); the old token and the
    annotator's web sessions stop working."""
    from alignloop.cli.queue import _open as open_queue
    from alignloop.labeling.queue.dashboard import rotate_token

    token = rotate_token(open_queue(args), args.name)
    print(f"new token for {args.name!r}; the old one no longer works. Shown only once:",
          file=sys.stderr)
    print(token)
    return 0


def cmd_set_role(args: argparse.Namespace) -> int:
    """Change an annotator's role (annotator, reviewer or admin). It applies to the
    annotator's next request: the web pages read the role from the queue every time (a
    bearer token checked in the last few seconds may keep its old role that long)."""
    from alignloop.cli.queue import _open as open_queue
    from alignloop.labeling.queue import accounts

    old = open_queue(args).transaction(lambda conn: accounts.set_role(conn, args.name,
                                                                      args.role))
    print(f"{args.name!r}: {old} -> {args.role}")
    return 0


def export_hf(args: argparse.Namespace, store) -> int:
    """`queue export --format hf`: see `alignloop.labeling.queue.export`."""
    from alignloop.labeling.queue.export import export_hf as write

    n = write(store, args.out, round=args.round, push_to_hub=args.push_to_hub,
              private=not args.public)
    pushed = f" and pushed to {args.push_to_hub}" if args.push_to_hub else ""
    print(f"wrote {n} pairs -> {args.out} (datasets.load_from_disk){pushed}")
    return 0


def add_team_commands(command) -> None:
    """Register the commands with `command(name, func, help)` of `add_queue_commands`."""
    q = command("guidelines", cmd_guidelines, "show or set the labeling guideline")
    q.add_argument("--set", metavar="FILE", help="store FILE (markdown) as the new version")
    q.add_argument("--round", type=round_number, help="the guideline of this round only "
                                             "(default: the queue-wide one)")
    q.add_argument("--author", default="", help="who wrote it (recorded with the version)")

    from alignloop.cli.queue import cmd_disable_annotator

    q = command("disable", cmd_disable_annotator,
                "disable an annotator (same as disable-annotator)")
    q.add_argument("name", help="annotator name")

    q = command("rotate-token", cmd_rotate_token,
                "give an annotator a new token (the old one stops working)")
    q.add_argument("name", help="annotator name")

    q = command("set-role", cmd_set_role, "change an annotator's role")
    q.add_argument("name", help="annotator name")
    q.add_argument("role", choices=["annotator", "reviewer", "admin"])
