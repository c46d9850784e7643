"""The DPO trainer: `train_dpo(pairs, ...)` -> a policy checkpoint, a step log, cached reference log-probs.

`train_dpo` reads top to bottom: load and prepare (tokenise, reference
log-probs once, cached) -> build (policy, optimiser, data plan, resume) -> the
step loop (micro-batches -> loss -> backward -> clip -> optimizer -> log ->
checkpoint) -> save. Runs in one CPU process or under `accelerate launch`
(DDP/FSDP) unchanged. Device and precision come from the placement
(`alignloop.placement`): bf16-mixed trains under bf16 autocast over float32 master
weights, on a GPU or a CPU with bf16 units; log-probs are float32 in every precision.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from alignloop.artifacts import TRAIN_LOG, TRAIN_TIMING
from alignloop.config import DataConfig, LoraConfig, ModelConfig, TrainConfig, to_dict
from alignloop.models import load_model, load_tokenizer
from alignloop.placement import Placement, placement_for
from alignloop.records import Pair
from alignloop.training.allocator import keep_freed_memory, release_freed_memory
from alignloop.training.batching import EncodedPair, PackedBatch, collate, encode_pairs, plan_steps
from alignloop.training.checkpoints import (
    CheckpointSchedule,
    check_checkpoint,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)
from alignloop.training.compile import compile_layers, resolve_compile
from alignloop.training.logps import PairScorer, score_batch
from alignloop.training.losses import (
    LENGTH_AVERAGED,
    REFERENCE_FREE,
    nll_loss,
    preference_loss,
    weighted_mean,
)
from alignloop.training.reference import ReferenceLogps, reference_logps
from alignloop.training.weights import apply_lora, save_policy, weights_hash

log = logging.getLogger("alignloop.training")

FAIL_AT_STEP_ENV = "ALIGNLOOP_FAIL_AT_STEP"  # fault injection for resume tests
# How often checkpoints are written does not change what is trained: left out of the
# run's fingerprint, so a run may resume with other values.
CHECKPOINT_CADENCE = ("save_every", "save_every_s")
# Wall-clock measures of a step: written to train_timing.jsonl, not to train_log.jsonl,
# so that the step log of a run repeats byte for byte (`on_log` gets both).
TIMING_KEYS = ("tokens_per_s", "step_time_s")


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
    placement: dict = field(default_factory=dict)  # the device and precision it ran with


def dpo_objective(policy_chosen, policy_rejected, ref_chosen, ref_rejected, batch: PackedBatch,
                  cfg: TrainConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair loss (B,) and per-pair statistics from summed log-probs (B,).

    A reference-free loss (`simpo`) ignores `ref_chosen`/`ref_rejected` (they may be
    zeros) and its logged rewards are its own, beta * log pi(y | x) / |y|; the others log
    the DPO implicit rewards beta * log(pi / pi_ref) of the summed log-probs (as TRL does).
    """
    free = cfg.loss in REFERENCE_FREE
    chosen_ratio = policy_chosen if free else policy_chosen - ref_chosen
    rejected_ratio = policy_rejected if free else policy_rejected - ref_rejected
    if cfg.loss in LENGTH_AVERAGED:
        loss_chosen = chosen_ratio / batch.n_chosen
        loss_rejected = rejected_ratio / batch.n_rejected
    else:
        loss_chosen, loss_rejected = chosen_ratio, rejected_ratio
    flip = (1.0 - batch.p_chosen).clamp(max=0.49) if cfg.flip_rate_per_pair else cfg.flip_rate
    loss = preference_loss(cfg.loss, loss_chosen, loss_rejected, beta=cfg.beta,
                           p_chosen=batch.p_chosen, flip_rate=flip, gamma=cfg.simpo_gamma)
    if cfg.rpo_alpha > 0:
        loss = loss + cfg.rpo_alpha * nll_loss(-policy_chosen, batch.n_chosen)
    rewards_chosen = cfg.beta * (loss_chosen if free else chosen_ratio).detach()
    rewards_rejected = cfg.beta * (loss_rejected if free else rejected_ratio).detach()
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
                    start_hash: str, precision: str = "fp32", compiled: bool = False) -> str:
    h = hashlib.sha256()
    train = {k: v for k, v in to_dict(cfg).items() if k not in CHECKPOINT_CADENCE}
    if train["loss"] != "simpo":   # SimPO's margin means nothing to the other losses, and
        del train["simpo_gamma"]   # leaving it out lets older checkpoints resume
    # What counts is whether this run compiles (`auto` decides per machine), not the setting.
    del train["compile"]
    # fp32 and eager add nothing, so checkpoints written before either existed still resume.
    extra = ([] if precision == "fp32" else [precision]) + (["compiled"] if compiled else [])
    h.update(json.dumps([train, to_dict(model.lora), start_hash, *extra],
                        sort_keys=True).encode())
    for p in encoded:
        h.update(f"{p.pair_id}:{p.ids_hash}:{p.p_chosen}:{p.weight};".encode())
    return h.hexdigest()[:16]


