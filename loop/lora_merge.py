"""Merge a plain LoRA adapter into a model's weights, without building a PEFT model.

Loading a LoRA round's policy merges its adapter chain (one adapter per round) into the
starting model, and the loop loads policies often: the reference pass, training, the
eval samplers and scorers. PEFT's `PeftModel.from_pretrained(...).merge_and_unload()`
first wraps every target layer (bookkeeping that walks the module tree for each of them),
then merges: about 0.7 s per adapter for SmolLM2-135M, of which the arithmetic is a tenth.
`merge_lora` reads the adapter file and adds `(B @ A) * scale` to each target weight,
the same expression, in the same order and dtype as PEFT's `get_delta_weight`, so the
merged weights are equal bit for bit (tests/test_models.py checks it against PEFT).

Only plain LoRA takes this path: `merge_lora` returns False, changing nothing, for
any adapter config with a variant or option it does not implement (DoRA, rsLoRA,
fan-in-fan-out, bias, per-module ranks or alphas, extra modules to save, ...), and the
caller merges with PEFT.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
# config keys that must have their "plain LoRA" value for the fast path
_PLAIN = {"peft_type": "LORA", "bias": "none", "lora_bias": False, "fan_in_fan_out": False,
          "use_dora": False, "use_rslora": False, "use_qalora": False}
_EMPTY = ("alpha_pattern", "rank_pattern", "modules_to_save", "target_parameters",
          "trainable_token_indices", "layer_replication", "alora_invocation_tokens",
          "use_bdlora", "arrow_config")


def plain_lora_scale(config: dict) -> float | None:
    """lora_alpha / r of a plain LoRA config, or None when it has anything else."""
    if any(config.get(k, v) != v for k, v in _PLAIN.items()):
        return None
    if any(config.get(k) for k in _EMPTY):
        return None
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(r, int) or r <= 0 or not isinstance(alpha, (int, float)):
        return None
    return alpha / r


def merge_lora(model: torch.nn.Module, adapter_dir: str | Path) -> bool:
    """Add the plain LoRA adapter in `adapter_dir` to `model`'s weights in place; True when
    merged, False (nothing changed) when the adapter is not plain LoRA on linear weights
    of `model` of the right shapes."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    try:
        config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError):
        return False
    scale = plain_lora_scale(config)
    weights_file = adapter_dir / ADAPTER_WEIGHTS
    if scale is None or not weights_file.is_file():
        return False
    tensors = load_file(str(weights_file))
    updates = []
    for key in tensors:
        if not key.endswith(".lora_A.weight"):
            if not key.endswith(".lora_B.weight"):
                return False       # something besides LoRA matrices
            continue
        name = key.removeprefix(PREFIX).removesuffix(".lora_A.weight")
        a, b = tensors[key], tensors.get(f"{PREFIX}{name}.lora_B.weight")
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            return False
        weight = getattr(layer, "weight", None)
        if (b is None or not isinstance(layer, torch.nn.Linear) or weight is None
                or weight.shape != (b.shape[0], a.shape[1]) or b.shape[1] != a.shape[0]):
            return False
        updates.append((weight, a, b))
    if not updates or 2 * len(updates) != len(tensors):
        return False
    with torch.no_grad():
        for weight, a, b in updates:
            a, b = a.to(weight.dtype), b.to(weight.dtype)
            weight.add_((b @ a) * scale)     # PEFT: weight.data += (B @ A) * scaling
    return True
