"""The demo panel at work: one bot per annotator of `panel.PANELS[name]`, each
labeling through the real queue's JSON API over HTTP on loopback, as people would.

The bots' tokens are kept in RUN_DIR/.panel_tokens.json (the store keeps only
hashes), so a resumed run labels with the same annotators and their
reliability estimates carry over between rounds.
"""

from __future__ import annotations

import json
import os
import random
import threading
from pathlib import Path

from alignloop.demo.panel import Annotator, Panel


class PanelBot:
    """Answers like one annotator of the panel (the `answer` a queue bot calls)."""

    def __init__(self, panel: Panel, annotator: Annotator):
        self.panel = panel
        self.annotator = annotator

    def answer(self, prompt, a: str, b: str, rng: random.Random) -> tuple[str, int]:
        p = self.panel.p_prefers_a(prompt, a, b, self.annotator)
        confidence = 3 if abs(p - 0.5) > 0.35 else 2 if abs(p - 0.5) > 0.15 else 1
        return ("a" if rng.random() < p else "b"), confidence


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
                   encoder=None) -> list:
    """Serve the queue on a free loopback port and let every panel bot label until nothing
    is left for it; returns the bots' reports (labels, retries, errors)."""
    from alignloop.labeling.queue.app import ServerThread, create_app
    from alignloop.labeling.queue.simulate import run_bot

    p = Panel(panel, encoder=encoder)
    tokens = panel_tokens(store, Path(run_dir), p)
    reports: list = []
    with ServerThread(create_app(store)) as url:
        # A bot stops when the queue has nothing for it at that moment; an item whose first
        # votes then disagree needs one more, so the panel goes round again until a pass
        # labels nothing.
        for attempt in range(10):
            done: list = [None] * len(tokens)

            def work(i: int, attempt: int = attempt, done: list = done) -> None:
                name, token = tokens[i]
                done[i] = run_bot(name, url, token, PanelBot(p, p.annotators[i]),
                                  seed=seed + 100 * attempt + i)

            threads = [threading.Thread(target=work, args=(i,)) for i in range(len(tokens))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            reports += done
            errors = [e for r in done if r for e in r.errors]
            if errors:
                raise RuntimeError(f"panel bots failed: {errors[:3]}")
            if sum(r.labeled for r in done) == 0:
                break
    return reports
