"""How often the demo's base model ends a response by itself (EOS) rather than at the length
limit, per `generation.max_new_tokens` and prompt wording, and what each setting costs.

The demo's ground truth penalises length (`alignloop.demo.panel`: every word over 30), so
"be brief" can only be learned if responses can end by EOS: a sample cut at the limit
says nothing about where the model would have stopped. This samples the embedded
SmolLM2-135M-Instruct with the demo's own settings (configs/demo.yaml: `hf` backend,
temperature 0.7, top_p 0.9) on the prompts the demo samples:

    held-out    the 48 held-out prompts every round evaluates (`eval_items`), 1 sample each
                (`loop.eval_samples`), seeded as the eval stage seeds them
    round       12 training prompts (2 per slice, first by id) x `generation.n` samples,
                half a round's generate stage (24 prompts x 4)

Prompt variants: `pool` (the demo pool as it is: 40% of prompts carry one of the demo's
three system prompts, one of which asks for short answers), and `brief-system` (every
prompt's system message replaced by that third one, "Be kind and keep your answers
short.").

Each variant is sampled once at the longest limit: a sample's seed depends on its prompt
and index alone, so at a shorter limit it is the same tokens cut there (ending by EOS
only if it ended within the limit). The held-out set is also sampled directly at every
shorter limit (`pool` only): that call's seconds are the cost column, and its samples are checked to be
those prefixes. Per (variant, max_new_tokens): the share ending by EOS (all, held-out,
round; in `pool` also by the system prompt a prompt carries), mean tokens, the share over
the panel's 30 free words, and the seconds of the held-out `sample()` call (model load
excluded; the demo's eval samples this set with the policy twice per round, and its
generate stage samples a round-sized set: both scale about linearly with the limit).

    python benchmarks/demo_eos.py [--size quick|full] [--tokens 40,64,96,128] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine, results_name, today, write_results  # noqa: E402

CONFIG = HERE.parent / "configs" / "demo.yaml"
SIZES = {"quick": {"heldout": 16, "per_slice": 1, "tokens": (40, 96), "variants": ("pool",)},
         "full": {"heldout": 48, "per_slice": 2, "tokens": (40, 64, 96, 128),
                  "variants": ("brief-system", "pool")}}
BRIEF_SYSTEM = 2
"""Index in `alignloop.demo.pairs.SYSTEM_PROMPTS` of the one asking for short answers."""


def prompt_sets(cfg, size: dict) -> dict[str, list]:
    """The held-out prompts the demo evaluates and a round-sized set of training prompts."""
    from alignloop.prompt_pool import load_pool
    from alignloop.stages.evaluate import eval_items

    pool = load_pool(cfg.loop.prompts, cfg.loop.eval_share)
    heldout = eval_items(pool, min(size["heldout"], cfg.loop.eval_prompts or size["heldout"]))
    by_slice: dict[str, list] = {}
    for it in sorted(pool.train, key=lambda it: it.prompt_id):
        by_slice.setdefault(it.slice, []).append(it)
    round_items = [it for s in sorted(by_slice) for it in by_slice[s][:size["per_slice"]]]
    return {"heldout": heldout, "round": round_items}


def system_of(prompt) -> str:
    """Which demo system prompt a prompt carries: "none", or "sys0".."sys2"."""
    from alignloop.demo.pairs import SYSTEM_PROMPTS

    sys_msgs = [m["content"] for m in prompt if m.get("role") == "system"] if isinstance(
        prompt, list) else []
    return f"sys{SYSTEM_PROMPTS.index(sys_msgs[0])}" if sys_msgs else "none"


def with_brief_system(items: list) -> list:
    """The same prompts (same ids, so the same seeds) with the brief system message."""
    from alignloop.demo.pairs import SYSTEM_PROMPTS

    brief = {"role": "system", "content": SYSTEM_PROMPTS[BRIEF_SYSTEM]}
    out = []
    for it in items:
        msgs = it.prompt if isinstance(it.prompt, list) else [{"role": "user", "content": it.prompt}]
        out.append(dataclasses.replace(it, prompt=[brief] + [m for m in msgs if m["role"] != "system"]))
    return out


def sample_sets(generator, sets: dict, cfg, tokens: int) -> tuple[list[dict], dict]:
    """Every sample of both prompt sets at one max_new_tokens, and each set's seconds."""
    from alignloop.generation import SamplingParams

    g = cfg.generation
    runs = {"heldout": (cfg.loop.eval_samples, cfg.loop.seed + 1), "round": (g.n, g.seed)}
    samples, seconds = [], {}
    for name, items in sets.items():
        n, seed = runs[name]
        params = SamplingParams(n=n, temperature=g.temperature, top_p=g.top_p, top_k=g.top_k,
                                max_new_tokens=tokens, stop=g.stop, seed=seed)
        t0 = time.perf_counter()
        out = generator.sample(items, params)
        seconds[name] = time.perf_counter() - t0
        by_id = {it.prompt_id: it for it in items}
        samples += [{"set": name, "key": (c.prompt_id, c.sample_index),
                     "system": system_of(by_id[c.prompt_id].prompt), "token_ids": c.token_ids,
                     "stop": c.finish_reason == "stop"} for c in out]
    return samples, seconds


