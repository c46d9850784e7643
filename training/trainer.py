"""The DPO trainer: `train_dpo(pairs, ...)` -> a policy checkpoint, a step log, cached reference log-probs.

One visible loop: tokenise -> reference log-probs (once, cached) -> plan the
data order -> for each step: micro-batches -> loss -> backward -> clip ->
optimizer -> log -> checkpoint. Runs in one CPU process or under
`accelerate launch` (DDP/FSDP) unchanged. On a GPU with bf16 it trains in
bf16 autocast over float32 master weights; on CPU always float32.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from alignloop.config import DataConfig, ModelConfig, TrainConfig, to_dict
from alignloop.records import Pair
from alignloop.training.batching import EncodedPair, PackedBatch, collate, encode_pairs, plan_steps
from alignloop.training.checkpoints import load_checkpoint, remove_checkpoint, save_checkpoint
from alignloop.training.logps import PairScorer, score_batch
from alignloop.training.losses import LENGTH_AVERAGED, nll_loss, preference_loss
from alignloop.training.reference import ReferenceLogps, reference_logps

log = logging.getLogger("alignloop.training")

FAIL_AT_STEP_ENV = "ALIGNLOOP_FAIL_AT_STEP"  # fault injection for resume tests


@dataclass
class TrainResult:
    policy_dir: Path
    steps: int
    metrics: dict = field(default_factory=dict)   # the last logged step
    reference_hash: str = ""
    reference_reused: bool = False
    skipped: dict = field(default_factory=dict)
    n_pairs: int = 0
    reference_seconds: float = 0.0  # wall time of the reference pass (0 when the cache was reused)
    train_seconds: float = 0.0      # wall time of the optimizer steps run by this call


def dpo_objective(policy_chosen, policy_rejected, ref_chosen, ref_rejected, batch: PackedBatch,
                  cfg: TrainConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair loss (B,) and per-pair statistics from summed log-probs (B,)."""
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    if cfg.loss in LENGTH_AVERAGED:
        loss_chosen = chosen_ratio / batch.n_chosen
        loss_rejected = rejected_ratio / batch.n_rejected
    else:
        loss_chosen, loss_rejected = chosen_ratio, rejected_ratio
    flip = (1.0 - batch.p_chosen).clamp(max=0.49) if cfg.flip_rate_per_pair else cfg.flip_rate
    loss = preference_loss(cfg.loss, loss_chosen, loss_rejected, beta=cfg.beta,
                           p_chosen=batch.p_chosen, flip_rate=flip)
    if cfg.rpo_alpha > 0:
        loss = loss + cfg.rpo_alpha * nll_loss(-policy_chosen, batch.n_chosen)
    rewards_chosen = cfg.beta * chosen_ratio.detach()
    rewards_rejected = cfg.beta * rejected_ratio.detach()
    stats = {
        "rewards/chosen": rewards_chosen,
        "rewards/rejected": rewards_rejected,
        "rewards/margin": rewards_chosen - rewards_rejected,
        "rewards/accuracy": (rewards_chosen > rewards_rejected).float(),
        "logps/chosen": policy_chosen.detach(),
        "logps/rejected": policy_rejected.detach(),
    }
    return loss, stats


