"""`alignloop queue ...`: the human labeling queue from the command line."""

from __future__ import annotations

import argparse


def add_queue_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("queue", help="the human labeling queue (serve, annotators, import/export)")
    p.add_subparsers(dest="queue_command", required=True, metavar="COMMAND")