def at_limit(samples: list[dict], limit: int, tokenizer) -> list[dict]:
    """The samples as they would be with max_new_tokens = `limit`: each sample's seed depends
    on its prompt and index only, so a shorter limit gives a prefix of the same tokens
    (`main` checks this on the held-out set at every limit)."""
    out = []
    for r in samples:
        ids = r["token_ids"][:limit]
        stop = r["stop"] and len(r["token_ids"]) <= limit
        text = tokenizer.decode(ids, skip_special_tokens=True)
        out.append({**r, "stop": stop, "tokens": len(ids), "words": len(text.split())})
    return out


def summarise(samples: list[dict], variant: str, limit: int) -> dict:
    def share(rows, key="stop"):
        return sum(bool(r[key]) for r in rows) / len(rows) if rows else None

    groups = {"all": samples, **{s: [r for r in samples if r["set"] == s]
                                 for s in ("heldout", "round")}}
    if variant == "pool":
        for sysname in sorted({r["system"] for r in samples}):
            groups[f"system={sysname}"] = [r for r in samples if r["system"] == sysname]
    stopped = sorted(r["tokens"] for r in samples if r["stop"])
    return {"variant": variant, "max_new_tokens": limit, "samples": len(samples),
            "ends_by_eos": {k: share(v) for k, v in groups.items()},
            "group_sizes": {k: len(v) for k, v in groups.items()},
            "mean_tokens": sum(r["tokens"] for r in samples) / len(samples),
            "median_tokens_if_eos": stopped[len(stopped) // 2] if stopped else None,
            "over_30_words": share([{"x": r["words"] > 30} for r in samples], "x")}


def measure_variant(generator, sets: dict, cfg, tokens: list[int], variant: str,
                    timed: bool) -> list[dict]:
    """One run at the longest limit gives every shorter limit's samples as prefixes; when
    `timed`, the held-out set is also sampled at each shorter limit, for its time and as a
    check (the cost does not depend on the prompt variant, so one variant is timed)."""
    top = max(tokens)
    full, seconds = sample_sets(generator, sets, cfg, top)
    rows = []
    for limit in sorted(tokens):
        derived = at_limit(full, limit, generator.tokenizer)
        row = summarise(derived, variant, limit)
        row["heldout_seconds"], row["prefix_check"] = None, "not run"
        if limit == top:
            row["heldout_seconds"], row["prefix_check"] = seconds["heldout"], "measured"
        elif timed:
            direct, secs = sample_sets(generator, {"heldout": sets["heldout"]}, cfg, limit)
            want = {r["key"]: r for r in derived if r["set"] == "heldout"}
            same = sum(r["token_ids"] == want[r["key"]]["token_ids"][:limit]
                       and r["stop"] == want[r["key"]]["stop"] for r in direct)
            row["heldout_seconds"], row["prefix_check"] = secs["heldout"], f"{same}/{len(direct)}"
        row["round_seconds_at_top"] = seconds["round"]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict], meta: dict) -> str:
    pct = lambda x: "-" if x is None else f"{100 * x:.0f}%"  # noqa: E731
    secs = lambda x: "-" if x is None else f"{x:.1f}"  # noqa: E731
    lines = ["| prompts | max_new_tokens | ends by EOS, all | held-out | round prompts "
             "| mean tokens | median tokens (EOS-ended) | over 30 words | held-out sample() s "
             "| prefix check |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        e = r["ends_by_eos"]
        lines.append(f"| {r['variant']} | {r['max_new_tokens']} | {pct(e['all'])} | "
                     f"{pct(e['heldout'])} | {pct(e['round'])} | {r['mean_tokens']:.1f} | "
                     f"{r['median_tokens_if_eos'] or '-'} | {pct(r['over_30_words'])} | "
                     f"{secs(r['heldout_seconds'])} | {r['prefix_check']} |")
    by_sys = [r for r in rows if r["variant"] == "pool"]
    if by_sys:
        keys = sorted(k for k in by_sys[0]["ends_by_eos"] if k.startswith("system="))
        lines += ["", "Ends by EOS in the `pool` prompts, by the system prompt they carry "
                  "(sys2 asks for short answers; n samples in brackets):", "",
                  "| max_new_tokens | " + " | ".join(
                      f"{k.removeprefix('system=')} (n={by_sys[0]['group_sizes'][k]})"
                      for k in keys) + " |", "|---|" + "---|" * len(keys)]
        lines += [f"| {r['max_new_tokens']} | " + " | ".join(pct(r["ends_by_eos"].get(k))
                                                            for k in keys) + " |" for r in by_sys]
    lines += ["", f"SmolLM2-135M-Instruct (base), `hf` backend, CPU float32, temperature "
              f"{meta['temperature']}, top_p {meta['top_p']}; {meta['heldout']} held-out prompts x "
              f"{meta['eval_samples']} + {meta['round']} round prompts x {meta['n']}, sampled "
              f"once at the longest limit; a shorter limit's samples are their prefixes (prefix "
              f"check: the held-out set sampled directly at that limit, samples identical). "
              f"Seconds: the held-out set's `sample()` call ({meta['threads']} torch threads, load average "
              f"{meta['load_average']:.1f} at the start: a loaded machine inflates them). "
              f"{meta['machine']}; {meta['date']}; `{meta['command']}`."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--tokens", default="", help="comma-separated max_new_tokens (default: size's)")
    ap.add_argument("--variants", default="", help="comma-separated of pool,brief-system")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: torch's default); 1 runs faster on a loaded machine")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from alignloop.config import load_config
    from alignloop.generation import generator_for

    cfg = load_config(CONFIG)
    size = SIZES[args.size]
    tokens = [int(t) for t in args.tokens.split(",") if t] or list(size["tokens"])
    variants = [v for v in args.variants.split(",") if v] or list(size["variants"])
    sets = prompt_sets(cfg, size)
    generator = generator_for(dataclasses.replace(cfg.generation, backend="hf"), cfg.model.name,
                              chat_template=cfg.data.chat_template)
    generator.progress = False
    g = cfg.generation
    extra = (f" --tokens {args.tokens}" if args.tokens else "") + (
        f" --variants {args.variants}" if args.variants else "")
    threads = f" --threads {args.threads}" if args.threads else ""
    meta = {"model": cfg.model.name, "temperature": g.temperature, "top_p": g.top_p, "n": g.n,
            "eval_samples": cfg.loop.eval_samples, "heldout": len(sets["heldout"]),
            "round": len(sets["round"]), "load_average": os.getloadavg()[0],
            "machine": machine(), "date": today(),
            "threads": args.threads or "default",
            "command": f"python benchmarks/demo_eos.py --size {args.size}{extra}{threads}"}
    rows = []
    for i, variant in enumerate(variants):   # results written after each variant
        vsets = sets if variant == "pool" else {k: with_brief_system(v) for k, v in sets.items()}
        rows += measure_variant(generator, vsets, cfg, tokens, variant, timed=variant == "pool")
        rows.sort(key=lambda r: (r["variant"] != "pool", r["max_new_tokens"]))
        md = table(rows, meta)
        write_results(results_name("demo_eos", args.size), meta, rows, md,
                      readme=args.size == "full" and not extra and i == len(variants) - 1)
    print(md)

if __name__ == "__main__":
    main()
