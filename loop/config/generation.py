"""The `generation:` section: sampling candidates from a policy (hf, vllm, openai backends)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from alignloop.config.base import require


@dataclass(frozen=True)
class GenerationConfig:
    backend: Literal["hf", "vllm", "openai"] = "hf"
    """Backend: `hf` (transformers, CPU or GPU), `vllm` (offline engine in a child
    process; GPU), `openai` (an OpenAI-compatible server such as `vllm serve`)."""
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
    """`hf`: most sequences decoded together (prompts per batch = this // n)."""
    truncation: Literal["error", "keep_end"] = "error"
    """Prompts that leave no room for max_new_tokens in the context: error, or keep their end."""
    tensor_parallel_size: int = 1
    """`vllm`: GPUs per engine (tensor parallel)."""
    gpu_memory_utilization: float = 0.85
    """`vllm`: share of GPU memory the engine may take."""
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
        require(self.concurrency >= 1, "concurrency", "must be >= 1")
        require(self.timeout_s > 0, "timeout_s", "must be > 0")
        require(self.retries >= 0, "retries", "must be >= 0")
        require(self.backend != "openai" or bool(self.base_url), "base_url",
                 "the openai backend needs the server's URL")
