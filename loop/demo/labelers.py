"""The demo panel at work: one bot per annotator of `panel.PANELS[name]`, each
labeling through the real queue's JSON API over HTTP on loopback, as people would.

The bots' tokens are kept in RUN_DIR/.panel_tokens.json (the store keeps only
hashes), so a resumed run labels with the same annotators and their
reliability estimates carry over between rounds. `alignloop queue simulate`
uses the same bots (`panel_answerers`), so there is one demo panel.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from alignloop.demo.panel import Annotator, Panel


class PanelBot:
    """Answers like one annotator of the panel (the `answer` a queue bot calls)."""

    def __init__(self, panel: Panel, annotator: Annotator):
        self.panel = panel
        self.annotator = annotator

    def answer(self, prompt, a: str, b: str, rng: random.Random) -> tuple[str, int]:
        """A Bradley-Terry draw, made on the two responses in a fixed (sorted) order, so the
        vote does not depend on the order the queue showed them in."""
        first, second = sorted((a, b))
        p = self.panel.p_prefers_a(prompt, first, second, self.annotator)
        confidence = 3 if abs(p - 0.5) > 0.35 else 2 if abs(p - 0.5) > 0.15 else 1
        winner = first if rng.random() < p else second
        return ("a" if winner == a else "b"), confidence


def panel_answerers(name: str, n: int, *, encoder=None) -> list[PanelBot]:
    """`n` bots answering like the annotators of panel `name`, in turn (bot i is annotator
    i mod the panel's size). An unknown name is a ValueError listing the known ones."""
    panel = Panel(name, encoder=encoder)
    return [PanelBot(panel, panel.annotators[i % len(panel.annotators)]) for i in range(n)]


def panel_tokens(store, run_dir: Path, panel: Panel) -> list[tuple[str, str]]:
    """(name, token) of each bot, registered in `store` on first use. A kept token the
    store does not know (the run moved to another queue database, `labeling.human.db`)
    is registered anew there."""
    path = Path(run_dir) / ".panel_tokens.json"
    tokens = json.loads(path.read_text()) if path.exists() else {}
    for a in panel.annotators:
        name = f"panel-{a.name}"
        if name not in tokens or store.authenticate(tokens[name]) is None:
            tokens[name] = store.add_annotator(name)
            path.write_text(json.dumps(tokens))
            os.chmod(path, 0o600)
    return [(f"panel-{a.name}", tokens[f"panel-{a.name}"]) for a in panel.annotators]


def resume_turn(store, run_dir: Path, seed: int, annotator_ids: list[int]) -> int:
    """Which bot's turn it is when the round's labeling starts: 0 for a fresh round; for
    one a killed process left half done, the bot after the last that labeled, once the
    leases the dead process's bots held are given back. With the queue's keyed draws
    (`QueueStore.next_item`), the resumed round then labels as an uninterrupted one.
    RUN_DIR/.panel_turn.json marks where the round's labels begin (its seed names it)."""
    from alignloop.artifacts import atomic_write_json

    path = Path(run_dir) / ".panel_turn.json"
    mark = json.loads(path.read_text()) if path.exists() else {}
    if mark.get("seed") != seed:
        first = int(store.read("SELECT COALESCE(MAX(id), 0) FROM labels")[0][0]) + 1
        atomic_write_json(path, {"seed": seed, "first_label": first})
        return 0
    for lease_id, who in store.read(
            "SELECT lease_id, annotator_id FROM leases WHERE completed_at IS NULL AND "
            "expires_at > :now", {"now": store.clock()}):
        if who in annotator_ids:
            store.release(who, lease_id)
    last = store.read("SELECT annotator_id FROM labels WHERE id >= :f ORDER BY id DESC LIMIT 1",
                      {"f": mark["first_label"]})
    if not last or last[0][0] not in annotator_ids:
        return 0
    return (annotator_ids.index(last[0][0]) + 1) % len(annotator_ids)


def simulate_round(store, run_dir: str | Path, *, panel: str = "demo", seed: int = 0,
                   encoder=None, gold_rate: float = 0.0) -> list:
    """Serve the queue on a free loopback port (gold items handed out at `gold_rate`) and
    let every panel bot label until nothing is left for it; returns the bots' reports
    (labels, retries, errors)."""
    from alignloop.labeling.queue.app import ServerThread, create_app
    from alignloop.labeling.queue.simulate import run_panel_in_turn

    p = Panel(panel, encoder=encoder)
    tokens = panel_tokens(store, Path(run_dir), p)
    start = resume_turn(store, Path(run_dir), seed,
                        [store.authenticate(token).id for _, token in tokens])
    with ServerThread(create_app(store, seed=seed, gold_rate=gold_rate)) as url:
        # in turn, until a whole turn finds nothing left (a vote that disagrees with the
        # first reopens an item for the others): the same labels run to run, and after a
        # resume (`resume_turn`)
        reports = run_panel_in_turn(url, tokens, [PanelBot(p, a) for a in p.annotators],
                                    seed=seed, start=start)
    errors = [e for r in reports for e in r.errors]
    if errors:
        raise RuntimeError(f"panel bots failed: {errors[:3]}")
    return reports
