"""The `vllm` backend: vLLM's offline `LLM` engine in a child process for the round.

The engine runs in a spawned child so that all its GPU memory is returned when
the round's sampling ends and training can have the GPU. We render and
tokenise prompts ourselves (the same chat template and ids as the `hf`
backend) and send token-id prompts; each sample is its own request with n=1
and its own seed (so a sample depends on (seed, prompt id, index) exactly as
with `hf`), and vLLM's prefix caching shares the prompt's KV across them.
`logprobs=0` asks for the sampled token's log-prob only; vLLM's default
`logprobs_mode` is the raw model distribution (before temperature and
filtering), which is what our `Completion.token_logprobs` promises. vLLM keeps
a sample's end token (EOS) in `token_ids`, with its log-prob, and leaves it out of
the text: the `Completion` record as the `hf` backend writes it.

Written against vLLM's documented API (`LLM`, `SamplingParams`,
`RequestOutput`); only the request building and output mapping are tested on
CPU here. A real-engine test sits under the `gpu` marker.
"""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

from alignloop.generation import (
    Completion,
    GenerationError,
    PromptItem,
    SamplingParams,
    sample_seed,
)
from alignloop.generation.prompts import encode_prompt


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
                    "top_k": params.top_k if params.top_k > 0 else -1,  # vLLM: -1 disables
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


def _run_engine(model_path: str, engine: dict[str, Any], requests: list[dict[str, Any]]) -> list[Completion]:
    """In the child process: start vLLM, run every request, map outputs to Completions."""
    from vllm import LLM
    from vllm import SamplingParams as VSamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=model_path, **engine)
    outs = llm.generate([TokensPrompt(prompt_token_ids=r["prompt_token_ids"]) for r in requests],
                        [VSamplingParams(**r["sampling"]) for r in requests], use_tqdm=True)
    return [completion_from_output(r, o.outputs[0]) for r, o in zip(requests, outs, strict=True)]


class VLLMGenerator:
    name = "vllm"

    def __init__(self, model: str, *, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.85, dtype: str = "auto",
                 truncation: str = "error", max_model_len: int | None = None,
                 chat_template: str = "auto"):
        from alignloop.models import load_tokenizer, merged_model_dir

        # full weights on disk: a LoRA round's policy is merged once into policy/merged/
        self.model_path = str(merged_model_dir(model))
        self.tokenizer = load_tokenizer(model, chat_template)
        self.truncation = truncation
        if max_model_len is None:
            from transformers import AutoConfig

            max_model_len = getattr(AutoConfig.from_pretrained(self.model_path),
                                    "max_position_embeddings", 2048)
        self.context = max_model_len
        self.engine = {"tensor_parallel_size": tensor_parallel_size,
                       "gpu_memory_utilization": gpu_memory_utilization, "dtype": dtype,
                       "enable_prefix_caching": True, "max_model_len": max_model_len}

    def encode(self, items: list[PromptItem], params: SamplingParams) -> list[list[int]]:
        budget = self.context - params.max_new_tokens
        return [encode_prompt(self.tokenizer, it, budget, self.truncation) for it in items]

    def sample(self, prompts: list[PromptItem], params: SamplingParams) -> list[Completion]:
        if not prompts:
            raise GenerationError("no prompts to generate from")
        requests = build_requests(prompts, self.encode(prompts, params), params)
        with mp.get_context("spawn").Pool(1) as pool:  # GPU memory is freed when the child exits
            return pool.apply(_run_engine, (self.model_path, self.engine, requests))
