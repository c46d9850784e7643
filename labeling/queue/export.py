"""Export the queue's soft labels as a Hugging Face `datasets.Dataset`
(`alignloop queue export --format hf --out DIR [--push-to-hub REPO]`).

Columns: TRL's preference columns `prompt`, `chosen`, `rejected` (plain text when every
prompt is text; otherwise TRL's conversational form for every row: the prompt as
messages, a plain prompt becoming one user message, and each response one assistant
message), then `p_chosen` (the soft label: Dawid-Skene's P(chosen is better), with
adjudicated verdicts as strong votes), `n_votes`, `votes_chosen`, `votes_rejected`,
`votes_tie`, `votes_both_bad`, `adjudicated` ("chosen", "rejected", "tie", "both_bad" or
""), `votes` (every vote: annotator, choice relative to chosen/rejected, confidence,
comment), `item_id`, `round` and `slice`. Rows follow the queue's order of arrival; items
without an a/b/tie vote or whose votes balance exactly are left out, as in the DPO export.

`datasets` and `huggingface_hub` are imported only here, when an export asks for them.
"""

from __future__ import annotations

from pathlib import Path

from alignloop.labeling.aggregate import Vote as AggVote
from alignloop.labeling.aggregate import aggregate_votes
from alignloop.labeling.queue import adjudication, stats

RELATIVE = {True: {"a": "chosen", "b": "rejected"}, False: {"a": "rejected", "b": "chosen"}}


def _relative(choice: str, a_chosen: bool) -> str:
    return RELATIVE[a_chosen].get(choice, choice)


def preference_rows(store, *, round: int | None = None, prior_reliability: float = 0.75,
                    prior_strength: float = 4.0, iterations: int = 500) -> list[dict]:
    """The export's rows (see module docstring), JSON-ready."""
    labels = stats.label_rows(store)
    verdicts = {i: v["choice"] for i, v in adjudication.verdicts(store).items()}
    result = aggregate_votes([AggVote(r["item_id"], r["annotator"], r["choice"]) for r in labels],
                             prior_reliability=prior_reliability, prior_strength=prior_strength,
                             iterations=iterations, verdicts=verdicts)
    by_item: dict[str, list[dict]] = {}
    for r in labels:
        by_item.setdefault(r["item_id"], []).append(r)
    items = stats.export_items(store, round)
    chat = any(not isinstance(it.prompt, str) for it in items)
    rows = []
    for it in items:
        post = result.posteriors.get(it.item_id)
        if post is None or post.n_votes == 0 or post.p_a == 0.5:
            continue
        a_chosen = post.p_a > 0.5
        chosen, rejected = (it.a, it.b) if a_chosen else (it.b, it.a)
        votes = [{"annotator": r["annotator"], "choice": _relative(r["choice"], a_chosen),
                  "confidence": int(r["confidence"]), "comment": r["comment"]}
                 for r in by_item.get(it.item_id, [])]
        counts = {c: sum(v["choice"] == c for v in votes)
                  for c in ("chosen", "rejected", "tie", "both_bad")}
        prompt = it.prompt
        if chat:
            prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [
                {"role": str(m.get("role", "user")), "content": str(m.get("content", ""))}
                for m in prompt]
            chosen = [{"role": "assistant", "content": chosen}]
            rejected = [{"role": "assistant", "content": rejected}]
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                     "p_chosen": max(post.p_a, 1.0 - post.p_a), "n_votes": post.n_votes,
                     **{f"votes_{c}": n for c, n in counts.items()},
                     "adjudicated": _relative(verdicts.get(it.item_id, ""), a_chosen),
                     "votes": votes, "item_id": it.item_id, "round": it.round,
                     "slice": it.slice})
    return rows


def export_hf(store, out: str | Path, *, round: int | None = None,
              push_to_hub: str | None = None, private: bool = True) -> int:
    """Write the dataset to `out` (`save_to_disk`) and, with `push_to_hub`, upload it to that
    Hub repository (needs a Hugging Face login). Returns the number of rows."""
    from alignloop.errors import AlignloopError
    from alignloop.hub import content_dataset

    rows = preference_rows(store, round=round)
    if not rows:
        raise AlignloopError("nothing to export: no item has a vote that prefers a side yet")
    dataset = content_dataset(rows)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AlignloopError(f"--out {out} is a file; the hf format writes a directory")
    from alignloop.logs import datasets_bars

    with datasets_bars():
        dataset.save_to_disk(str(out))
    if push_to_hub:
        dataset.push_to_hub(push_to_hub, private=private)
    return len(rows)
