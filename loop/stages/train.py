"""The model stages before evaluation: refresh the reference, cache its log-probs, and
train the policy with DPO.

    ema_reference   reference.mode: ema -> round_NNN/reference/ (a model directory)
    reference       the round's reference model -> reference_logps.parquet
    train           DPO from the round's starting policy -> policy/, train_log.jsonl

Each runs its models where the run's placement says (`alignloop.placement`).
"""

from __future__ import annotations

from pathlib import Path

from alignloop import artifacts as A
from alignloop.config import DataConfig, ModelConfig, TrainConfig
from alignloop.placement import Placement
from alignloop.records import Pair


def ema_reference(out: Path, *, previous_reference: str, policy: str, weight: float,
                  placement: Placement) -> str:
    """Save weight * previous_reference + (1 - weight) * policy as a model directory
    (averaged in float32 whatever the precision, on the placement's device)."""
    import torch
    from alignloop.models import load_model, load_tokenizer

    ref = load_model(previous_reference, dtype=torch.float32, device=placement.device)
    pol = load_model(policy, dtype=torch.float32, device=placement.device)
    pol_state = pol.state_dict()
    with torch.no_grad():
        for name, tensor in ref.state_dict().items():
            if tensor.is_floating_point():
                tensor.mul_(weight).add_(pol_state[name], alpha=1.0 - weight)
    with A.atomic_dir(out) as tmp:
        ref.save_pretrained(tmp)
        load_tokenizer(policy).save_pretrained(tmp)
    return str(out)


def reference(rdir: Path, *, pairs: list[Pair], policy: str, reference_model: str,
              data: DataConfig, batch_size: int, placement: Placement) -> None:
    """Reference log-probs of this round's pairs -> reference_logps.parquet (the trainer
    finds them there, keyed by pair, reference weights and precision, and does not
    recompute them)."""
    from alignloop.models import load_model, load_tokenizer
    from alignloop.training.batching import encode_pairs
    from alignloop.training.reference import reference_logps
    from alignloop.training.weights import weights_hash

    tokenizer = load_tokenizer(policy, data.chat_template)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded, _ = encode_pairs(pairs, tokenizer, max_length=data.max_length,
                              max_prompt_length=data.max_prompt_length, truncation=data.truncation,
                              on_invalid=data.on_invalid)
    # Loaded and run as the trainer loads and runs it, so the cache key matches.
    ref = load_model(reference_model, dtype=placement.weights_dtype, device=placement.device)
    reference_logps(ref, encoded, path=rdir / A.REFERENCE_LOGPS, reference_hash=weights_hash(ref),
                    pad_id=pad_id, batch_size=max(2 * batch_size, 8), device=ref.device,
                    placement=placement)


def train(rdir: Path, *, pairs: list[Pair], policy: str, reference_model: str, model: ModelConfig,
          data: DataConfig, train: TrainConfig, placement: Placement, on_log=None):
    """DPO on `pairs` from `policy` against `reference_model` -> policy/, train_log.jsonl
    (`on_log(metrics)`: called with each step-log line, for experiment trackers)."""
    from alignloop.training.trainer import train_dpo

    return train_dpo(pairs, out_dir=rdir, policy=policy, reference=reference_model,
                     model_cfg=model, data_cfg=data, train_cfg=train, placement=placement,
                     on_log=on_log)
