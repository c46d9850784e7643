"""Reference log-probs: computed once per training run, cached in `reference_logps.parquet`.

Training never holds the reference model: its log-probs for every pair are
computed in one no-grad pass before training and stored keyed by pair id, the
hash of the exact token ids, and the hash of the reference weights with the
precision they were scored in (`cache_key`; `alignloop.placement`: bf16-mixed
log-probs differ from fp32 ones by about 0.01-0.02 nat per token). A cache whose
key or token ids do not match is recomputed, never reused.
"""

from __future__ import annotations

import contextlib
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
                            batch_size: int = 16, device="cpu", placement=None,
                            progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs under `model` for every pair, in `encoded` order, under
    the placement's autocast (the training forward's)."""
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
        with placement.autocast() if placement is not None else contextlib.nullcontext():
            c, r = score_batch(scorer, batch)
        chosen[idx] = c.double().cpu()
        rejected[idx] = r.double().cpu()
        bar.update(len(idx))
    bar.close()
    model.train(was_training)
    return chosen, rejected


def cache_key(reference_hash: str, precision: str) -> str:
    """The `reference_hash` column's value: the weights hash, then `+precision` unless fp32
    (fp32 keys are the bare hash, so caches written before precisions existed stay valid)."""
    return reference_hash if precision == "fp32" else f"{reference_hash}+{precision}"


def load_cached(path: Path, encoded: list[EncodedPair], reference_hash: str,
                precision: str = "fp32") -> ReferenceLogps | None:
    """The cached log-probs if the file matches these pairs, this reference and this precision
    exactly, else None."""
    key = cache_key(reference_hash, precision)
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
        if row is None or row["reference_hash"] != key or row["ids_hash"] != p.ids_hash:
            weights, _, was = row["reference_hash"].partition("+") if row else ("", "", "")
            why = ("missing pair " + p.pair_id if row is None else
                   "reference weights changed" if weights != reference_hash else
                   f"precision changed ({was or 'fp32'} -> {precision})" if row["reference_hash"] != key
                   else "token ids changed for pair " + p.pair_id)
            log.info("reference cache %s not reusable (%s); recomputing", path, why)
            return None
        chosen.append(row["chosen_logps"])
        rejected.append(row["rejected_logps"])
    return ReferenceLogps(torch.tensor(chosen, dtype=torch.float32),
                          torch.tensor(rejected, dtype=torch.float32), reference_hash, True)


def reference_logps(model, encoded: list[EncodedPair], *, path: Path, reference_hash: str,
                    pad_id: int, batch_size: int = 16, device="cpu", placement=None,
                    progress: bool = True, write: bool = True) -> ReferenceLogps:
    """Cached reference log-probs, computing and writing them when the cache is not valid.
    `placement` (an `alignloop.placement.Placement`; None: fp32) gives the autocast and the
    precision in the cache key."""
    precision = placement.precision if placement is not None else "fp32"
    cached = load_cached(path, encoded, reference_hash, precision)
    if cached is not None:
        log.info("reference log-probs: %d pairs cached, 0 computed (%s)", len(encoded), path)
        return cached
    log.info("reference log-probs: 0 pairs cached, %d computed", len(encoded))
    chosen, rejected = compute_reference_logps(model, encoded, pad_id=pad_id,
                                               batch_size=batch_size, device=device,
                                               placement=placement, progress=progress)
    if write:
        write_parquet(path, [
            {"pair_id": p.pair_id, "ids_hash": p.ids_hash,
             "reference_hash": cache_key(reference_hash, precision),
             "chosen_logps": float(chosen[i]), "rejected_logps": float(rejected[i]),
             "chosen_tokens": len(p.chosen_ids), "rejected_tokens": len(p.rejected_ids)}
            for i, p in enumerate(encoded)
        ], schema=SCHEMA)
    return ReferenceLogps(chosen.float(), rejected.float(), reference_hash, False)
