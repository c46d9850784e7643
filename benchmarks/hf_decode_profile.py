"""Where one `hf` sample call spends its time (issue 15): the real SmolLM2 on CPU, one
`sample` call of prompts x n samples x new tokens with a number of sequences in flight.

Two views of the same call size:

    phases    wall-clock seconds of each part of the decode loop, no profiler attached:
              prefill (refill admissions: prompt forwards + KV writes), decode (the model
              step over all live rows), draw (sampling + the one host sync per step),
              compact (moving live rows into freed slots), loop (finish checks, records,
              Python); tokens/s and the share of the ceiling measured in this run in the
              sampling dtype (`--dtype`, float32 by default)
    ops       (--ops) torch.profiler over a second call: each op's self CPU time summed
              by phase and, inside decode, by kind (layer matmuls, LM head, attention,
              norms, rotary, MLP/residual elementwise, cache writes, step setup);
              "python" is a phase's wall time under the profiler minus its ops' time

`--decoder model` profiles the transformers forward instead of the Llama step
(`generation/hf_decode.py`). Another commit's decoder runs with its code first on
PYTHONPATH (`loop_timing.export_commit`), e.g. HEAD's then this tree's, back to back.

`--compare-attention R` sets the two decode attentions of `LlamaStep` side by side in one
process, R times alternating: the flash kernel over each row's span (what float32 uses)
and the matmul attention over the cache's window (what bfloat16 on a CPU uses): first
one layer's attention alone at a range of cache lengths, then whole sample calls that
differ only in it, with how many of their tokens came out the same.

`--compare-prefill R` instead sets the Llama prefill (`LlamaStep.prefill`) against the
transformers forward (`HFGenerator._prefill`) in one process, R times alternating: the
prefill's seconds per prompt in batches of a refill's size and of the first fill's, then
whole sample calls that differ only in their prefill (both decode by `LlamaStep`).

    python benchmarks/hf_decode_profile.py [--prompts 32] [--n 4] [--tokens 64]
        [--in-flight 64] [--decoder llama|model] [--dtype float32|bfloat16]
        [--ops | --compare-prefill R | --compare-attention R]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from dpo_throughput import matmul_peak_gflops  # noqa: E402
from generation_throughput import MODEL, prompts  # noqa: E402

PHASES = {"_admit": "prefill", "_decode": "decode", "_draw": "draw", "_compact": "compact"}
KINDS = [  # (kind, prefixes of aten op names), first match wins
    # in a decode step a batched matmul is attention's (bf16 on a CPU: `_window_attention`)
    ("attention", ("aten::scaled_dot_product", "aten::_scaled_dot_product", "aten::_softmax",
                   "aten::bmm")),
    ("norm", ("aten::rms_norm", "aten::_fused_rms_norm", "aten::pow", "aten::mean", "aten::rsqrt")),
    ("rotary", ("aten::roll", "aten::addcmul", "aten::neg", "aten::cat")),
    ("cache write", ("aten::index_put", "aten::_index_put")),
    ("matmul", ("aten::mm", "aten::addmm", "mkldnn::_linear_pointwise")),
    ("mlp/residual elementwise", ("aten::silu", "aten::mul", "aten::add")),
    ("copies/casts", ("aten::copy_", "aten::to", "aten::_to_copy", "aten::clone")),
    ("step setup", ("aten::arange", "aten::le", "aten::embedding", "aten::index", "aten::lift")),
]


def timed_phases(gen, wall: dict):
    """Wrap the generator's loop methods (instance attributes) to sum their wall time."""
    import torch

    for method, phase in PHASES.items():
        original = getattr(gen, method)

        def wrapper(*a, _f=original, _p=phase, **kw):
            with torch.profiler.record_function(f"phase:{_p}"):
                t = time.perf_counter()
                out = _f(*a, **kw)
                wall[_p] += time.perf_counter() - t
            return out

        setattr(gen, method, wrapper)