def lr_factor(step: int, *, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at `step` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def run_fingerprint(encoded: list[EncodedPair], cfg: TrainConfig, model: ModelConfig,
                    start_hash: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([to_dict(cfg), to_dict(model.lora), start_hash], sort_keys=True).encode())
    for p in encoded:
        h.update(f"{p.pair_id}:{p.ids_hash}:{p.p_chosen}:{p.weight};".encode())
    return h.hexdigest()[:16]


def _log_rows_up_to(path: Path, step: int) -> None:
    """Keep only log lines of finished steps (after a resume from `step`)."""
    if path.exists():
        keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        path.write_text("".join(ln + "\n" for ln in keep))


def _mixed_precision(model_cfg: ModelConfig) -> str:
    from alignloop.models import resolve_dtype

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = resolve_dtype(model_cfg.dtype, device)
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")


def train_dpo(pairs: list[Pair], *, out_dir: str | Path, policy: str, reference: str = "",
              model_cfg: ModelConfig, data_cfg: DataConfig, train_cfg: TrainConfig,
              progress: bool = True) -> TrainResult:
    """Train `policy` on `pairs` with DPO against `reference` (default: the policy itself).

    Writes OUT/reference_logps.parquet, OUT/train_log.jsonl, OUT/policy/ and, while
    running, OUT/checkpoint/ (every `save_every` steps; removed at the end). A rerun
    with the same arguments resumes from the checkpoint.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from alignloop.models import apply_lora, load_model, load_tokenizer, save_policy, weights_hash
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = train_cfg
    # Several processes without CUDA (torchrun / `accelerate launch --cpu`): DDP over gloo.
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(mixed_precision=_mixed_precision(model_cfg), cpu=multi_cpu)
    set_seed(cfg.seed)
    main = accelerator.is_main_process
    show = progress and main

    tokenizer = load_tokenizer(policy)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded, skipped = encode_pairs(pairs, tokenizer, max_length=data_cfg.max_length,
                                    max_prompt_length=data_cfg.max_prompt_length,
                                    truncation=data_cfg.truncation, on_invalid=data_cfg.on_invalid,
                                    progress=show)

    # Reference pass first, then the reference is gone: training never holds it.
    model = load_model(policy, dtype="float32", device=accelerator.device)
    start_hash = weights_hash(model)
    reference = reference or policy
    ref_path = out_dir / "reference_logps.parquet"
    ref_kw = dict(path=ref_path, pad_id=pad_id, batch_size=max(2 * cfg.batch_size, 8),
                  device=accelerator.device, progress=show, write=main)
    t_ref = time.perf_counter()
    with accelerator.main_process_first():
        if reference == policy:
            ref = reference_logps(model, encoded, reference_hash=start_hash, **ref_kw)
        else:
            ref_model = load_model(reference, dtype=model_cfg.dtype, device=accelerator.device)
            ref = reference_logps(ref_model, encoded, reference_hash=weights_hash(ref_model), **ref_kw)
            del ref_model
            gc.collect()
    reference_seconds = time.perf_counter() - t_ref

    if model_cfg.lora.enabled:
        model = apply_lora(model, model_cfg.lora, seed=cfg.seed)
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if model_cfg.lora.enabled:
            model.enable_input_require_grads()  # frozen embeddings: checkpointed layers still need grads
    model.train()
    scorer = PairScorer(model)
    params = [p for p in scorer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    world, rank = accelerator.num_processes, accelerator.process_index
    lengths = [p.length for p in encoded]
    per_epoch = len(plan_steps(lengths, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                               world_size=world, epochs=1, seed=cfg.seed,
                               group_by_length=cfg.group_by_length))
    if per_epoch == 0:
        raise ValueError(f"{len(encoded)} pairs are fewer than one step needs "
                         f"({cfg.batch_size * cfg.grad_accum * world}) with {world} processes")
    epochs = max(cfg.epochs, math.ceil(cfg.max_steps / per_epoch)) if cfg.max_steps else cfg.epochs
    steps = plan_steps(lengths, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                       world_size=world, epochs=epochs, seed=cfg.seed,
                       group_by_length=cfg.group_by_length)
    total = min(cfg.max_steps, len(steps)) if cfg.max_steps else len(steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, warmup=cfg.warmup_steps, total=total, schedule=cfg.lr_schedule))

    scorer, optimizer = accelerator.prepare(scorer, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    fingerprint = run_fingerprint(encoded, cfg, model_cfg, start_hash)
    start = load_checkpoint(accelerator, out_dir, fingerprint=fingerprint)
    log_path = out_dir / "train_log.jsonl"
    if main:
        if start:
            log.info("resuming from step %d of %d", start, total)
            _log_rows_up_to(log_path, start)
        elif log_path.exists():
            log_path.unlink()
    fail_at = int(os.environ.get(FAIL_AT_STEP_ENV, "0"))

    bar = tqdm(total=total, initial=start, desc="train", unit="step", disable=not show)
    metrics: dict = {}
    t_train = time.perf_counter()
    for step in range(start, total):
        t0 = time.perf_counter()
        micro = steps[step][rank::world]
        n_pairs = sum(len(m) for m in steps[step])
        sums = torch.zeros(8, dtype=torch.float64)  # loss, 6 stats, tokens
        for j, idx in enumerate(micro):
            batch = collate([encoded[i] for i in idx], pad_id).to(accelerator.device)
            sync = contextlib.nullcontext() if j == len(micro) - 1 else accelerator.no_sync(scorer)
            with sync, accelerator.autocast():
                chosen, rejected = score_batch(scorer, batch)
                loss_vec, stats = dpo_objective(chosen, rejected, ref.chosen[idx].to(chosen.device),
                                                ref.rejected[idx].to(chosen.device), batch, cfg)
                # Mean over the step's pairs on all processes; DDP averages gradients
                # over processes, hence the factor `world`.
                loss = (loss_vec * batch.weight).sum() * world / n_pairs
                accelerator.backward(loss)
            sums[0] += float((loss_vec.detach() * batch.weight).sum())
            for k, v in enumerate(stats.values(), start=1):
                sums[k] += float(v.sum())
            sums[7] += batch.n_tokens
        if cfg.max_grad_norm > 0:
            grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
        else:
            grad_norm = torch.linalg.vector_norm(
                torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        sums = accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu()
        elapsed = time.perf_counter() - t0
        metrics = {"step": step + 1, "epoch": round((step + 1) / per_epoch, 4),
                   "loss": float(sums[0] / n_pairs)}
        metrics.update({k: float(sums[i] / n_pairs) for i, k in enumerate(stats, start=1)})
        metrics.update({"grad_norm": float(grad_norm), "lr": lr, "pairs": n_pairs,
                        "tokens": int(sums[7]), "tokens_per_s": float(sums[7]) / elapsed,
                        "step_time_s": elapsed})
        if main and ((step + 1) % cfg.log_every == 0 or step + 1 == total):
            with open(log_path, "a") as f:
                f.write(json.dumps(metrics) + "\n")
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics['rewards/accuracy']:.2f}")
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total:
            save_checkpoint(accelerator, out_dir, step=step + 1, fingerprint=fingerprint)
        if fail_at and step + 1 == fail_at:
            raise RuntimeError(f"fault injection: {FAIL_AT_STEP_ENV}={fail_at}")
    bar.close()
    train_seconds = time.perf_counter() - t_train

    accelerator.wait_for_everyone()
    policy_dir = out_dir / "policy"
    if main:
        trained = accelerator.unwrap_model(scorer).model
        trained.config.use_cache = True  # for generation from the saved policy
        save_policy(trained, tokenizer, policy_dir)
    remove_checkpoint(accelerator, out_dir)
    return TrainResult(policy_dir=policy_dir, steps=total, metrics=metrics,
                       reference_hash=ref.reference_hash, reference_reused=ref.reused,
                       skipped=skipped, n_pairs=len(encoded),
                       reference_seconds=reference_seconds, train_seconds=train_seconds)


__all__ = ["train_dpo", "dpo_objective", "lr_factor", "TrainResult", "ReferenceLogps"]
