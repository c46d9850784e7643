"""Routing: each selected pair is labeled by the judges, sent to people, or dropped.

- `auto`: the judges are confident (|p_a - 0.5| >= auto_threshold), agree with
  themselves when the order is swapped, and their members do not disagree much
  (spread <= max_auto_uncertainty).
- `human`: every other pair, most informative first, up to the human budget.
  Informativeness is the judges' spread plus their closeness to a coin flip
  (both in [0, 0.5]): people's time goes where the models know least.
- `drop`: what is left once the budget is spent, or pairs with no usable
  verdict (unreadable, or a learning judge with no labels yet) when
  `unparsable: drop`.

The reason is recorded for every pair, so a report can say why a pair never
reached anyone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from alignloop.labeling import Judgement


@dataclass(frozen=True)
class Route:
    decision: str        # auto | human | drop
    reason: str
    informativeness: float


def informativeness(j: Judgement) -> float:
    if not j.valid:
        return 1.0  # nothing is known: as informative as a pair can be
    return j.uncertainty + (0.5 - abs(j.p_a - 0.5))


def _why_not_auto(j: Judgement, cfg) -> list[str]:
    why = []
    if abs(j.p_a - 0.5) < cfg.auto_threshold:
        why.append(f"p_a={j.p_a:.2f} within {cfg.auto_threshold} of 0.5")
    if not j.order_consistent:
        why.append("order-inconsistent")
    if j.uncertainty > cfg.max_auto_uncertainty:
        why.append(f"spread {j.uncertainty:.2f} > {cfg.max_auto_uncertainty}")
    return why


def route(judgements: Sequence[Judgement | None], cfg, *, human_budget: int) -> list[Route]:
    """One `Route` per judgement (None: no judges are configured). `cfg` is a RoutingConfig."""
    pending: list[tuple[int, str]] = []      # (index, reason) candidates for people
    out: list[Route | None] = [None] * len(judgements)
    for n, j in enumerate(judgements):
        if j is None:
            pending.append((n, "no judges configured"))
        elif not j.valid:
            reason = f"no usable judge verdict ({j.detail})"
            if cfg.unparsable == "drop":
                out[n] = Route("drop", reason, informativeness(j))
            else:
                pending.append((n, reason))
        else:
            why = _why_not_auto(j, cfg)
            if not why:
                out[n] = Route("auto", f"judges confident: p_a={j.p_a:.2f}, "
                               f"spread {j.uncertainty:.2f}", informativeness(j))
            else:
                pending.append((n, "uncertain: " + ", ".join(why)))
    score = {n: (1.0 if judgements[n] is None else informativeness(judgements[n])) for n, _ in pending}
    pending.sort(key=lambda t: (-score[t[0]], t[0]))
    for rank, (n, reason) in enumerate(pending):
        if rank < human_budget:
            out[n] = Route("human", reason, score[n])
        else:
            out[n] = Route("drop", f"{reason}; human budget ({human_budget}) spent", score[n])
    assert all(r is not None for r in out)
    return out  # type: ignore[return-value]