def make_accelerator(placement: Placement):
    """accelerate's Accelerator on the placement's device: the CPU, or the placement's GPU
    (under a multi-process launch accelerate gives each process its own GPU, and several
    processes without CUDA run DDP over gloo). Mixed precision is ours, not accelerate's
    (`placement.autocast()` around the forwards): the reference pass runs under the very
    same autocast, and accelerate's process-wide state refuses a second precision later
    in the same process."""
    from accelerate import Accelerator

    if placement.device.startswith("cuda") and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        torch.cuda.set_device(placement.device)
    return Accelerator(mixed_precision="no", cpu=placement.device == "cpu")


def train_dpo(pairs: list[Pair], *, out_dir: str | Path, policy: str, reference: str = "",
              model_cfg: ModelConfig, data_cfg: DataConfig, train_cfg: TrainConfig,
              progress: bool = True, placement: Placement | None = None,
              on_log: Callable[[dict], None] | None = None,
              restart: bool = False) -> TrainResult:
    """Train `policy` on `pairs` with DPO against `reference` (default: the policy itself),
    placed as `placement` says (default: as `model_cfg` asks, `placement_for`).
    `on_log(metrics)` is called (main process) with every train_log.jsonl line as written,
    its timing included: the hook experiment trackers hang on (`alignloop.tracking`).

    Writes OUT/reference_logps.parquet, OUT/train_log.jsonl (the step metrics),
    OUT/train_timing.jsonl (each logged step's seconds and tokens/s), OUT/policy/ and, while
    running, OUT/checkpoint/ (every `save_every_s` seconds and/or `save_every` steps;
    removed at the end). A rerun with the same arguments resumes from the checkpoint
    and ends with the weights and step log of an uninterrupted run; a checkpoint of
    another run (other pairs, settings or starting weights) is refused before any work,
    or deleted with `restart`.
    """
    from accelerate.utils import set_seed

    placement = placement or placement_for(model_cfg)
    compiled = resolve_compile(train_cfg.compile, placement)   # refuses `true` it cannot do
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    accelerator = make_accelerator(placement)
    set_seed(train_cfg.seed)
    show = progress and accelerator.is_main_process

    # 1. Load and prepare: token ids, then the reference log-probs. The reference
    #    pass comes first and its model is freed: training never holds it.
    tokenizer = load_tokenizer(policy, data_cfg.chat_template)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded, skipped = encode_pairs(pairs, tokenizer, max_length=data_cfg.max_length,
                                    max_prompt_length=data_cfg.max_prompt_length,
                                    truncation=data_cfg.truncation, on_invalid=data_cfg.on_invalid,
                                    progress=show)
    model = load_model(policy, dtype=placement.weights_dtype, device=accelerator.device)
    start_hash = weights_hash(model)
    # A checkpoint OUT holds must be this run's, known before the reference pass writes
    # anything (with `restart`, one of another run is deleted and training starts over).
    fingerprint = run_fingerprint(encoded, train_cfg, model_cfg, start_hash, placement.precision,
                                  compiled)
    if accelerator.is_main_process:
        check_checkpoint(out_dir, fingerprint=fingerprint, discard=restart)
    accelerator.wait_for_everyone()
    t_ref = time.perf_counter()
    if train_cfg.loss in REFERENCE_FREE:  # SimPO: no reference model, no reference pass
        ref = ReferenceLogps(torch.zeros(len(encoded)), torch.zeros(len(encoded)), "", False)
    else:
        ref = _reference_pass(accelerator, model, start_hash, encoded,
                              reference=reference or policy, policy=policy, placement=placement,
                              pad_id=pad_id, batch_size=max(2 * train_cfg.batch_size, 8),
                              path=out_dir / "reference_logps.parquet", progress=show)
    reference_seconds = time.perf_counter() - t_ref

    # 2. Build the trainable policy, its optimiser and the whole run's data order,
    #    then continue from OUT/checkpoint if an identical run left one.
    run = _build_run(accelerator, model, [p.length for p in encoded], model_cfg.lora, train_cfg,
                     placement, compiled=compiled)
    start = _resume(accelerator, out_dir, fingerprint=fingerprint, total=run.total)

    # 3. The step loop.
    t_train = time.perf_counter()
    metrics = _train_steps(run, encoded, ref, pad_id, train_cfg, start=start, out_dir=out_dir,
                           fingerprint=fingerprint, progress=show, on_log=on_log)
    train_seconds = time.perf_counter() - t_train

    # 4. Save the policy; the mid-run checkpoint is no longer needed.
    policy_dir = _save_trained(accelerator, run.scorer, tokenizer, out_dir / "policy", base=policy)
    remove_checkpoint(accelerator, out_dir)
    result = TrainResult(policy_dir=policy_dir, steps=run.total, metrics=metrics,
                         reference_hash=ref.reference_hash, reference_reused=ref.reused,
                         skipped=skipped, n_pairs=len(encoded),
                         reference_seconds=reference_seconds, train_seconds=train_seconds,
                         placement=placement.to_dict())
    # The heap kept the training's peak (allocator.py); the stages after it do not need it.
    del run, model
    gc.collect()
    release_freed_memory()
    return result


