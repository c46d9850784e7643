"""Reference log-probs: computed once per training run, cached in `reference_logps.parquet`.

Training never holds the reference model: its log-probs for every pair are
computed in one no-grad pass before training and stored keyed by pair id, the
hash of the exact token ids, and the hash of the reference weights. A cache
whose reference hash or token ids do not match is recomputed, never reused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import torch
from alignloop.artifacts import read_parquet, write_parquet
from alignloop.progress import tqdm
from alignloop.training.batching import EncodedPair, collate
from alignloop.training.logps import PairScorer, score_batch

log = logging.getLogger("alignloop.training")

SCHEMA = pa.schema([
    ("pair_id", pa.string()),
    ("ids_hash", pa.string()),
    ("reference_hash", pa.string()),
    ("chosen_logps", pa.float64()),
    ("rejected_logps", pa.float64()),
    ("chosen_tokens", pa.int32()),
    ("rejected_tokens", pa.int32()),
])


@dataclass(frozen=True)
class ReferenceLogps:
    """Reference log-prob sums aligned with the encoded pairs (index i = encoded[i])."""

    chosen: torch.Tensor    # (n,) float32
    rejected: torch.Tensor  # (n,) float32
    reference_hash: str
    reused: bool            # True when read from a valid cache


@torch.inference_mode()
def compute_reference_logps(model, encoded: list[EncodedPair], *, pad_id: int,
                            batch_size: int = 16, device="cpu",
                            progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs under `model` for every pair, in `encoded` order."""
    was_training = model.training
    model.eval()
    scorer = PairScorer(model)
    order = sorted(range(len(encoded)), key=lambda i: -encoded[i].length)  # little padding
    chosen = torch.empty(len(encoded), dtype=torch.float64)
    rejected = torch.empty(len(encoded), dtype=torch.float64)
    bar = tqdm(total=len(encoded), desc="reference log-probs", unit="pair", disable=not progress)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        batch = collate([encoded[i] for i in idx], pad_id).to(device)
        c, r = score_batch(scorer, batch)
        chosen[idx] = c.double().cpu()
        rejected[idx] = r.double().cpu()
        bar.update(len(idx))
    bar.close()
    model.train(was_training)
    return chosen, rejected


def load_cached(path: Path, encoded: list[EncodedPair], reference_hash: str) -> ReferenceLogps | None:
    """The cached log-probs if the file matches these pairs and this reference exactly, else None."""
    if not path.exists():
        return None
    try:
        rows = {r["pair_id"]: r for r in read_parquet(path)}
    except Exception as e:  # a corrupt cache is recomputed, and said so
        log.warning("reference cache %s unreadable (%s); recomputing", path, e)
        return None
    chosen, rejected = [], []
    for p in encoded:
        row = rows.get(p.pair_id)
        if row is None or row["reference_hash"] != reference_hash or row["ids_hash"] != p.ids_hash:
            why = ("missing pair " + p.pair_id if row is None else
                   "reference weights changed" if row["reference_hash"] != reference_hash else
                   "token ids changed for pair " + p.pair_id)
            log.info("reference cache %s not reusable (%s); recomputing", path, why)
            return None
        chosen.append(row["chosen_logps"])
        rejected.append(row["rejected_logps"])
    return ReferenceLogps(torch.tensor(chosen, dtype=torch.float32),
                          torch.tensor(rejected, dtype=torch.float32), reference_hash, True)


def reference_logps(model, encoded: list[EncodedPair], *, path: Path, reference_hash: str,
                    pad_id: int, batch_size: int = 16, device="cpu",
                    progress: bool = True, write: bool = True) -> ReferenceLogps:
    """Cached reference log-probs, computing and writing them when the cache is not valid."""
    cached = load_cached(path, encoded, reference_hash)
    if cached is not None:
        log.info("reference log-probs: %d pairs cached, 0 computed (%s)", len(encoded), path)
        return cached
    log.info("reference log-probs: 0 pairs cached, %d computed", len(encoded))
    chosen, rejected = compute_reference_logps(model, encoded, pad_id=pad_id,
                                               batch_size=batch_size, device=device,
                                               progress=progress)
    if write:
        write_parquet(path, [
            {"pair_id": p.pair_id, "ids_hash": p.ids_hash, "reference_hash": reference_hash,
             "chosen_logps": float(chosen[i]), "rejected_logps": float(rejected[i]),
             "chosen_tokens": len(p.chosen_ids), "rejected_tokens": len(p.rejected_ids)}
            for i, p in enumerate(encoded)
        ], schema=SCHEMA)
    return ReferenceLogps(chosen.float(), rejected.float(), reference_hash, False)
