"""Generation throughput: the `hf` backend against a plain `model.generate` loop, in one run.

SmolLM2-135M-Instruct on CPU, float32, 32 chat prompts x 4 samples x 64 new
tokens (sampling, temperature 1). The plain loop calls `model.generate` once per
prompt with `num_return_sequences=4`, as a hand-written script would. Reports
generated tokens/s for both and the fraction of the compute ceiling: a matmul
peak measured in the same run divided by 2N FLOPs per generated token (N =
parameters).

    python benchmarks/generation_throughput.py [--prompts 32] [--n 4] [--tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import write_results  # noqa: E402
from dpo_throughput import matmul_peak_gflops  # noqa: E402

MODEL = os.environ.get("BENCH_MODEL", "builtin:smollm2-135m-instruct")


def prompts(k: int):
    from alignloop.data import read_pairs
    from alignloop.generation import PromptItem

    pairs = read_pairs("builtin:demo-pairs")[0]
    return [PromptItem(f"p{i}", p.prompt, p.slice) for i, p in enumerate(pairs[:k])]


def plain_loop(items, n: int, tokens: int) -> tuple[int, float]:
    import torch
    from alignloop.models import load_model, load_tokenizer, render_prompt

    model, tok = load_model(MODEL), load_tokenizer(MODEL)
    torch.manual_seed(0)
    generated, t0 = 0, time.perf_counter()
    for it in items:
        ids = tok(render_prompt(tok, it.prompt), return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**ids, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 max_new_tokens=tokens, num_return_sequences=n,
                                 pad_token_id=tok.pad_token_id)
        new = out[:, ids["input_ids"].shape[1]:]
        # count up to and excluding the first EOS, as the backend does
        for row in new.tolist():
            generated += next((i for i, t in enumerate(row) if t == tok.eos_token_id), len(row))
    return generated, time.perf_counter() - t0


def backend(items, n: int, tokens: int, in_flight: int) -> tuple[int, float]:
    from alignloop.generation import SamplingParams, make_generator

    gen = make_generator("hf", MODEL, max_batch_sequences=in_flight, progress=False)
    t0 = time.perf_counter()
    out = gen.sample(items, SamplingParams(n=n, max_new_tokens=tokens, seed=0))
    return sum(len(c.token_ids) for c in out), time.perf_counter() - t0


SIZES = {"quick": {"prompts": 16, "n": 4, "tokens": 32}, "full": {"prompts": 32, "n": 4, "tokens": 64}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="full",
                    help="quick: 16 prompts x 4 x 32 tokens; full: 32 x 4 x 64")
    ap.add_argument("--prompts", type=int, help="override the size's prompt count")
    ap.add_argument("--n", type=int, help="override the size's samples per prompt")
    ap.add_argument("--tokens", type=int, help="override the size's new tokens per sample")
    args = ap.parse_args()
    for key, value in SIZES[args.size].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    from alignloop.models import load_model

    items = prompts(args.prompts)
    n_params = sum(p.numel() for p in load_model(MODEL).parameters())
    peak = matmul_peak_gflops()
    ceiling = peak * 1e9 / (2 * n_params)
    rows = []
    for name, fn in [("plain model.generate loop", lambda: plain_loop(items, args.n, args.tokens)),
                     ("hf backend, 64 in flight", lambda: backend(items, args.n, args.tokens, 64)),
                     ("hf backend, 128 in flight", lambda: backend(items, args.n, args.tokens, 128))]:
        print(f"running {name} ...", flush=True)
        toks, secs = fn()
        rows.append({"setting": name, "tokens": toks, "seconds": secs, "tokens_per_s": toks / secs,
                     "ceiling_fraction": toks / secs / ceiling})
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["tokens_per_s"]
    meta = {"prompts": args.prompts, "n": args.n, "new_tokens": args.tokens, "matmul_peak_gflops": peak,
            "ceiling_tokens_per_s": ceiling, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "date": date.today().isoformat(),
            "command": f"python benchmarks/generation_throughput.py --size {args.size} "
                       f"--prompts {args.prompts} --n {args.n} --tokens {args.tokens}"}
    lines = ["| setting | generated tokens/s | vs plain loop | of compute ceiling |", "|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / base:.1f}x | "
              f"{100 * r['ceiling_fraction']:.0f}% |" for r in rows]
    lines += ["", f"SmolLM2-135M float32, {args.prompts} prompts x {args.n} samples x {args.tokens} new "
              f"tokens; ceiling {ceiling:.0f} tokens/s (matmul peak {peak:.0f} GFLOP/s / 2N); "
              f"{meta['machine']}; {meta['date']}; `{meta['command']}`."]
    md = "\n".join(lines)
    full = args.size == "full"
    write_results("generation_throughput" if full else "generation_throughput.quick", meta, rows, md,
                  readme=full)
    print(md)


if __name__ == "__main__":
    main()
