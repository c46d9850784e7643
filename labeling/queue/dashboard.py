"""What the admin dashboard shows and does, apart from the web: progress per round,
throughput, per-annotator counts and gold accuracy, agreement (Krippendorff's alpha,
pairwise Cohen's kappa, from `stats.status`), skips, the most disputed items, and
annotator management (add, disable, rotate a token).

`overview` is plain data (JSON-ready); the page (`routes_dashboard`) and the CLI
(`alignloop queue status`, `disable`, `rotate-token`) both use these functions.
"""

from __future__ import annotations

import secrets
from collections import Counter

from alignloop.labeling.queue import accounts, adjudication, guidelines
from alignloop.labeling.queue.accounts import hash_token

WINDOWS = (("last hour", 3600.0), ("last 24 h", 86400.0))


def throughput(store) -> list[dict]:
    """Labels in each window of `WINDOWS` up to now, and the rate per hour."""
    now = store.clock()
    out = []
    for name, seconds in WINDOWS:
        n = store.read("SELECT COUNT(*) FROM labels WHERE created_at > :t",
                       {"t": now - seconds})[0][0]
        out.append({"window": name, "labels": int(n), "per_hour": n * 3600.0 / seconds})
    return out


def annotator_table(store) -> list[dict]:
    """Every annotator (disabled ones too): name, role, active, labels, skips, labels in
    the last hour, gold accuracy."""
    now = store.clock()
    rows = store.read(
        "SELECT a.name, a.role, a.active, "
        "(SELECT COUNT(*) FROM labels l WHERE l.annotator_id = a.id) AS labels, "
        "(SELECT COUNT(*) FROM labels l WHERE l.annotator_id = a.id AND l.created_at > :t) "
        "AS last_hour, (SELECT COUNT(*) FROM skips k WHERE k.annotator_id = a.id) AS skips, "
        "(SELECT COUNT(*) FROM labels l JOIN items i ON i.item_id = l.item_id WHERE "
        "l.annotator_id = a.id AND i.gold IS NOT NULL) AS gold_seen, "
        "(SELECT COUNT(*) FROM labels l JOIN items i ON i.item_id = l.item_id WHERE "
        "l.annotator_id = a.id AND l.choice = i.gold) AS gold_correct "
        "FROM annotators a ORDER BY a.id", {"t": now - 3600.0})
    return [{"name": r.name, "role": r.role, "active": bool(r.active), "labels": int(r.labels),
             "last_hour": int(r.last_hour), "skips": int(r.skips),
             "gold_seen": int(r.gold_seen), "gold_correct": int(r.gold_correct),
             "gold_accuracy": r.gold_correct / r.gold_seen if r.gold_seen else None}
            for r in rows]


def skip_reasons(store) -> dict[str, int]:
    """Skips per reason, over the whole queue."""
    counts = Counter()
    for r in store.read("SELECT reason, COUNT(*) AS n FROM skips GROUP BY reason"):
        counts[r.reason] = int(r.n)
    return dict(sorted(counts.items()))


def overview(store, *, disputed: int = 10) -> dict:
    """Everything the dashboard shows: `status` (rounds, annotators' agreement, kappa,
    alpha), `throughput`, `annotators`, `skips`, the `disputed` most contested items
    (with their votes) and the current queue-wide `guideline`."""
    g = guidelines.current(store)
    status = store.status()
    without = {a["name"]: a["alpha_without"] for a in status["annotators"]}
    people = [{**a, "alpha_without": without.get(a["name"])} for a in annotator_table(store)]
    return {"status": status, "throughput": throughput(store),
            "annotators": people, "skips": skip_reasons(store),
            "disputed": adjudication.disputed(store, limit=disputed),
            "guideline": None if g is None else {"version": g.version, "body": g.body,
                                                 "author": g.author},
            "verdicts": len(adjudication.verdicts(store))}


def rotate_token(store, name: str) -> str:
    """A new token for annotator `name` (shown once; only its hash is kept); the old token
    and the annotator's web sessions stop working."""
    token = secrets.token_urlsafe(32)
    store.transaction(lambda conn: accounts.rotate(conn, name, hash_token(token)))
    return token
