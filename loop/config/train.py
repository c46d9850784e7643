"""The `train:` section: the DPO objective and the optimiser."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from alignloop.config.base import require


@dataclass(frozen=True)
class TrainConfig:
    loss: Literal["sigmoid", "ipo", "hinge", "soft", "rdpo", "dpo_norm", "simpo"] = "sigmoid"
    """Preference objective (see alignloop.training.losses): `sigmoid` DPO,
    `ipo`, `hinge` (SLiC), `soft` (cross-entropy against p_chosen), `rdpo`
    (robust DPO under label flips), `dpo_norm` (DPO on per-token log-ratios,
    open-instruct's default), `simpo` (SimPO: reference-free, length-normalised, with
    margin `simpo_gamma`; no reference pass is run). Every loss is averaged over a step's
    pairs weighted by their `weight` column (sum w_i l_i / sum w_i)."""
    beta: float = 0.1
    """KL strength: the implicit reward is beta * log(pi / pi_ref). The length-normalised
    losses (`ipo`, `dpo_norm`, `simpo`) see per-token values and want a larger beta:
    about 5 for `dpo_norm` (Tulu 3), 2-10 for `simpo` (the SimPO paper)."""
    simpo_gamma: float = 0.5
    """`simpo`: target reward margin gamma (the loss is -log sigmoid(beta * avg-logp gap -
    gamma)); the SimPO paper sets gamma / beta around 0.5. TRL's CPO default is 0.5."""
    flip_rate: float = 0.1
    """`rdpo`: assumed label flip rate epsilon in [0, 0.5)."""
    flip_rate_per_pair: bool = False
    """`rdpo`: use 1 - p_chosen of each pair as its flip rate instead of `flip_rate`."""
    rpo_alpha: float = 0.0
    """Weight of an added NLL term on the chosen response (RPO); 0 disables it."""
    learning_rate: float = 5e-6
    """Peak learning rate (AdamW)."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "linear"
    """Decay after warmup: constant, linear to 0, or cosine to 0."""
    warmup_steps: int = 0
    """Linear warmup steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables clipping)."""
    batch_size: int = 8
    """Pairs per forward pass per process (micro-batch)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step. Pairs per step = batch_size * grad_accum * processes."""
    epochs: int = 1
    """Passes over the pairs (ignored when `max_steps` is set)."""
    max_steps: int = 0
    """Run exactly this many optimizer steps, overriding `epochs` (as `max_steps` does in
    the Hugging Face Trainer): with fewer pairs than that needs, they are passed over again,
    each pass in a new seeded order; with more, training stops part way through a pass.
    0: run `epochs` epochs."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass: a fraction of
    the activation memory for about a third more compute. Off: speed first."""
    compile: bool | Literal["auto"] = False
    """Compile the policy's decoder layers with `torch.compile` for training (fused
    elementwise kernels; `alignloop.training.compile`). On a 2-core AMX Xeon in bf16-mixed,
    1.31x eager's tokens/s (full fine-tune) and 1.60x (LoRA); the first step compiles
    (24-53 s there the first time, 1-2 s from inductor's cache after). Needs a C++
    compiler on a CPU: `true` is refused without one; `auto` compiles where it was
    measured to pay (bf16-mixed on a CPU) when a compiler is there, else trains eager. The
    reference pass, sampling and evaluation stay eager."""
    group_by_length: bool = True
    """Put pairs of similar length in the same step to cut padding (order stays seeded)."""
    seed: int = 0
    """Seed for data order and initialisation of new weights (LoRA)."""
    log_every: int = 1
    """Write a train_log.jsonl line every N optimizer steps."""
    save_every: int = 0
    """Also save a resumable checkpoint (OUT/checkpoint/) every N optimizer steps (0: only
    by time, `save_every_s`)."""
    save_every_s: float = 600.0
    """Save a resumable checkpoint (OUT/checkpoint/) once this many seconds of training
    have passed since the last one, so an interrupted long train resumes losing at most
    that much; a train shorter than this writes none. 0: only by steps, `save_every`.
    Neither setting changes the result, and a run may resume with other values."""

    def __post_init__(self) -> None:
        require(self.beta > 0, "beta", "must be > 0")
        require(self.simpo_gamma >= 0, "simpo_gamma", "must be >= 0")
        require(0.0 <= self.flip_rate < 0.5, "flip_rate", "must be in [0, 0.5)")
        require(self.rpo_alpha >= 0, "rpo_alpha", "must be >= 0")
        require(self.learning_rate > 0, "learning_rate", "must be > 0")
        require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        require(self.max_grad_norm >= 0, "max_grad_norm", "must be >= 0")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.grad_accum >= 1, "grad_accum", "must be >= 1")
        require(self.epochs >= 1, "epochs", "must be >= 1")
        require(self.max_steps >= 0, "max_steps", "must be >= 0")
        require(self.log_every >= 1, "log_every", "must be >= 1")
        require(self.save_every >= 0, "save_every", "must be >= 0")
        require(self.save_every_s >= 0, "save_every_s", "must be >= 0")
