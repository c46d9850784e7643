"""Policy weights: LoRA adapters, saving a trained policy, hashing weights.

The final checkpoint of a round is a Hugging Face directory that the next round and
the generators load with `alignloop.models.load_model` (`save_policy`): full weights,
or for a LoRA policy only its adapter and the model it applies to, merged when
loaded. `weights_hash` keys the reference log-prob cache and the run fingerprint,
so a LoRA model hashes as its merged weights, which is what it loads as.
(Resumable mid-run state is in `checkpoints.py`.)
"""

from __future__ import annotations

import copy
import hashlib
import sys
from pathlib import Path

import torch
from alignloop.artifacts import atomic_dir
from alignloop.config import LoraConfig


def apply_lora(model, lora: LoraConfig, seed: int):
    """Wrap `model` with LoRA adapters (peft), initialised from `seed`; global RNG untouched.

    peft creates the adapter matrices on CPU before moving them to the base
    layer's device, so seeding inside a forked RNG makes them reproducible.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_config = PeftLoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM",
    )
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        return get_peft_model(model, peft_config)


def is_peft_model(model) -> bool:
    peft = sys.modules.get("peft")  # a peft model implies peft is imported
    return peft is not None and isinstance(model, peft.PeftModel)


def merged_copy(model):
    """A plain transformers model with the adapters merged in; `model` is not modified."""
    with torch.no_grad():
        return copy.deepcopy(model).merge_and_unload()


def save_policy(model, tokenizer, out_dir: Path, *, base: str = "") -> Path:
    """Save a policy in HF format (safetensors), atomically, and return `out_dir`.

    A peft model saves its adapter only (a PEFT adapter directory) and records `base`,
    the model reference it was trained from, in `alignloop_base.json`: the round's
    artifact is megabytes, not a full model. `load_model(out_dir)` merges it back;
    `merged_model_dir` builds full weights on disk for a backend that needs them.
    """
    import json

    from alignloop.models import ADAPTER_BASE_FILE, base_reference

    out_dir = Path(out_dir)
    if is_peft_model(model) and not base:
        raise ValueError("save_policy: an adapter policy needs the reference of its base model")
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        if is_peft_model(model):
            _sort_target_modules(tmp / "adapter_config.json")
            record = {"base": base_reference(base, out_dir)}
            (tmp / ADAPTER_BASE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        tokenizer.save_pretrained(tmp)
    return out_dir


def _sort_target_modules(path: Path) -> None:
    """peft writes `target_modules` from a set, in an order that changes from process to
    process (string hashing is salted); sorted, the same policy gives the same bytes."""
    import json

    config = json.loads(path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _merged_lora_state(model):
    """(name, tensor) pairs of a plain-LoRA peft model's merged weights, in the
    order `merged_copy(model).state_dict()` has them, built one layer at a time
    (no second copy of the model). None for adapter kinds it does not handle."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    layers = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            if (module.merged or getattr(module, "lora_variant", None)
                    or any(getattr(module, "lora_bias", {}).values())):
                return None  # DoRA and other variants merge differently
            layers[f"{name}.base_layer.weight"] = module
        elif "modules_to_save" in name:
            return None

    def merged():
        for key, tensor in base.state_dict().items():
            if ".lora_" in key:
                continue
            layer = layers.get(key)
            if layer is not None:  # W + delta, as peft's own (unsafe) merge computes it
                for adapter in layer.active_adapters:
                    if adapter in layer.lora_A:
                        tensor = tensor + layer.get_delta_weight(adapter)
            yield key.replace(".base_layer.", "."), tensor

    return merged()


def weights_hash(model) -> str:
    """SHA-256 of the floating-point weights: name, dtype, shape and bytes of each
    state-dict entry in state-dict order (tied tensors under each of their names).

    A peft model hashes as its merged weights, i.e. like the checkpoint that
    `save_policy` writes for it.
    """
    items = model.state_dict().items()
    if is_peft_model(model):
        items = _merged_lora_state(model) or merged_copy(model).state_dict().items()
    h = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in items:
            if not tensor.is_floating_point():
                continue
            h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
            flat = tensor.detach().to("cpu").contiguous().reshape(-1)
            h.update(flat.view(torch.uint8).numpy())
    return h.hexdigest()
