"""The `hf` backend's previous decoder (to 2026-12-03), kept as the baseline of
`generation_throughput.py` (setting `hf-fp32-batch`) and as a reference in
tests/test_generation_hf_refill.py: batches of `max_batch_sequences // n` prompts, each
prompt prefilled once and its KV repeated into a `StaticCache`, every row decoded until
the whole batch is done (finished rows keep being computed), one `torch.multinomial` per
row and step over the full vocabulary.

    sample_batched(gen, prompts, params)   # gen: an HFGenerator; same records as gen.sample
"""

from __future__ import annotations

import torch
from alignloop.generation import Completion, SamplingParams, sample_seed
from alignloop.generation.prompts import encode_prompt


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Logits (B, V) of the sampling distribution: temperature, then top-k, then top-p."""
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


def sample_batched(gen, prompts, params: SamplingParams) -> list[Completion]:
    budget = gen.context - params.max_new_tokens
    encoded = [encode_prompt(gen.tokenizer, p, budget, gen.truncation) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    per_batch = max(1, gen.max_batch_sequences // params.n)
    results = {}
    for s in range(0, len(order), per_batch):
        idx = order[s:s + per_batch]
        batch = _sample_batch(gen, [prompts[i] for i in idx], [encoded[i] for i in idx], params)
        results.update(zip(idx, batch, strict=True))
    return [c for i in range(len(prompts)) for c in results[i]]


@torch.inference_mode()
def _sample_batch(gen, items, encoded, params: SamplingParams) -> list[list[Completion]]:
    n, B = params.n, len(items)
    P = max(len(e) for e in encoded)
    ids = torch.full((B, P), gen.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((B, P), dtype=torch.long)
    for b, e in enumerate(encoded):  # left padding
        ids[b, P - len(e):] = torch.tensor(e)
        mask[b, P - len(e):] = 1
    ids, mask = ids.to(gen.device), mask.to(gen.device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = gen.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    cache = _static_copy(gen, getattr(out, gen.cache_kw), n, P + params.max_new_tokens)
    logits = out.logits[:, -1].float().repeat_interleave(n, 0)   # (B*n, V)
    mask = mask.repeat_interleave(n, 0)
    seeds = [sample_seed(params.seed, it.prompt_id, k) for it in items for k in range(n)]
    gens = [torch.Generator().manual_seed(sd) for sd in seeds]
    tokens = [[] for _ in seeds]
    logps = [[] for _ in seeds]
    done, reason = [False] * len(seeds), ["length"] * len(seeds)
    for _ in range(params.max_new_tokens):
        policy_logp = logits.log_softmax(-1)
        if params.temperature == 0:
            nxt = logits.argmax(-1).cpu()
        else:
            probs = filter_logits(logits, params.temperature, params.top_k, params.top_p).softmax(-1).cpu()
            nxt = torch.stack([torch.multinomial(probs[r], 1, generator=gens[r])[0]
                               for r in range(len(seeds))])
        lp = policy_logp.gather(1, nxt.to(logits.device)[:, None])[:, 0].cpu()
        for r, tok in enumerate(nxt.tolist()):
            if done[r]:
                continue
            tokens[r].append(tok)
            logps[r].append(float(lp[r]))
            if tok in gen.stop_ids or (params.stop and gen._hits_stop(tokens[r], params.stop)):
                done[r], reason[r] = True, "stop"
        if all(done):
            break
        mask = torch.cat([mask, torch.ones((len(seeds), 1), dtype=mask.dtype, device=mask.device)], 1)
        out = gen.model(input_ids=nxt.to(gen.device)[:, None], attention_mask=mask,
                        position_ids=(mask.sum(-1, keepdim=True) - 1), use_cache=True,
                        **{gen.cache_kw: cache})
        logits = out.logits[:, -1].float()
    return [[Completion(it.prompt_id, k, gen._text(tokens[b * n + k], params.stop),
                       tuple(tokens[b * n + k]), reason[b * n + k], float(sum(logps[b * n + k])),
                       tuple(logps[b * n + k]), seeds[b * n + k]) for k in range(n)]
            for b, it in enumerate(items)]


def _static_copy(gen, prefill_cache, n: int, max_len: int):
    from transformers import StaticCache

    static = StaticCache(config=gen.model.config, max_cache_len=max_len)
    for src, dst in zip(prefill_cache.layers, static.layers, strict=True):
        dst.update(src.keys.repeat_interleave(n, 0), src.values.repeat_interleave(n, 0))
    return static
