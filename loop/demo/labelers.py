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
    path = Path(run_dir) / ".panel_tokens.json"
    tokens = json.loads(path.read_text()) if path.exists() else {}
    for a in panel.annotators:
        name = f"panel-{a.name}"
        if name not in tokens:
            tokens[name] = store.add_annotator(name)
            path.write_text(json.dumps(tokens))
            os.chmod(path, 0o600)
    return [(f"panel-{a.name}", tokens[f"panel-{a.name}"]) for a in panel.annotators]


def simulate_round(store, run_dir: str | Path, *, panel: str = "demo", seed: int = 0,
                   encoder=None, gold_rate: float = 0.0) -> list:
    """Serve the queue on a free loopback port (gold items handed out at `gold_rate`) and
    let every panel bot label until nothing is left for it; returns the bots' reports
    (labels, retries, errors)."""
    from alignloop.labeling.queue.app import ServerThread, create_app
    from alignloop.labeling.queue.simulate import run_panel_in_turn

    p = Panel(panel, encoder=encoder)
    tokens = panel_tokens(store, Path(run_dir), p)
    with ServerThread(create_app(store, seed=seed, gold_rate=gold_rate)) as url:
        # in turn, until a whole turn finds nothing left (a vote that disagrees with the
        # first reopens an item for the others): the same labels run to run
        reports = run_panel_in_turn(url, tokens, [PanelBot(p, a) for a in p.annotators],
                                    seed=seed)
    errors = [e for r in reports for e in r.errors]
    if errors:
        raise RuntimeError(f"panel bots failed: {errors[:3]}")
    return reports
