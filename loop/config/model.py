"""The `model:` and `reference:` sections: the starting policy (LoRA included) and the DPO reference."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from alignloop.config.base import require

DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"

@dataclass(frozen=True)
class LoraConfig:
    enabled: bool = False
    """Train LoRA adapters (peft) instead of all weights. A round's `policy/` holds the adapter
    (and the model it applies to); stages merge it when they load it, and only vLLM gets a
    merged copy on disk (`policy/merged/`, removed by `alignloop prune`)."""
    r: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA input; 0 keeps training deterministic."""
    target_modules: tuple[str, ...] = (
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    )
    """Names of the linear layers that get adapters."""

    def __post_init__(self) -> None:
        require(self.r >= 1, "r", "must be >= 1")
        require(self.alpha > 0, "alpha", "must be > 0")
        require(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        require(len(self.target_modules) > 0, "target_modules", "must name at least one module")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "builtin:smollm2-135m-instruct"
    """Starting policy: a Hugging Face id, a local directory, or a built-in
    (`builtin:smollm2-135m-instruct`, `builtin:tiny-random`)."""
    device: str = "auto"
    """Where every stage runs its models (training, reference, `hf` sampling, judges,
    evaluation): `auto` (the first CUDA GPU if there is one, else the CPU), `cpu`, `cuda`
    or `cuda:N`."""
    precision: Literal["auto", "fp32", "bf16-mixed", "bf16"] = "auto"
    """`fp32`; `bf16-mixed` (fp32 master weights, bf16 matmuls under autocast; sampling
    and scoring with bf16 weights); `bf16` (bf16 weights everywhere). Log-probs are fp32
    in all three. `auto`: bf16-mixed on a GPU with bf16, and on a CPU with bf16 units where
    a matmul probe (cached per machine) measures bf16 at least 2x fp32; fp32 elsewhere.
    Replaces `model.dtype` (float32 -> fp32, bfloat16 -> bf16-mixed)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Parameter-efficient training; see LoraConfig."""

    def __post_init__(self) -> None:
        require(re.fullmatch(DEVICE_PATTERN, self.device) is not None, "device",
                f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass(frozen=True)
class ReferenceConfig:
    model: str = ""
    """Reference model for the DPO log-ratio. Empty: the starting policy (`model.name`).
    In a loop this is round 0's reference; later rounds follow `mode`."""
    mode: Literal["previous", "base", "ema"] = "previous"
    """Reference of round k >= 1: round k-1's policy (`previous`), always the starting model
    (`base`), or an exponential moving average of the policies so far (`ema`)."""
    ema_weight: float = 0.5
    """`ema`: reference_k = ema_weight * reference_(k-1) + (1 - ema_weight) * policy_(k-1)."""

    def __post_init__(self) -> None:
        require(0 <= self.ema_weight < 1, "ema_weight", "must be in [0, 1)")
