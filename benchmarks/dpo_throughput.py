"""DPO training throughput: alignloop's trainer against TRL's DPOTrainer, side by side in one run.

Same model (SmolLM2-135M-Instruct, float32 on CPU), same pairs (the bundled demo
set: chat prompts longer than the responses, as in dialogue data), same batch size
(8 pairs) and max length, full fine-tune and LoRA. Settings:

  alignloop      our trainer (prefix sharing, response-only output projection,
                 reference log-probs computed once and cached)
  alignloop-gc   the same with train.gradient_checkpointing (memory first)
  trl-default    TRL's DPOTrainer with its defaults (bf16 and gradient checkpointing
                 on, the reference model run at every step)
  trl-default-fp32  TRL's defaults except bf16 (the bf16 default costs most on a CPU)
  trl-fastest    TRL with its fastest settings that run on a CPU (see TRL_FAST)

Each setting runs in its own process (clean peak memory). For every setting we
report: training tokens/s (useful tokens: prompt once + both responses, per
second of optimizer steps), time per epoch (reference pass included; the steps
part extrapolated from the measured tokens/s when fewer steps than an epoch
were run), peak RSS, and model-FLOPs utilisation against a float32 matmul peak
measured in the same run (useful FLOPs/token: 6N for a full fine-tune, 4N for
LoRA, where frozen weights get no weight-gradient matmul; N = parameters).

    python benchmarks/dpo_throughput.py --size quick   # 2 steps per setting
    python benchmarks/dpo_throughput.py --size full    # a whole epoch where affordable
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MODEL = os.environ.get("BENCH_MODEL", "builtin:smollm2-135m-instruct")
BATCH = 8
MAX_LENGTH = 512
LORA = {"r": 16, "alpha": 32}
# TRL's fastest CPU settings (benchmarks/TRL_NOTES.md): no bf16 (no bf16 units on this
# CPU), no gradient checkpointing, reference log-probs precomputed once. `padding_free`
# is a no-op in TRL 1.16 ("temporarily unavailable"), `use_logits_to_keep` and the Liger
# kernel do not exist / do not install here, torch.compile gave no gain.
TRL_FAST = {"bf16": False, "gradient_checkpointing": False, "precompute_ref_log_probs": True,
            "precompute_ref_batch_size": BATCH}
# TRL's defaults with only bf16 turned off: isolates what the bf16 default costs on a CPU.
TRL_DEFAULT_FP32 = {"bf16": False}


def rows(n: int) -> list[dict]:
    """The benchmark pairs in TRL's conversational format (ours reads the same rows)."""
    from alignloop.data import read_pairs

    pairs = read_pairs("builtin:demo-pairs", limit=n)[0]
    return [{"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}]} for p in pairs]


def useful_tokens(n: int) -> list[int]:
    """Prompt once + chosen + rejected per pair, as tokenised for training."""
    from alignloop.data import read_pairs
    from alignloop.models import load_tokenizer
    from alignloop.training.batching import encode_pairs

    pairs = read_pairs("builtin:demo-pairs", limit=n)[0]
    enc, _ = encode_pairs(pairs, load_tokenizer(MODEL), max_length=MAX_LENGTH,
                          max_prompt_length=MAX_LENGTH - 1, progress=False)
    return [p.length for p in enc]


def matmul_peak_gflops(seconds: float = 3.0, n: int = 2048) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


# ------------------------------------------------------------------ workers (one process each)


def work_alignloop(lora: bool, steps: int, n_pairs: int, checkpointing: bool = False) -> dict:
    from alignloop.config import config_from_dict
    from alignloop.data import read_pairs
    from alignloop.training.trainer import train_dpo

    pairs = read_pairs("builtin:demo-pairs", limit=n_pairs)[0]
    cfg = config_from_dict({
        "model": {"name": MODEL, "lora": {"enabled": lora, **LORA}},
        "data": {"max_length": MAX_LENGTH, "max_prompt_length": MAX_LENGTH - 1},
        "train": {"batch_size": BATCH, "max_steps": steps, "learning_rate": 1e-5,
                  "gradient_checkpointing": checkpointing},
    })
    with tempfile.TemporaryDirectory() as out:
        r = train_dpo(pairs, out_dir=out, policy=MODEL, model_cfg=cfg.model, data_cfg=cfg.data,
                      train_cfg=cfg.train, progress=False)
        log = [json.loads(x) for x in (Path(out) / "train_log.jsonl").read_text().splitlines()]
    return {"step_s": [x["step_time_s"] for x in log], "step_tokens": [x["tokens"] for x in log],
            "reference_s": r.reference_seconds}


def work_trl(lora: bool, steps: int, n_pairs: int, settings: dict) -> dict:
    import datasets
    import torch
    from alignloop.models import load_model, load_tokenizer
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    datasets.disable_progress_bars()
    datasets.disable_caching()  # else a rerun reads TRL's precomputed reference log-probs for free
    model, tok = load_model(MODEL, dtype="float32"), load_tokenizer(MODEL)
    times: list[float] = []
    tokens: list[int] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(output_dir=out, per_device_train_batch_size=BATCH, max_steps=steps,
                         max_length=MAX_LENGTH, learning_rate=1e-5, report_to=[], use_cpu=True,
                         save_strategy="no", logging_steps=1, seed=0, dataloader_num_workers=0,
                         **settings)
        peft = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], target_modules="all-linear",
                          task_type="CAUSAL_LM") if lora else None
        t0 = time.perf_counter()  # construction included: TRL may precompute the reference there
        trainer = DPOTrainer(model=model, args=args, processing_class=tok, peft_config=peft,
                             train_dataset=datasets.Dataset.from_list(rows(n_pairs)),
                             callbacks=[Clock()])
        inner = trainer.training_step

        def counting_step(model, inputs, *a, **kw):
            # TRL runs prompt+chosen and prompt+rejected: real = 2P + C + R tokens and
            # completion = C + R, so useful (prompt once) = (real + completion) / 2.
            mask, comp = inputs.get("attention_mask"), inputs["completion_mask"]
            real = int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
            tokens.append((real + int(comp.sum())) // 2)
            return inner(model, inputs, *a, **kw)

        trainer.training_step = counting_step
        trainer.train()
        total = time.perf_counter() - t0
    del torch
    return {"step_s": times, "step_tokens": tokens,
            "reference_s": total - sum(times) if settings.get("precompute_ref_log_probs") else 0.0}


def worker(spec: dict) -> dict:
    import torch

    torch.manual_seed(0)
    fn = {"alignloop": lambda: work_alignloop(spec["lora"], spec["steps"], spec["pairs"]),
          "alignloop-gc": lambda: work_alignloop(spec["lora"], spec["steps"], spec["pairs"], True),
          "trl-default": lambda: work_trl(spec["lora"], spec["steps"], spec["pairs"], {}),
          "trl-default-fp32": lambda: work_trl(spec["lora"], spec["steps"], spec["pairs"],
                                               TRL_DEFAULT_FP32),
          "trl-fastest": lambda: work_trl(spec["lora"], spec["steps"], spec["pairs"], TRL_FAST)}
    out = fn[spec["setting"]]()
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


# ------------------------------------------------------------------ driver


def run_setting(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "timed_out_s": timeout, "error": f"no step finished within {timeout:.0f} s"}
    if p.returncode != 0:
        return {**spec, "error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "failed"}
    out = json.loads(p.stdout.strip().splitlines()[-1])
    return {**spec, **out, "wall_s": time.perf_counter() - t}


def summarise(r: dict, epoch_tokens: int, steps_per_epoch: int, n_params: int, peak: float) -> dict:
    if "timed_out_s" in r:
        # Not one step within the limit: an upper bound on its speed (an average step's tokens).
        return {**r, "tokens_per_s_below": epoch_tokens / steps_per_epoch / r["timed_out_s"]}
    if "error" in r or not r.get("step_s"):
        return r
    # The first step pays for allocator warm-up; every setting drops it when it ran more than one.
    skip = 1 if len(r["step_s"]) > 1 else 0
    r = {**r, "steps": len(r["step_s"]), "train_s": sum(r["step_s"][skip:]),
         "tokens": sum(r["step_tokens"][skip:])}
    tps = r["tokens"] / r["train_s"]
    flops_per_token = (4 if r["lora"] else 6) * n_params
    return {**r, "tokens_per_s": tps, "epoch_s": r["reference_s"] + epoch_tokens / tps,
            "extrapolated": r["steps"] < steps_per_epoch,
            "mfu": flops_per_token * tps / (peak * 1e9)}


def steps_per_epoch_of(meta: dict) -> int:
    return -(-meta["pairs"] // BATCH)


def table(results: list[dict], meta: dict) -> str:
    lines = ["| mode | setting | tokens/s | epoch (s) | peak RSS (MB) | MFU | vs TRL default "
             "| vs TRL default fp32 | vs TRL fastest |", "|---|---|---|---|---|---|---|---|---|"]
    by = {(r["lora"], r["setting"]): r for r in results}
    for r in results:
        mode = "LoRA" if r["lora"] else "full"
        if "tokens_per_s_below" in r:
            lines.append(f"| {mode} | {r['setting']} | < {r['tokens_per_s_below']:.1f} | "
                         f"> {r['timed_out_s'] * steps_per_epoch_of(meta):.0f} | | | | | |")
            continue
        if "error" in r:
            lines.append(f"| {mode} | {r['setting']} | error: {r['error'][:60]} | | | | | | |")
            continue

        def ratio(other, r=r):
            o = by.get((r["lora"], other))
            if o and "tokens_per_s_below" in o:
                return f"> {r['tokens_per_s'] / o['tokens_per_s_below']:.0f}x"
            return f"{r['tokens_per_s'] / o['tokens_per_s']:.1f}x" if o and "tokens_per_s" in o else "-"

        ep = f"{r['epoch_s']:.0f}" + ("*" if r["extrapolated"] else "")
        lines.append(f"| {mode} | {r['setting']} | {r['tokens_per_s']:.0f} | {ep} | "
                     f"{r['peak_rss_mb']:.0f} | {100 * r['mfu']:.0f}% | {ratio('trl-default')} | "
                     f"{ratio('trl-default-fp32')} | {ratio('trl-fastest')} |")
    lines.append("")
    lines.append(f"{meta['pairs']} pairs, batch {BATCH}, max length {MAX_LENGTH}, float32 (trl-default: "
                 f"bf16 autocast, TRL's own default), MFU against the float32 "
                 f"matmul peak measured in the run that produced the row (latest "
                 f"{meta['matmul_peak_gflops']:.0f} GFLOP/s); {meta['machine']}; "
                 f"{meta['date']}; `{meta['command']}`. tokens/s over the measured steps after the "
                 f"first; * = epoch time extrapolated from it (plus the reference pass).")
    return "\n".join(lines)


def update_readme(text: str, key: str = "dpo_throughput") -> None:
    from common import update_readme as update

    update(text, key)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=["quick", "full"], default="quick")
    ap.add_argument("--only", help="comma-separated settings to run (default: all)")
    ap.add_argument("--bf16-limit", type=float, default=600,
                    help="seconds allowed to TRL's bf16 default before reporting a bound (default: %(default)s)")
    ap.add_argument("--table-only", action="store_true",
                    help="re-render the table and README section from results/dpo_throughput.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.table_only:
        saved = json.loads((RESULTS / "dpo_throughput.json").read_text())
        md = table(saved["results"], saved["meta"])
        (RESULTS / "dpo_throughput.md").write_text(md + "\n")
        update_readme(md)
        print(md)
        return

    n_pairs = 64
    lengths = useful_tokens(n_pairs)
    steps_per_epoch = -(-n_pairs // BATCH)
    # TRL's defaults run bf16 on a CPU without bf16 units: minutes per step, so 1-2 steps only.
    steps = {"quick": {"alignloop": 2, "alignloop-gc": 2, "trl-fastest": 2, "trl-default-fp32": 1,
                       "trl-default": 1},
             "full": {"alignloop": steps_per_epoch, "alignloop-gc": steps_per_epoch,
                      "trl-fastest": steps_per_epoch,
                      "trl-default-fp32": 3, "trl-default": 3}}[args.size]
    settings = (args.only.split(",") if args.only else
                ["alignloop", "alignloop-gc", "trl-fastest", "trl-default-fp32", "trl-default"])
    peak = matmul_peak_gflops()
    from alignloop.models import load_model

    n_params = sum(p.numel() for p in load_model(MODEL).parameters())
    results = []
    previous = RESULTS / ("dpo_throughput.json" if args.size == "full" else "dpo_throughput.quick.json")
    if args.only and previous.exists():  # rerun some settings, keep the others' last results
        kept = json.loads(previous.read_text())["results"]
        results = [r for r in kept if r["setting"] not in settings]
    for lora in (False, True):
        for setting in settings:
            spec = {"setting": setting, "lora": lora, "steps": steps[setting], "pairs": n_pairs}
            print(f"running {setting} ({'LoRA' if lora else 'full'}, {spec['steps']} steps) ...", flush=True)
            # TRL's true default runs bf16 autocast on the CPU, which can be very slow without bf16
            # units (0.3 GFLOP/s measured for a bf16 matmul on one machine here): cap it, report a bound.
            limit = args.bf16_limit if setting == "trl-default" else 3600
            r = summarise(run_setting(spec, timeout=limit), sum(lengths), steps_per_epoch, n_params, peak)
            print(json.dumps(r), flush=True)
            results.append(r)
    order = ["alignloop", "alignloop-gc", "trl-fastest", "trl-default-fp32", "trl-default"]
    results.sort(key=lambda r: (r["lora"], order.index(r["setting"])))
    meta = {"pairs": n_pairs, "matmul_peak_gflops": peak, "n_params": n_params,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
            "date": date.today().isoformat(),
            "command": f"python benchmarks/dpo_throughput.py --size {args.size}"}
    RESULTS.mkdir(exist_ok=True)
    # Only a full pass is the record (and the README's table); a quick pass writes beside it.
    stem = "dpo_throughput" if args.size == "full" else "dpo_throughput.quick"
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    md = table(results, meta)
    (RESULTS / f"{stem}.md").write_text(md + "\n")
    if args.size == "full":
        update_readme(md)
    print(md)


if __name__ == "__main__":
    main()