def _reference_pass(accelerator, model, model_hash: str, encoded: list[EncodedPair], *,
                    reference: str, policy: str, placement: Placement, pad_id: int,
                    batch_size: int, path: Path, progress: bool) -> ReferenceLogps:
    """Reference log-probs of `encoded`, cached at `path` (the main process computes and
    writes them first; the others then read them). A reference other than the policy
    is loaded like the policy, used and freed; the policy itself is scored as loaded."""
    kw = dict(path=path, pad_id=pad_id, batch_size=batch_size, device=accelerator.device,
              placement=placement, progress=progress, write=accelerator.is_main_process)
    with accelerator.main_process_first():
        if reference == policy:
            return reference_logps(model, encoded, reference_hash=model_hash, **kw)
        ref_model = load_model(reference, dtype=placement.weights_dtype, device=accelerator.device)
        ref = reference_logps(ref_model, encoded, reference_hash=weights_hash(ref_model), **kw)
        del ref_model
        gc.collect()
        return ref


@dataclass
class _Run:
    """What the step loop works on, built once by `_build_run`."""

    accelerator: Any
    scorer: Any        # PairScorer around the policy, wrapped by accelerate (DDP/FSDP)
    params: list       # the trainable parameters: all weights, or only the LoRA adapters
    optimizer: Any
    scheduler: Any
    steps: list[list[list[int]]]  # steps -> micro-batches (all processes) -> pair indices
    per_epoch: int     # steps in one epoch, for the logged `epoch`
    total: int         # steps to run: max_steps when set, else epochs * per_epoch
    placement: Placement  # its autocast wraps every forward


