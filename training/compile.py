"""`train.compile`: the policy's decoder layers compiled by `torch.compile` for training.

A bf16-mixed step on a CPU spends more time between its matmuls than in them: autocast's
casts, the norms in float32, the MLP's and the residual's elementwise ops, each a pass
over memory (benchmarks/dpo_step_profile.py: elementwise 38% of a full fine-tune's step
on an AMX Xeon, 54% with LoRA; matmuls 25%). Inductor fuses those passes. On the 2-core
AMX Xeon (SmolLM2-135M, 8 pairs a step; README, "On the Intel Xeon with AMX"), compiled
bf16-mixed ran 1.31x eager's tokens/s for a full fine-tune and 1.60x with LoRA
(benchmarks/dpo_throughput.py), fp32 1.18-1.19x; over warm passes 1.31x and 1.21x
(benchmarks/dpo_passes.py --compile).

Each decoder layer (the model's `_no_split_modules`, e.g. LlamaDecoderLayer) is compiled
with dynamic shapes, so packed batches of every length share one graph; the embedding,
the LM head and the log-probs (`token_logps`) stay eager. Every layer shares that graph
too: with LoRA the trainer makes the frozen embedding's output require grad
(`_build_run`), else the first layer's input would differ from the others' and compile a
second graph (cold first step 60 s -> 40 s, LoRA, bf16, 2 cores). The first step pays the
compile: 24-40 s on 2 cores the first time, 1-2 s once inductor's on-disk cache
(TORCHINDUCTOR_CACHE_DIR, by default under the system's temporary folder) holds the
graphs. The reference pass, sampling and evaluation stay eager, so a compiled policy's
first-step log-probs differ from its reference's by the rounding of fused kernels
(bf16: 0.1% of the summed log-probs, as much as the batch shape changes them).

On a CPU inductor builds C++, so a compiler must be on PATH (`g++`, or `$CXX`); without
one `true` is refused before any work (`check_compile`), naming the setting, and `auto`
(compile where it was measured to pay: bf16-mixed on a CPU) trains eager. Whether a run
compiled is part of its checkpoint fingerprint: a run resumes only as it started.
"""

from __future__ import annotations

import logging

from alignloop.errors import AlignloopError
from torch import nn

log = logging.getLogger("alignloop.training")


class CompileUnavailable(AlignloopError, RuntimeError):
    """`train.compile` is on but this machine cannot compile (no C++ compiler)."""


def resolve_compile(setting: bool | str, placement) -> bool:
    """Whether this run compiles: `true` (refused where it cannot: `check_compile`), `false`,
    or `auto`: where it was measured to pay, bf16-mixed on a CPU, when a C++ compiler is
    there (else eager; the choice is logged)."""
    if setting != "auto":
        check_compile(setting, placement.device)
        return bool(setting)
    if not placement.device.startswith("cpu") or placement.precision != "bf16-mixed":
        log.info("train.compile auto: eager (%s on %s; compiling was measured to pay in "
                 "bf16-mixed on a CPU)", placement.precision, placement.device)
        return False
    missing = _missing_compiler()
    log.info("train.compile auto: %s", f"eager ({missing})" if missing else "compiling the decoder layers")
    return not missing


def _missing_compiler() -> str:
    """Why inductor cannot build C++ here, or "" when it can."""
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception as e:  # noqa: BLE001 (inductor's own error types vary by version)
        return f"no C++ compiler found: {type(e).__name__}: {e}"
    return ""


def check_compile(enabled: bool | str, device: str) -> None:
    """Refuse `train.compile: true` where inductor cannot build its kernels: on a CPU it
    needs a C++ compiler (`$CXX` or g++). Called before anything is written; `auto` never
    refuses (it trains eager there)."""
    if enabled is not True or not device.startswith("cpu"):
        return
    missing = _missing_compiler()
    if missing:
        raise CompileUnavailable(
            f"config key 'train.compile': true needs a C++ compiler for torch.compile on a "
            f"CPU ({missing}); install g++ (Debian: apt-get install g++) or set "
            f"train.compile: auto or false")


def compile_layers(model: nn.Module) -> int:
    """Compile each decoder layer of `model` in place (`nn.Module.compile`, dynamic shapes);
    the number compiled. Its state dict, and so what is saved, is unchanged."""
    kinds = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in kinds]
    if not layers:
        raise CompileUnavailable(
            f"config key 'train.compile': found no decoder layer to compile in "
            f"{type(model).__name__} (it names none in _no_split_modules); set "
            f"train.compile: false")
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)
