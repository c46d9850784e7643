"""Labeling in a terminal (`alignloop queue label`): the prompt and the two responses side
by side (stacked when the terminal is narrow), keys 1 = A, 2 = B, 3 = tie, 4 = both bad,
s = skip (with a reason; the item goes to someone else), q = quit. The guideline of the
item's round is shown before the first item and again whenever it changes.

Everything from the queue is printed through `alignloop.logs.visible` and as rich `Text`: an
item's escape sequences appear as `\\x1b[2J` instead of clearing the screen or setting
the window title, and rich markup in it is not interpreted.
"""

from __future__ import annotations

import random
import uuid

from alignloop.labeling.queue import guidelines
from alignloop.labeling.queue.skips import record_skip
from alignloop.labeling.queue.stats import nothing_left, waiting_items
from alignloop.labeling.queue.store import AnnotatorAccount, QueueError, QueueStore
from alignloop.logs import visible

KEYS = {"1": 0, "2": 1, "3": "tie", "4": "both_bad"}
SKIP_KEYS = {"1": "cant_judge", "2": "offensive", "3": "needs_expertise", "4": "other"}


def label_in_terminal(store: QueueStore, me: AnnotatorAccount, *, limit: int | None = None,
                      lease_seconds: float = 600.0, console=None) -> int:
    """Label until the queue is empty for `me`, `limit` labels, or q / end of input; an
    item left unanswered is released. Returns how many labels were recorded."""
    from rich.console import Console
    from rich.prompt import Prompt
    from rich.text import Text

    console, rng, done, shown_version = console or Console(), random.Random(), 0, None
    while limit is None or done < limit:
        a = store.next_item(me.id, lease_seconds=lease_seconds, rng=rng)
        if a is None:
            console.print(nothing_left(waiting_items(store)))
            break
        shown_version = _show_guideline(console, store, a.item.round, shown_version)
        _show(console, me, store.labeled(me.id), a)
        key = None
        try:
            key = Prompt.ask("1 = A, 2 = B, 3 = tie, 4 = both bad, s = skip, q = quit",
                             choices=[*KEYS, "s", "q"], console=console)
            if key == "q":
                store.release(me.id, a.lease_id)
                break
            if key == "s":
                _skip(console, store, me, a)
                continue
            confidence = int(Prompt.ask("confidence (1 unsure, 2 fairly sure, 3 sure)",
                                        choices=["1", "2", "3"], default="2", console=console))
            comment = Prompt.ask("comment (Enter for none)", default="", show_default=False,
                                 console=console)
        except (EOFError, KeyboardInterrupt) as e:
            store.release(me.id, a.lease_id)
            console.print()
            if key is not None and isinstance(e, EOFError):   # piped answers out of step
                console.print(Text("input ended in the middle of an item, which is not "
                                   "recorded: each item reads a choice, a confidence and a "
                                   "comment line", style="red"))
            break
        slot = KEYS[key]
        choice = a.display_order[slot] if isinstance(slot, int) else slot
        try:
            store.record_label(me.id, item_id=a.item.item_id, lease_id=a.lease_id,
                               choice=choice, confidence=confidence,
                               idempotency_key=f"tty-{uuid.uuid4().hex}", comment=comment)
            done += 1
        except QueueError as e:
            console.print(Text(visible(f"not recorded: {e}"), style="red"))
    console.print(f"{done} labels recorded this session.")
    return done


def _show_guideline(console, store: QueueStore, round: int, shown: int | None) -> int | None:
    """Print the round's guideline when its version differs from the one shown last."""
    from rich.panel import Panel
    from rich.text import Text

    g = guidelines.current(store, round)
    if g is not None and g.version != shown:
        console.print(Panel(Text(visible(g.body)), title=f"Guidelines (version {g.version})",
                            title_align="left", border_style="yellow"))
    return None if g is None else g.version


def _skip(console, store: QueueStore, me: AnnotatorAccount, a) -> None:
    """Ask for a reason and skip the item (it is not offered to `me` again)."""
    from rich.prompt import Prompt
    from rich.text import Text

    key = Prompt.ask("why? 1 = can't judge, 2 = offensive, 3 = needs expertise, 4 = other",
                     choices=list(SKIP_KEYS), console=console)
    comment = Prompt.ask("comment (Enter for none)", default="", show_default=False,
                         console=console)
    try:
        record_skip(store, me.id, item_id=a.item.item_id, lease_id=a.lease_id,
                    reason=SKIP_KEYS[key], comment=comment)
        console.print("skipped; that item goes to someone else.")
    except QueueError as e:
        console.print(Text(visible(f"not skipped: {e}"), style="red"))


def _show(console, me: AnnotatorAccount, labeled: int, a) -> None:
    """One assignment: the prompt's turns, then the responses in the display order."""
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    it = a.item
    shown = (it.a, it.b) if a.display_order == "ab" else (it.b, it.a)
    turns = ([("prompt", it.prompt)] if isinstance(it.prompt, str) else
             [(str(m.get("role", "user")), str(m.get("content", ""))) for m in it.prompt])
    console.rule(Text(visible(f"{me.name} · {labeled} labeled")))
    for role, content in turns:
        console.print(Panel(Text(visible(content)), title=Text(visible(role)),
                            title_align="left"))
    panels = [Panel(Text(visible(shown[0])), title="A [1]"),
              Panel(Text(visible(shown[1])), title="B [2]")]
    if console.width >= 100:   # side by side; stacked on a narrow terminal
        grid = Table.grid(expand=True, padding=(0, 1))
        grid.add_column(ratio=1)
        grid.add_column(ratio=1)
        grid.add_row(*panels)
        console.print(grid)
    else:
        console.print(*panels)