def _build_run(accelerator, model, lengths: list[int], lora: LoraConfig,
               cfg: TrainConfig, placement: Placement, *, compiled: bool = False) -> _Run:
    """The trainable policy (LoRA if enabled; its decoder layers compiled if `compiled`,
    `resolve_compile`), AdamW, the data order and the LR schedule, prepared by accelerate;
    the scheduler is registered so checkpoints carry it."""
    if lora.enabled:
        model = apply_lora(model, lora, seed=cfg.seed)
    model.config.use_cache = False
    if compiled:
        compile_layers(model)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora.enabled and (compiled or cfg.gradient_checkpointing):
        # frozen embeddings: checkpointed layers still need grads; a compiled first layer
        # would otherwise get an input without grad and compile a second graph for it
        model.enable_input_require_grads()
    model.train()
    scorer = PairScorer(model)
    params = [p for p in scorer.parameters() if p.requires_grad]
    keep_freed_memory()
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                  fused=_fused_adamw(params))

    steps, per_epoch, total = _plan_run(lengths, cfg, world_size=accelerator.num_processes)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, warmup=cfg.warmup_steps, total=total, schedule=cfg.lr_schedule))
    scorer, optimizer = accelerator.prepare(scorer, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    return _Run(accelerator, scorer, params, optimizer, scheduler, steps, per_epoch, total,
                placement)


def _fused_adamw(params: list) -> bool:
    """AdamW's fused kernel (one pass over each tensor) where torch has it for every
    parameter: floating point, on the CPU or a GPU. Off a GPU torch would otherwise pick
    its per-tensor loop, about ten times slower on a CPU (0.77 s against 0.08 s per step
    for all SmolLM2-135M weights, measured on a 2-core Xeon); the update is the same."""
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def _plan_run(lengths: list[int], cfg: TrainConfig,
              world_size: int) -> tuple[list[list[list[int]]], int, int]:
    """(data order, steps per epoch, steps to run): `epochs` epochs, or exactly
    `max_steps` steps; ValueError when there are too few pairs for one step.

    `max_steps` overrides `epochs`, as in the Hugging Face Trainer: the pairs are
    passed over again (each pass in a new seeded order) until it is reached, and
    the last pass may stop part way."""
    def plan(epochs: int) -> list[list[list[int]]]:
        return plan_steps(lengths, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                          world_size=world_size, epochs=epochs, seed=cfg.seed,
                          group_by_length=cfg.group_by_length)

    per_epoch = len(plan(1))
    if per_epoch == 0:
        raise ValueError(f"{len(lengths)} pairs are fewer than one step needs "
                         f"({cfg.batch_size * cfg.grad_accum * world_size}) with {world_size} processes")
    epochs = math.ceil(cfg.max_steps / per_epoch) if cfg.max_steps else cfg.epochs
    steps = plan(epochs)[:cfg.max_steps or None]
    return steps, per_epoch, len(steps)


def _resume(accelerator, out_dir: Path, *, fingerprint: str, total: int) -> int:
    """Restore OUT/checkpoint, and the step log saved with it, if this run left one;
    return the number of finished steps (0 for a fresh start, whose old logs are removed).
    The timing log keeps the steps up to the checkpoint's (a killed run may have logged
    steps after it, which are trained again)."""
    log_path, timing_path = out_dir / TRAIN_LOG, out_dir / TRAIN_TIMING
    start = load_checkpoint(accelerator, out_dir, fingerprint=fingerprint, log_path=log_path)
    if accelerator.is_main_process:
        if start:
            log.info("resuming from step %d of %d", start, total)
            _keep_steps(timing_path, start)
        else:
            log_path.unlink(missing_ok=True)
            timing_path.unlink(missing_ok=True)
    return start


def _keep_steps(path: Path, last: int) -> None:
    """Keep the rows of the JSONL step log at `path` up to step `last` (atomic rewrite)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            pass                      # a line the kill cut short
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(x + "\n" for x in kept))
    os.replace(tmp, path)


def _train_steps(run: _Run, encoded: list[EncodedPair], ref: ReferenceLogps, pad_id: int,
                 cfg: TrainConfig, *, start: int, out_dir: Path, fingerprint: str,
                 progress: bool, on_log: Callable[[dict], None] | None = None) -> dict:
    """Steps `start` .. `run.total`: step, log every `log_every` steps (and the last),
    checkpoint every `save_every` steps and `save_every_s` seconds (not after the last:
    the policy is saved then). Returns the last step's metrics."""
    from alignloop.progress import tqdm

    main = run.accelerator.is_main_process
    fail_at = int(os.environ.get(FAIL_AT_STEP_ENV, "0"))
    bar = tqdm(total=run.total, initial=start, desc="train", unit="step", disable=not progress)
    saves = CheckpointSchedule(run.accelerator, every_steps=cfg.save_every, every_s=cfg.save_every_s)
    log_path, timing_path = out_dir / TRAIN_LOG, out_dir / TRAIN_TIMING
    metrics: dict = {}
    for step in range(start, run.total):
        t0 = time.perf_counter()
        totals = _optimizer_step(run, run.steps[step], encoded, ref, pad_id, cfg)
        elapsed = time.perf_counter() - t0
        metrics = {"step": step + 1, "epoch": round((step + 1) / run.per_epoch, 4), **totals,
                   "tokens_per_s": totals["tokens"] / elapsed, "step_time_s": elapsed}
        if main and ((step + 1) % cfg.log_every == 0 or step + 1 == run.total):
            with open(log_path, "a") as f:
                f.write(json.dumps({k: v for k, v in metrics.items() if k not in TIMING_KEYS})
                        + "\n")
            with open(timing_path, "a") as f:
                f.write(json.dumps({"step": step + 1, "tokens": totals["tokens"],
                                    **{k: metrics[k] for k in TIMING_KEYS}}) + "\n")
            if on_log is not None:
                on_log(metrics)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics['rewards/accuracy']:.2f}")
        if step + 1 < run.total and saves.due(step + 1):
            save_checkpoint(run.accelerator, out_dir, step=step + 1, fingerprint=fingerprint,
                            log_path=log_path)
            saves.saved()
        if fail_at and step + 1 == fail_at:
            raise RuntimeError(f"fault injection: {FAIL_AT_STEP_ENV}={fail_at}")
    bar.close()
    return metrics


