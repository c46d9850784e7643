"""`Label`: one raw judgement or vote, the row of `labels.parquet`.

Every judge's probability on every selected pair and every human vote is kept,
with who gave it, when, in which display order and in which round, so that
agreement, calibration and the embedding judge's training set can be rebuilt
from the file alone (it carries the prompt and both responses for that reason).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from alignloop.records import Prompt

LABEL_COLUMNS = (
    "item_id", "round", "source", "annotator", "choice", "p_a", "confidence",
    "display_order", "created_at", "detail", "prompt", "a", "b", "slice",
)

VOTE_P = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": math.nan}


@dataclass(frozen=True)
class Label:
    item_id: str
    round: int
    source: str          # "judge" | "human" | "adjudicated" (an admin's final verdict)
    annotator: str       # judge name or annotator name
    choice: str          # a | b | tie | both_bad for votes; "" for judge probabilities
    p_a: float           # judge probability, or the vote as 1 / 0 / 0.5 (NaN: both bad)
    prompt: Prompt
    a: str
    b: str
    slice: str = ""
    confidence: int = 0
    display_order: str = ""
    # when a person gave the vote (Unix seconds, the queue's clock); 0 for a judge's
    # probability (a function of the pair, not of the time) and for the simulated panel's
    # votes, so that the same config and seed give labels.parquet byte for byte
    created_at: float = 0.0
    detail: str = ""

    def to_row(self) -> dict:
        row = asdict(self)
        row["prompt"] = json.dumps(row["prompt"], ensure_ascii=False)
        return {k: row[k] for k in LABEL_COLUMNS}

    @classmethod
    def from_row(cls, row: dict) -> Label:
        fields = {k: row[k] for k in LABEL_COLUMNS if k in row}
        fields["prompt"] = json.loads(fields["prompt"])
        return cls(**fields)


def judge_label(item: dict, judge: str, p_a: float, detail: str, round: int) -> Label:
    return Label(item["item_id"], round, "judge", judge, "", float(p_a), item["prompt"],
                 item["a"], item["b"], item.get("slice", ""), detail=detail)


def vote_label(item: dict, vote) -> Label:
    return Label(vote.item_id, vote.round, getattr(vote, "source", "human"), vote.annotator,
                 vote.choice,
                 VOTE_P[vote.choice], item["prompt"], item["a"], item["b"], item.get("slice", ""),
                 vote.confidence, vote.display_order, vote.created_at, vote.comment)


def write_labels(path: Path, labels: list[Label]) -> Path:
    from alignloop.artifacts import write_parquet

    return write_parquet(Path(path), [lab.to_row() for lab in labels])


def read_labels(path: Path) -> list[Label]:
    from alignloop.artifacts import read_parquet

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"labels file not found: {path}")
    rows = read_parquet(path)
    missing = [c for c in ("item_id", "source", "annotator", "p_a", "prompt", "a", "b")
               if rows and c not in rows[0]]
    if missing:
        from alignloop.labeling import LabelingError

        raise LabelingError(f"{path}: not a labels file (missing columns {missing})")
    return [Label.from_row(r) for r in rows]
