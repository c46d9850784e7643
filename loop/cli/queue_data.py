"""`alignloop queue status | import | export`: what goes into the queue and what comes out
(split from `queue.py`, which parses every queue command and keeps the serving ones)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alignloop.cli.queue import _not_a_run_dir, _open
from alignloop.errors import AlignloopError


def cmd_status(args: argparse.Namespace) -> int:
    """Items, labels and agreement per round and per annotator."""
    status = _open(args).status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0

    def num(x, fmt="{:.2f}"):
        return "-" if x is None else fmt.format(x)

    print(f"{status['items']} items, {status['labels']} labels, {status['gold_items']} gold "
          f"items; Krippendorff's alpha {num(status['alpha'])}")
    if status["rounds"]:
        print(f"\n{'round':>5} {'items':>7} {'complete':>9} {'pending':>8} {'labels':>7} {'alpha':>6}")
        for r in status["rounds"]:
            print(f"{r['round']:>5} {r['items']:>7} {r['complete']:>9} {r['pending']:>8} "
                  f"{r['labels']:>7} {num(r['alpha']):>6}")
    if status["annotators"]:
        print(f"\n{'annotator':<24} {'labels':>7} {'gold':>9} {'alpha w/o':>9}")
        for a in status["annotators"]:
            gold = f"{a['gold_correct']}/{a['gold_seen']}" if a["gold_seen"] else "-"
            print(f"{a['name'][:24]:<24} {a['labels']:>7} {gold:>9} {num(a['alpha_without']):>9}")
    for k in status["kappa"]:
        print(f"kappa {k['a']} / {k['b']}: {num(k['kappa'])} on {k['shared']} shared items")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Queue the pairs of a pairs file (any format `alignloop train` reads) for labeling:
    each pair becomes an item with a = chosen, b = rejected, item_id = pair_id (with
    --gold, a gold item whose known answer is the chosen side, a or b by a random coin
    drawn at import: annotators meet gold items at the server's --gold-rate, and
    `labeling.aggregation.gold_calibration` fits the human labels to them). A row with
    a control character (other than tab and newline in text) is refused like any invalid
    row: the error names the file and row, and nothing is queued (or, with --on-invalid
    skip, the row is dropped)."""
    from alignloop.data import read_pairs

    _not_a_run_dir(args.file, "pairs file")
    pairs, report = read_pairs(args.file, on_invalid=args.on_invalid,
                               skip_hint="add --on-invalid skip")
    pairs, refused = _without_control_characters(pairs, args.on_invalid)
    store = _open(args)
    new = store.push(pairs, args.round, votes_required=args.votes_required,
                     max_votes=max(args.max_votes or args.votes_required, args.votes_required),
                     gold=args.gold)
    dropped = {**report.skipped, **({"control character or id length": refused} if refused else {})}
    skipped = f"; skipped {dropped}" if dropped else ""
    kind = "gold items" if args.gold else "items"
    print(f"queued {new} new {kind} for round {args.round} ({len(pairs) - new} already queued, "
          f"{report.n_read} rows read{skipped})")
    return 0


def _without_control_characters(pairs: list, on_invalid: str) -> tuple[list, int]:
    """(the pairs free of control characters and with ids the queue takes, how many were
    dropped); with on_invalid "error" the first such pair raises QueueError naming its file
    and row, before the queue is opened."""
    from alignloop.labeling.queue import controls
    from alignloop.labeling.queue.store import MAX_ITEM_ID, QueueError

    kept = []
    for pair in pairs:
        try:
            if not 1 <= len(pair.pair_id) <= MAX_ITEM_ID:     # the queue's item id limit
                raise QueueError(f"pair_id must be 1-{MAX_ITEM_ID} characters, got "
                                 f"{len(pair.pair_id)}", 422, "pair_id")
            controls.check(pair.pair_id, "pair_id", "id")
            controls.check_prompt(pair.prompt, "text")
            for field in ("chosen", "rejected", "slice"):
                controls.check(getattr(pair, field), field, "text")
        except QueueError as e:
            if on_invalid == "error":
                raise QueueError(f"{pair.origin}: {e} (--on-invalid skip drops such rows)",
                                 e.status, e.field) from None
            continue
        kept.append(pair)
    return kept, len(pairs) - len(kept)


def _jsonl_pair(pair) -> dict:
    """A pair as a JSONL row `read_pairs` reads back: plain text, or TRL's conversational
    form (responses as one assistant message) when the prompt is chat messages."""
    from dataclasses import asdict

    row = {k: v for k, v in asdict(pair).items() if k != "origin"}
    if isinstance(pair.prompt, list):
        for k in ("chosen", "rejected"):
            row[k] = [{"role": "assistant", "content": row[k]}]
    return row


def cmd_export(args: argparse.Namespace) -> int:
    """Write the votes: `dpo` = soft-labeled pairs (parquet: the pairs.parquet columns;
    JSONL: rows `read_pairs` reads, conversational for chat prompts), `raw` = every label,
    `hf` = a `datasets.Dataset` directory with TRL's preference columns plus the votes and
    soft label (`--push-to-hub REPO` uploads it)."""
    from alignloop.artifacts import write_jsonl, write_parquet
    from alignloop.data import write_pairs
    from alignloop.outputs import check_new_output

    if args.push_to_hub and args.format != "hf":
        raise AlignloopError("--push-to-hub needs --format hf")
    out = Path(args.out)
    check_new_output(out, force=args.force)      # before the queue is opened
    if args.format != "hf" and out.is_dir():
        raise AlignloopError(f"--out {out}: is a directory; the {args.format} format writes "
                             "a .parquet or .jsonl file")
    if args.format != "hf" and out.suffix not in (".parquet", ".jsonl"):
        raise AlignloopError(f"--out {out}: the {args.format} format writes .parquet or "
                             f".jsonl, not {out.suffix or 'a name without a suffix'}")
    if args.format == "hf" and out.suffix in (".parquet", ".jsonl", ".json"):
        raise AlignloopError(f"--out {out}: the hf format writes a datasets folder; give a "
                             "folder name, not a file name")
    if args.public and not args.push_to_hub:
        raise AlignloopError("--public makes the --push-to-hub repository public; without "
                             "--push-to-hub nothing is uploaded")
    store = _open(args)
    rounds = [r[0] for r in store.read("SELECT DISTINCT round FROM items ORDER BY round")]
    if args.round is not None and args.round not in rounds:
        raise AlignloopError(f"--round {args.round}: the queue holds no item of that round "
                             f"(its rounds: {', '.join(map(str, rounds)) or 'none'})")
    if args.format == "hf":
        from alignloop.cli.queue_team import export_hf

        return export_hf(args, store)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.format == "dpo":
        pairs = store.export_pairs(round=args.round)
        if out.suffix == ".parquet":
            write_pairs(out, pairs)
        else:
            write_jsonl(out, [_jsonl_pair(p) for p in pairs])
        n = len(pairs)
    else:
        rows = [r for r in store.export_raw() if args.round is None or r.get("round") == args.round]
        (write_parquet if out.suffix == ".parquet" else write_jsonl)(out, rows)
        n = len(rows)
    print(f"wrote {n} {'pairs' if args.format == 'dpo' else 'labels'} -> {out}")
    return 0