def _optimizer_step(run: _Run, micro_batches: list[list[int]], encoded: list[EncodedPair],
                    ref: ReferenceLogps, pad_id: int, cfg: TrainConfig) -> dict:
    """One optimiser step. This process runs its share of the step's micro-batches
    (every `world`-th), accumulating gradients; then clip, step, zero.

    The loss is the weighted mean of the per-pair losses over all the step's pairs,
    sum w_i l_i / sum w_i (`losses.weighted_mean`). Returns that loss, the (unweighted)
    mean statistics over the step's pairs (summed over processes), the gradient norm, the
    learning rate used, pairs and tokens.
    """
    accelerator, scorer = run.accelerator, run.scorer
    world, rank = accelerator.num_processes, accelerator.process_index
    micro = micro_batches[rank::world]
    n_pairs = sum(len(m) for m in micro_batches)
    total_weight = sum(encoded[i].weight for m in micro_batches for i in m)
    sums = torch.zeros(8, dtype=torch.float64)  # loss, 6 stats, tokens
    for j, idx in enumerate(micro):
        batch = collate([encoded[i] for i in idx], pad_id).to(accelerator.device)
        sync = contextlib.nullcontext() if j == len(micro) - 1 else accelerator.no_sync(scorer)
        with sync:
            with run.placement.autocast():
                chosen, rejected = score_batch(scorer, batch)
                loss_vec, stats = dpo_objective(chosen, rejected, ref.chosen[idx].to(chosen.device),
                                                ref.rejected[idx].to(chosen.device), batch, cfg)
                # Weighted mean over the step's pairs on all processes; DDP averages
                # gradients over processes, hence the factor `world`.
                loss = weighted_mean(loss_vec, batch.weight, total_weight) * world
            accelerator.backward(loss)
        sums[0] += float(weighted_mean(loss_vec.detach(), batch.weight, total_weight))
        for k, v in enumerate(stats.values(), start=1):
            sums[k] += float(v.sum())
        sums[7] += batch.n_tokens
    if cfg.max_grad_norm > 0:
        grad_norm = accelerator.clip_grad_norm_(run.params, cfg.max_grad_norm)
    else:
        grad_norm = torch.linalg.vector_norm(
            torch.stack([p.grad.norm() for p in run.params if p.grad is not None]))
    lr = run.scheduler.get_last_lr()[0]
    _refuse_non_finite(grad_norm, sums[0], cfg)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    sums = accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu()
    totals = {"loss": float(sums[0])}
    totals.update({k: float(sums[i] / n_pairs) for i, k in enumerate(stats, start=1)})
    totals.update({"grad_norm": float(grad_norm), "lr": lr, "pairs": n_pairs, "tokens": int(sums[7])})
    return totals


def _refuse_non_finite(grad_norm: torch.Tensor, local_loss: torch.Tensor, cfg: TrainConfig) -> None:
    """Stop before an optimizer step with a non-finite gradient norm (the same on every
    process: clipping reduces it over them) or, on one process, a non-finite loss: such a
    step would write NaN into every weight and the run would save a broken policy."""
    if math.isfinite(float(grad_norm)) and math.isfinite(float(local_loss)):
        return
    from alignloop.errors import TrainingDiverged

    raise TrainingDiverged(
        f"training diverged: loss {float(local_loss):.4g}, gradient norm {float(grad_norm):.4g} "
        f"(train.learning_rate {cfg.learning_rate:g}, train.beta {cfg.beta:g}); the step was "
        "not applied and no policy was saved. Lower the learning rate, check the pairs' "
        "weights, or train in fp32 (model.precision: fp32)")


def _save_trained(accelerator, scorer, tokenizer, policy_dir: Path, *, base: str) -> Path:
    """Save the trained policy (its adapter and `base`, for LoRA) from the main process once
    all are done."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        trained = accelerator.unwrap_model(scorer).model
        trained.config.use_cache = True  # for generation from the saved policy
        save_policy(trained, tokenizer, policy_dir, base=base)
    return policy_dir


__all__ = ["train_dpo", "dpo_objective", "lr_factor", "TrainResult", "ReferenceLogps"]
