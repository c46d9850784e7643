"""The evaluation's two draws of a policy: one call each, or one batch (`sample_each`).

With tempered sampling settings the evaluation samples every held-out prompt twice from
the policy: once with the run's settings (what users see) and once at temperature 1 (for
the KL estimates). This times the two as separate `hf` sample calls against the same two
as one continuous batch (`generation.sample_each`), side by side in one process,
alternating, on the real SmolLM2 with the demo's settings (48 held-out prompts, one
sample each, temperature 0.7 and top-p 0.9, 128 new tokens) in the dtype the placement
samples in here. It also counts the samples whose tokens came out the same both ways
(they differ only by float rounding of other batch shapes).

    python benchmarks/eval_sampling.py [--prompts 48] [--tokens 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine, today, write_results  # noqa: E402
from dpo_throughput import cpu_flags  # noqa: E402
from generation_throughput import MODEL, prompts  # noqa: E402


def measure(n_prompts: int, tokens: int, repeats: int) -> dict:
    from alignloop.generation import SamplingParams, sample_each
    from alignloop.generation.hf import HFGenerator
    from alignloop.placement import resolve_placement

    dtype = str(resolve_placement("cpu", "auto").sampling_dtype).removeprefix("torch.")
    gen = HFGenerator(MODEL, dtype=dtype, progress=False)
    items = prompts(n_prompts)
    calls = [(items, SamplingParams(n=1, temperature=0.7, top_p=0.9, max_new_tokens=tokens, seed=1)),
             (items, SamplingParams(n=1, max_new_tokens=tokens, seed=3))]
    gen.sample(items[:4], calls[0][1])                      # warm-up: packing, first calls
    seconds = {"separate": [], "together": []}
    for _ in range(repeats):
        t = time.perf_counter()
        separate = [gen.sample(p, s) for p, s in calls]
        seconds["separate"].append(time.perf_counter() - t)
        t = time.perf_counter()
        together = sample_each(gen, calls)
        seconds["together"].append(time.perf_counter() - t)
    same = sum(a.token_ids == b.token_ids for x, y in zip(separate, together, strict=True)
               for a, b in zip(x, y, strict=True))
    median = {k: statistics.median(v) for k, v in seconds.items()}
    return {"dtype": dtype, "slots": gen.max_batch_sequences, "samples": 2 * n_prompts,
            "tokens": {k: sum(len(c.token_ids) for c in sum(v, [])) for k, v in
                       (("separate", separate), ("together", together))},
            "seconds": seconds, "median_s": median, "speedup": median["separate"] / median["together"],
            "same_tokens": same}


def table(r: dict, meta: dict) -> str:
    m = r["median_s"]
    rows = [f"| {name} | {m[key]:.1f} | {r['tokens'][key]:,} | {r['tokens'][key] / m[key]:.0f} |"
            for name, key in (("two sample calls", "separate"), ("one batch (`sample_each`)", "together"))]
    return "\n".join([
        "| the evaluation's two draws | seconds (median) | tokens | tokens/s |", "|---|---|---|---|",
        *rows, "",
        f"One batch: **{r['speedup']:.2f}x** the two calls; {r['same_tokens']} of {r['samples']} samples "
        f"drew the same tokens both ways (the rest differ by float rounding of other batch shapes). "
        f"SmolLM2-135M, {r['samples'] // 2} prompts x (temperature 0.7 top-p 0.9, and temperature 1), "
        f"{meta['tokens']} new tokens, {r['dtype']}, {r['slots']} slots; median of {meta['repeats']} "
        f"alternating repeats. {meta['machine']} ({meta['cpu']}); {meta['date']}; `{meta['command']}`."])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    for name in ("prompts", "tokens", "repeats"):
        if getattr(args, name) < 1:
            ap.error(f"argument --{name}: must be >= 1")
    r = measure(args.prompts, args.tokens, args.repeats)
    meta = {"machine": machine(), "cpu": cpu_flags(), "date": today(), "tokens": args.tokens,
            "repeats": args.repeats, "command": "python benchmarks/eval_sampling.py"}
    md = table(r, meta)
    write_results("eval_sampling", meta, r, md)
    print(md)


if __name__ == "__main__":
    main()
