"""The `hf` backend: sampling with transformers by continuous batching, on CPU or GPU.

Up to `max_batch_sequences` samples are decoded together, one token per step. When a
sample ends (an end token, a stop string or `max_new_tokens`) its slot is free; once
`max(n, slots // 8)` slots are free (or nothing else is running), the next pending
samples take them: their prompts are prefilled in one batch (each distinct prompt once,
shared by its samples; only the last position goes through the LM head) and each
prompt's KV is written into its samples' rows of a `SlotCache` (`generation.hf_slots`),
so the batch stays full and no step computes a finished sample. Prompts are taken
longest first. Every sampled token's log-prob under the policy is recorded (the end
token's too: see `Completion`) as a float32 log-softmax of the logits, upcast first;
the weights are in `dtype` (bf16 where the placement says so, `alignloop.placement`).

Each sample draws its tokens from its own seeded generator (one uniform per token,
`draw_tokens` inverts the CDF for all rows at once), so a sample depends on (seed,
prompt id, sample index) and its own logits only: which samples share its steps changes
its logits by float rounding at most (different batch shapes), not its random draws.

A decode step of a plain Llama model (SmolLM2) runs `hf_decode.LlamaStep`: the same
forward written out with fused q|k|v and gate|up matmuls through oneDNN-packed weights,
one fused RMSNorm kernel, rotary angles gathered once per step for all layers, and no
transformers mask/cache plumbing; its prompt prefills (first fill and refills) run
`LlamaStep.prefill`, the same weights over the prompts' tokens packed into one sequence.
In bf16 on a CPU the step attends by matmuls over the cache's window, and the cache then
holds only the columns its live rows need (`WINDOW_CHUNK`; `hf_decode` says why).
Other architectures (`decoder = "model"`) keep the transformers forward for both. The
per-phase profile: `benchmarks/hf_decode_profile.py`.

Why (the previous batch-at-a-time decoder, `benchmarks/hf_batch_reference.py`, under
torch.profiler: SmolLM2-135M fp32, 2 cores, 64 in flight): matmuls 42% of the time, a
per-row `torch.multinomial` over the 49k vocabulary 18%, norm/rotary/residual elementwise
ops ~35%, attention 6%, cache copies < 1%; and rows that had ended (35% of samples end by
EOS before 64 tokens) kept being computed. Side by side this decoder runs 1.47x faster
(README, generation throughput).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch
from alignloop.attention import decoder_mask
from alignloop.generation import (
    Completion,
    GenerationError,
    PromptItem,
    SamplingParams,
    sample_seed,
)
from alignloop.generation.hf_decode import LlamaStep, supports
from alignloop.generation.hf_slots import SlotCache, draw_tokens
from alignloop.generation.prompts import encode_prompt
from alignloop.progress import tqdm

WINDOW_CHUNK = 32
"""Columns the slot cache grows and shrinks by when the step attends over its whole
window (`LlamaStep.window_attention`): fewer than twice this many columns past the
longest live row are computed (masked), and the cache is copied once per this many steps
at most while rows grow."""


@dataclass
class _Running:
    """A sample in flight: its call (in `sample_each`), its prompt's index in that call, its
    index k, its generator."""

    call: int
    prompt: int
    k: int
    seed: int
    rng: torch.Generator
    tokens: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)


class HFGenerator:
    name = "hf"

    def __init__(self, model: str, *, device: str = "cpu", dtype: str = "auto",
                 max_batch_sequences: int = 64, truncation: str = "error", progress: bool = True,
                 chat_template: str = "auto"):
        from alignloop.models import load_model, load_tokenizer

        self.model = load_model(model, dtype=dtype, device=device)
        self.tokenizer = load_tokenizer(model, chat_template)
        self.device = self.model.device
        self.max_batch_sequences = max_batch_sequences
        self.truncation = truncation
        self.progress = progress
        self.context = getattr(self.model.config, "max_position_embeddings", 2048)
        import inspect

        # transformers renamed `past_key_values` to `cache` (the old name goes in 5.40).
        params = inspect.signature(self.model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.stop_ids = {i for i in [*eos, self.tokenizer.eos_token_id] if i is not None}
        # "llama": decode steps by `hf_decode.LlamaStep`; "model": the transformers forward
        self.decoder = "llama" if supports(self.model) else "model"
        self._llama: tuple[tuple, tuple, LlamaStep] | None = None   # see `_llama_step`

    def sample(self, prompts: list[PromptItem], params: SamplingParams) -> list[Completion]:
        return self.sample_each([(prompts, params)])[0]

    @torch.inference_mode()
    def sample_each(self, calls: list[tuple[list[PromptItem], SamplingParams]]) -> list[list[Completion]]:
        """Several `sample` calls decoded as one continuous batch: per call, what
        `sample(prompts, params)` returns, each sample drawn with its own call's settings
        from its own seeded generator (so the same tokens up to float rounding of the batch
        shape). One batch instead of one per call: the long samples that end a call share
        their steps with the next call's, and a prompt used by several calls is prefilled
        once. The evaluation draws its tempered and temperature-1 samples of a policy this
        way (`generation.sample_each`)."""
        if not calls or any(not prompts for prompts, _ in calls):
            raise GenerationError("no prompts to generate from")
        encoded = [[encode_prompt(self.tokenizer, p, self.context - params.max_new_tokens,
                                  self.truncation) for p in prompts] for prompts, params in calls]
        jobs = [(c, i) for c, enc in enumerate(encoded) for i in range(len(enc))]
        order = sorted(jobs, key=lambda j: -len(encoded[j[0]][j[1]]))   # longest first, stable
        pending = deque((c, i, k) for c, i in order for k in range(calls[c][1].n))
        slots = max(1, min(self.max_batch_sequences, len(pending)))
        refill_at = max(max(params.n for _, params in calls), slots // 8)
        max_len = max(len(e) + params.max_new_tokens
                      for enc, (_, params) in zip(encoded, calls, strict=True) for e in enc)
        llama = self._llama_step(max_len) if self.decoder == "llama" else None
        cache = SlotCache(self.model.config.num_hidden_layers, slots, max_len, self.device,
                          chunk=WINDOW_CHUNK if llama and llama.window_attention else None)
        step, prefill = (llama, llama.prefill) if llama else (self._forward, self._prefill)
        running: list[_Running] = []          # row r of the cache is running[r]
        logits = None                         # (rows, V) fp32: each row's next-token logits
        done: dict[tuple[int, int, int], Completion] = {}
        bar = tqdm(total=len(pending), desc="generate", unit="sample", disable=not self.progress)
        while pending or running:
            free = slots - len(running)
            if pending and (free >= refill_at or not running or free >= len(pending)):
                new = [pending.popleft() for _ in range(min(free, len(pending)))]
                fresh = self._admit(cache, [encoded[c][i] for c, i, _ in new], prefill)
                logits = fresh if logits is None else torch.cat([logits, fresh])
                running += [_Running(c, i, k, sd, torch.Generator().manual_seed(sd))
                            for (c, i, k), sd in zip(new, self._seeds(new, calls), strict=True)]
            tokens = self._draw(logits, running, calls)
            reasons = [self._finish_reason(s, calls[s.call][1]) for s in running]
            ended = [r for r, why in enumerate(reasons) if why]
            for r in ended:
                s = running[r]
                done[s.call, s.prompt, s.k] = self._completion(s, reasons[r], *calls[s.call])
            bar.update(len(ended))
            keep = self._compact(cache, running, ended)
            running = [running[r] for r in keep]
            cache.rows = len(running)
            logits = self._decode(step, cache, tokens[keep]) if running else None
        bar.close()
        return [[done[c, i, k] for i in range(len(prompts)) for k in range(params.n)]
                for c, (prompts, params) in enumerate(calls)]

    def _llama_step(self, max_len: int) -> LlamaStep:
        """The model's `LlamaStep`, kept across calls while every weight is the same tensor,
        not changed in place since (its version counter; an edit through `.data` escapes
        it): packing SmolLM2's weights took 1.4-2.9 s a call here, and an evaluation samples
        twice from one generator. A call needing a longer rotary table builds a new one."""
        weights = tuple(self.model.parameters())
        versions = tuple(w._version for w in weights)
        kept = self._llama
        if (kept is None or len(kept[0]) != len(weights) or kept[1] != versions
                or any(a is not b for a, b in zip(kept[0], weights, strict=True))
                or kept[2].max_len < max_len):
            self._llama = kept = (weights, versions, LlamaStep(self.model, max_len))
        return kept[2]

    @staticmethod
    def _seeds(new, calls) -> list[int]:
        return [sample_seed(calls[c][1].seed, calls[c][0][i].prompt_id, k) for c, i, k in new]

    def _admit(self, cache: SlotCache, prompts: list[list[int]], prefill) -> torch.Tensor:
        """Prefill the prompt token ids of new samples (each distinct prompt once) and write
        each sample's prompt KV into the next free row; their first logits (len(prompts), V)."""
        distinct = list(dict.fromkeys(map(tuple, prompts)))
        logits, kv = prefill([list(p) for p in distinct])
        row_of = {p: b for b, p in enumerate(distinct)}
        rows = [row_of[tuple(p)] for p in prompts]
        for j, (p, b) in enumerate(zip(prompts, rows, strict=True)):
            cache.put(cache.rows + j, kv[b], len(p))
        cache.rows += len(prompts)
        return logits[rows]

    def _prefill(self, prompts: list[list[int]]) -> tuple[torch.Tensor, list[list[tuple]]]:
        """The prompts' forward by transformers (any architecture), left-padded in one batch:
        each prompt's next-token logits (N, V) fp32 and its KV per layer, (kv_heads, len,
        head_dim) each, as `LlamaStep.prefill` returns them."""
        P = max(map(len, prompts))
        ids = torch.full((len(prompts), P), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), P), dtype=torch.long)
        for b, p in enumerate(prompts):
            ids[b, P - len(p):] = torch.tensor(p)
            mask[b, P - len(p):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        # A cache built without the config keeps every position of every layer: the one
        # transformers builds keeps only the window of a sliding-window layer, and the slot
        # cache needs each prompt's keys and values whole.
        from transformers import DynamicCache

        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                         use_cache=True, logits_to_keep=1, **{self.cache_kw: DynamicCache()})
        layers = getattr(out, self.cache_kw).layers
        kv = [[(lay.keys[b, :, P - len(p):], lay.values[b, :, P - len(p):]) for lay in layers]
              for b, p in enumerate(prompts)]
        return out.logits[:, -1].float(), kv

    def _draw(self, logits: torch.Tensor, running: list[_Running], calls) -> torch.Tensor:
        """Each row's next token (rows,), drawn with its call's settings, appended with its
        policy log-prob to its sample."""
        lse = torch.logsumexp(logits, -1, keepdim=True)               # (rows, 1)
        by_call: dict[int, list[int]] = {}
        for r, s in enumerate(running):
            by_call.setdefault(s.call, []).append(r)
        if len(by_call) == 1:
            tokens = self._pick(logits, lse, running, calls[running[0].call][1])
        else:
            tokens = torch.empty(len(running), dtype=torch.long, device=logits.device)
            for c, rows in by_call.items():
                at = torch.tensor(rows, device=logits.device)
                tokens[at] = self._pick(logits[at], lse[at], [running[r] for r in rows],
                                        calls[c][1])
        logp = logits.gather(1, tokens[:, None])[:, 0] - lse[:, 0]
        host = torch.stack([tokens.double(), logp.double()]).tolist()   # one sync
        for s, tok, lp in zip(running, host[0], host[1], strict=True):
            s.tokens.append(int(tok))   # an end token too: the policy chose it (as vLLM records)
            s.logps.append(lp)
        return tokens

    @staticmethod
    def _pick(logits: torch.Tensor, lse: torch.Tensor, running: list[_Running], params) -> torch.Tensor:
        """The next token of rows that share sampling settings: greedy, or one uniform per
        row from its own generator through `draw_tokens`."""
        if params.temperature == 0:
            return logits.argmax(-1)
        u = torch.cat([torch.rand(1, generator=s.rng) for s in running]).to(logits.device)
        return draw_tokens(logits, u, params.temperature, params.top_k, params.top_p, lse)

    def _finish_reason(self, s: _Running, params) -> str:
        """"stop" (an end token or a stop string), "length", or "" while it runs."""
        if s.tokens[-1] in self.stop_ids or (params.stop and self._hits_stop(s.tokens, params.stop)):
            return "stop"
        return "length" if len(s.tokens) >= params.max_new_tokens else ""

    @staticmethod
    def _compact(cache: SlotCache, running: list, ended: list[int]) -> list[int]:
        """Rows to keep, in their new order: the last live rows move into ended rows below
        the new row count (one row's KV copied each), so live rows stay 0..rows-1."""
        rows = len(running) - len(ended)
        gone = set(ended)
        holes = [r for r in ended if r < rows]
        movers = [r for r in range(rows, len(running)) if r not in gone]
        keep = list(range(rows))
        for hole, mover in zip(holes, movers, strict=True):
            cache.move(mover, hole)
            keep[hole] = mover
        return keep

    @staticmethod
    def _decode(step, cache: SlotCache, tokens: torch.Tensor) -> torch.Tensor:
        """One step for every live row: feed its last token, the next logits (rows, V) fp32
        (a method of its own: the decode phase `benchmarks/hf_decode_profile.py` times)."""
        return step(cache, tokens)

    def _forward(self, cache: SlotCache, tokens: torch.Tensor) -> torch.Tensor:
        """A decode step by the transformers forward (any architecture). The mask goes in
        as `decoder_mask` makes it: additive (a model with its own `eager` attention adds it to
        its scores) and cut to the window for sliding-window layers (column = position)."""
        positions, mask = cache.begin_step()
        columns = torch.arange(mask.shape[-1], device=mask.device).expand(len(positions), -1)
        out = self.model(input_ids=tokens[:, None].to(self.device),
                         attention_mask=decoder_mask(self.model, mask, positions, columns),
                         position_ids=positions, use_cache=True, **{self.cache_kw: cache})
        cache.end_step()
        return out.logits[:, -1].float()

    def _completion(self, s: _Running, reason: str, prompts, params) -> Completion:
        return Completion(prompts[s.prompt].prompt_id, s.k, self._text(s.tokens, params.stop),
                          tuple(s.tokens), reason, float(sum(s.logps)), tuple(s.logps), s.seed)

    def _text(self, tokens: list[int], stops: tuple[str, ...]) -> str:
        """A sample's text: never its end token (even one that is not a special token),
        and cut before the first stop string."""
        if tokens and tokens[-1] in self.stop_ids:
            tokens = tokens[:-1]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        for s in stops:
            if s in text:
                text = text[: text.index(s)]
        return text

    def _hits_stop(self, toks: list[int], stops: tuple[str, ...]) -> bool:
        tail = self.tokenizer.decode(toks[-16:], skip_special_tokens=True)
        return any(s in tail for s in stops)