def op_kind(evt, vocab: int) -> str:
    if (any(vocab in shape for shape in (evt.input_shapes or []))
            and ("mm" in evt.name or "linear" in evt.name)):
        return "LM head"
    for kind, keys in KINDS:
        if evt.name.startswith(keys):
            return kind
    return "other"


def op_breakdown(prof, vocab: int) -> dict:
    """Self CPU seconds per (phase, kind) from the profiler's event tree."""
    out = defaultdict(float)
    for evt in prof.events():
        if evt.name.startswith("phase:"):
            out[evt.name[6:], "wall"] += evt.cpu_time_total / 1e6
            continue
        parent, phase = evt.cpu_parent, "loop"
        while parent is not None:
            if parent.name.startswith("phase:"):
                phase = parent.name[6:]
                break
            parent = parent.cpu_parent
        out[phase, op_kind(evt, vocab) if phase == "decode" else "ops"] += evt.self_cpu_time_total / 1e6
    return out


def compare_prefill(gen, items, params, repeats: int, ceiling: float) -> None:
    """Prefill time per prompt, then tokens/s of whole calls, for the two prefills side by
    side (each measurement alternates new, old, new, old... so load changes hit both)."""
    import copy
    import statistics

    import torch
    from alignloop.generation.hf import HFGenerator
    from alignloop.generation.hf_decode import LlamaStep
    from alignloop.models import prompt_token_ids

    encoded = sorted((prompt_token_ids(gen.tokenizer, it.prompt) for it in items), key=len, reverse=True)
    step = LlamaStep(gen.model, max(map(len, encoded)))
    first = max(1, min(len(items), gen.max_batch_sequences // params.n))
    refill = max(1, max(params.n, gen.max_batch_sequences // 8) // params.n)
    prefills = {"llama": step.prefill, "transformers": gen._prefill}
    with torch.inference_mode():
        for label, size in ((f"refill ({refill} prompts)", refill), (f"first fill ({first})", first)):
            batches = [encoded[i:i + size] for i in range(0, len(encoded) - size + 1, size)]
            per_prompt = {name: [] for name in prefills}
            for _ in range(repeats):
                for name, prefill in prefills.items():
                    t = time.perf_counter()
                    for batch in batches:
                        prefill(batch)
                    per_prompt[name].append((time.perf_counter() - t) / (len(batches) * size))
            ms = {name: 1e3 * statistics.median(v) for name, v in per_prompt.items()}
            print(f"prefill, {label}: llama {ms['llama']:.1f} ms/prompt, transformers "
                  f"{ms['transformers']:.1f} ms/prompt: {ms['transformers'] / ms['llama']:.2f}x "
                  f"(median of {repeats}, {len(batches)} batches each)")
    old = copy.copy(gen)
    old._admit = lambda cache, prompts, _: HFGenerator._admit(old, cache, prompts, old._prefill)
    runs = {"llama": (gen, defaultdict(float), []), "transformers": (old, defaultdict(float), [])}
    for g, wall, _ in runs.values():
        timed_phases(g, wall)
    for _ in range(repeats):
        for g, wall, rates in runs.values():
            t = time.perf_counter()
            out = g.sample(items, params)
            wall["total"] += time.perf_counter() - t
            rates.append(sum(len(c.token_ids) for c in out) / (time.perf_counter() - t))
    for name, (_, wall, rates) in runs.items():
        rate = statistics.median(rates)
        print(f"sample calls, {name} prefill: {rate:.0f} tokens/s (median of "
              f"{', '.join(f'{r:.0f}' for r in rates)}) = "
              f"{100 * rate / ceiling:.0f}% of the ceiling; prefill {wall['prefill']:.1f} s of "
              f"{wall['total']:.1f} s ({100 * wall['prefill'] / wall['total']:.0f}%)")
    ratio = statistics.median(runs["llama"][2]) / statistics.median(runs["transformers"][2])
    print(f"end to end: llama prefill {ratio:.2f}x the transformers prefill's tokens/s; "
          f"load now {os.getloadavg()[0]:.1f}")


def _one_layer(step, q, k, v, span: int, lengths, repeats: int) -> tuple[float, float, float]:
    """Milliseconds of one layer's decode attention, the flash kernel over `span` columns
    vs `step`'s own matmul attention over all of the window's columns (median of
    alternating repeats), and the largest difference of their outputs."""
    import statistics
    import types

    import torch
    import torch.nn.functional as F

    columns = k.shape[2]
    mask = (torch.arange(span)[None] <= lengths[:, None])[:, None, None]
    bias = torch.zeros(len(lengths), 1, 1, columns).masked_fill(
        torch.arange(columns)[None, None, None] > lengths[:, None, None, None], float("-inf"))
    # what `_window_attention` reads of a SlotCache mid-step
    window_cache = types.SimpleNamespace(window=lambda layer: (k, v), window_bias=lambda: bias)

    def flash():
        return F.scaled_dot_product_attention(q, k[:, :, :span], v[:, :, :span], attn_mask=mask)

    def window():
        return step._window_attention(q, window_cache, 0)

    secs = {flash: [], window: []}
    for _ in range(repeats * 5):
        for f in secs:
            t = time.perf_counter()
            for _ in range(10):
                f()
            secs[f].append((time.perf_counter() - t) / 10)
    err = (flash().float() - window().float()).abs().max().item()
    return 1e3 * statistics.median(secs[flash]), 1e3 * statistics.median(secs[window]), err


def compare_attention(gen, items, params, repeats: int, ceiling: float) -> None:
    """The flash kernel over spans vs the matmul attention over the window, alternating:
    one layer's attention at the sizes of a decode step, then whole sample calls."""
    import statistics

    import torch
    from alignloop.generation.hf import WINDOW_CHUNK

    cfg = gen.model.config
    B, KV, H = gen.max_batch_sequences, cfg.num_key_value_heads, cfg.num_attention_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    dtype = next(gen.model.parameters()).dtype
    step = gen._llama_step(gen.context)          # every call below reuses this step
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for span in (96, 192, 320):
            # the window at its widest before it shrinks
            columns = -(-span // WINDOW_CHUNK) * WINDOW_CHUNK + WINDOW_CHUNK
            k, v = (torch.randn(B, KV, columns, hd, generator=g).to(dtype) for _ in "kv")
            q = torch.randn(B, KV, H // KV, hd, generator=g).to(dtype)
            lengths = torch.randint(span // 2, span, (B,), generator=g)
            lengths[0] = span - 1
            flash, window, err = _one_layer(step, q, k, v, span, lengths, repeats)
            print(f"one layer, {B} rows x {span} columns ({columns} held), {dtype}: flash "
                  f"{flash:.2f} ms, window {window:.2f} ms: {flash / window:.2f}x; "
                  f"largest difference {err:.4f}")
    rates, outs = {True: [], False: []}, {}
    for _ in range(repeats):
        for window_attention in (True, False):
            step.window_attention = window_attention      # the cache follows the step's choice
            t = time.perf_counter()
            out = gen.sample(items, params)
            rates[window_attention].append(sum(len(c.token_ids) for c in out)
                                           / (time.perf_counter() - t))
            outs[window_attention] = out
    same = sum(a.token_ids == b.token_ids for a, b in zip(outs[True], outs[False], strict=True))
    for flag, name in ((False, "flash over spans"), (True, "matmul over the window")):
        r = statistics.median(rates[flag])
        print(f"sample calls, {name}: {r:.0f} tokens/s (median of "
              f"{', '.join(f'{x:.0f}' for x in rates[flag])}) = {100 * r / ceiling:.0f}% of the ceiling")
    ratio = statistics.median(rates[True]) / statistics.median(rates[False])
    print(f"end to end: window {ratio:.2f}x flash; {same} of {len(outs[True])} samples "
          f"token for token the same; load now {os.getloadavg()[0]:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--in-flight", type=int, default=64)
    ap.add_argument("--decoder", choices=["llama", "model"], default="llama")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="the sampling weights' dtype; the ceiling is measured in it")
    ap.add_argument("--ops", action="store_true", help="also a torch.profiler op breakdown")
    ap.add_argument("--compare-prefill", type=int, default=0, metavar="R",
                    help="Llama prefill vs transformers prefill, R alternating repeats")
    ap.add_argument("--compare-attention", type=int, default=0, metavar="R",
                    help="flash attention over spans vs matmul attention over the window, "
                         "R alternating repeats")
    args = ap.parse_args()
    for flag in ("compare_prefill", "compare_attention"):
        if getattr(args, flag) < 0:
            ap.error(f"--{flag.replace('_', '-')}: repeats must be >= 0, got {getattr(args, flag)}")
    import torch
    from alignloop.generation import SamplingParams, make_generator

    gen = make_generator("hf", MODEL, max_batch_sequences=args.in_flight, progress=False,
                         dtype=getattr(torch, args.dtype))
    if args.decoder == "model":
        gen.decoder = "model"
    n_params = sum(p.numel() for p in gen.model.parameters())
    items = prompts(args.prompts)
    params = SamplingParams(n=args.n, max_new_tokens=args.tokens, seed=0)
    load = os.getloadavg()[0]
    peak = matmul_peak_gflops(dtype=args.dtype)
    ceiling = peak * 1e9 / (2 * n_params)
    if args.compare_prefill:
        print(f"{args.prompts} prompts x {args.n} x {args.tokens} tokens, {args.in_flight} in flight, "
              f"{torch.get_num_threads()} threads, ceiling {ceiling:.0f} tokens/s "
              f"(matmul {peak:.0f} GFLOP/s); load {load:.1f}")
        return compare_prefill(gen, items, params, args.compare_prefill, ceiling)
    if args.compare_attention:
        print(f"{args.prompts} prompts x {args.n} x {args.tokens} tokens, {args.in_flight} in flight, "
              f"{torch.get_num_threads()} threads, {args.dtype} ceiling {ceiling:.0f} tokens/s "
              f"(matmul {peak:.0f} GFLOP/s); load {load:.1f}")
        return compare_attention(gen, items, params, args.compare_attention, ceiling)
    wall = defaultdict(float)
    timed_phases(gen, wall)
    t = time.perf_counter()
    out = gen.sample(items, params)
    total = time.perf_counter() - t
    tokens = sum(len(c.token_ids) for c in out)
    wall["loop"] = total - sum(wall.values())
    print(f"{args.prompts} prompts x {args.n} x {args.tokens} tokens, {args.in_flight} in flight, "
          f"decoder {getattr(gen, 'decoder', 'of this alignloop')}, {torch.get_num_threads()} threads: {tokens} tokens in "
          f"{total:.1f} s = {tokens / total:.0f} tokens/s = {100 * tokens / total / ceiling:.0f}% "
          f"of the {args.dtype} ceiling ({ceiling:.0f} tokens/s, matmul {peak:.0f} GFLOP/s); "
          f"load {load:.1f} / {os.getloadavg()[0]:.1f}")
    for phase, s in sorted(wall.items(), key=lambda kv: -kv[1]):
        print(f"  {phase:10s} {s:7.2f} s  {100 * s / total:5.1f}%")
    if not args.ops:
        return
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                record_shapes=True) as prof:
        gen.sample(items, params)
    parts = op_breakdown(prof, gen.model.config.vocab_size)
    dec_wall = parts.pop(("decode", "wall"), 0.0)
    decode = {k: v for (p, k), v in parts.items() if p == "decode"}
    decode["python"] = dec_wall - sum(decode.values())
    print(f"decode step under the profiler ({dec_wall:.1f} s), by kind:")
    for kind, s in sorted(decode.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:26s} {s:7.2f} s  {100 * s / dec_wall:5.1f}%")
    print("other phases under the profiler (wall / op self time):")
    for phase in ("prefill", "draw", "compact"):
        print(f"  {phase:10s} {parts.get((phase, 'wall'), 0):7.2f} s / {parts.get((phase, 'ops'), 0):7.2f} s")
    top = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    print(top)


if __name__ == "__main__":
    main()
