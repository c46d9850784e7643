"""DPO training throughput: alignloop's trainer against TRL's DPOTrainer, side by side in one run.

Same model (SmolLM2-135M-Instruct, float32 on CPU), same pairs (the bundled demo
set: chat prompts longer than the responses, as in dialogue data), same batch size
(8 pairs) and max length, full fine-tune and LoRA. Settings:

  alignloop      our trainer (prefix sharing, response-only output projection,
                 reference log-probs computed once and cached), model.precision fp32
  alignloop-bf16 the same with model.precision bf16-mixed (fp32 master weights, bf16
                 autocast around the forwards, log-probs in fp32; alignloop.placement)
  alignloop-bf16-fused  alignloop-bf16 with PyTorch's fused attention kernel instead of the
                 packed batches' matmul attention (alignloop.attention): what that
                 path is worth, side by side
  alignloop-gc   the same with train.gradient_checkpointing (memory first)
  trl-default    TRL's DPOTrainer with its defaults (bf16 and gradient checkpointing
                 on, the reference model run at every step)
  trl-default-fp32  TRL's defaults except bf16 (the bf16 default costs most on a CPU)
  trl-fastest    TRL with its fastest settings that run on a CPU (see TRL_FAST)

Each setting runs in its own process (clean peak memory). For every setting we
report: training tokens/s (useful tokens: prompt once + both responses, per
second of optimizer steps), time per epoch (reference pass included; the steps
part extrapolated from the measured tokens/s when fewer steps than an epoch
were run), peak RSS, and model-FLOPs utilisation against BOTH a float32 and a bf16
matmul peak measured in the same run (useful FLOPs/token: 6N for a full fine-tune,
4N for LoRA, where frozen weights get no weight-gradient matmul; N = parameters).
Every row states its precision and the CPU's bf16-relevant flags: a bf16 figure only
holds on a CPU with the same units. A bf16 setting that finishes no step within
`--bf16-limit` seconds is reported as a bound: tokens/s at most the bf16 matmul peak
over the FLOPs per token (every FLOP at the peak). One alignloop step is also
profiled by op class (benchmarks/dpo_step_profile.py).

    python benchmarks/dpo_throughput.py --size quick   # 8 pairs, 2 steps of 4, 4 settings (~15 min)
    python benchmarks/dpo_throughput.py --size full    # 64 pairs, a whole epoch where affordable
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
# Pairs per step: 8 (full); `--size quick` runs 4 (set for its workers through the environment).
BATCH = int(os.environ.get("BENCH_BATCH", "8"))
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


def matmul_peak_gflops(seconds: float = 3.0, n: int = 2048, dtype: str = "float32") -> float:
    """Best n x n x n matmul rate over `seconds`. For bf16 n starts at 256 and doubles only
    while one matmul takes under 0.1 s: without bf16 units a 2048 one takes over a minute."""
    import torch

    dt = getattr(torch, dtype)
    if dt != torch.float32:
        n = 256
        while n < 2048:
            a = torch.randn(n, n).to(dt)
            t = time.perf_counter()
            a @ a
            if time.perf_counter() - t > 0.1:
                break
            n *= 2
    a, b = torch.randn(n, n).to(dt), torch.randn(n, n).to(dt)
    a @ b
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def cpu_flags() -> str:
    """The CPU model and its bf16-relevant flags, e.g. "AMD EPYC: avx2 fma (no avx512_bf16/amx_bf16)"."""
    from alignloop.placement import cpu_info

    model, flags = cpu_info()
    shown = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "bf16")
             if f in (flags or [])]
    units = {"avx512_bf16", "amx_bf16", "bf16"} & set(shown)
    return f"{model}: {' '.join(shown) or 'flags unknown'}" + (
        "" if units else " (no avx512_bf16/amx_bf16: bf16 emulated)")


# ------------------------------------------------------------------ workers (one process each)


def work_alignloop(lora: bool, steps: int, n_pairs: int, checkpointing: bool = False,
                   precision: str = "fp32", fused_attention: bool = False,
                   compiled: bool = False) -> dict:
    from alignloop import attention
    from alignloop.config import config_from_dict
    from alignloop.data import read_pairs
    from alignloop.training.trainer import train_dpo

    if fused_attention:
        attention.MATMUL_SCORES = 0   # every call over the limit: PyTorch's fused kernel

    pairs = read_pairs("builtin:demo-pairs", limit=n_pairs)[0]
    cfg = config_from_dict({
        "model": {"name": MODEL, "precision": precision, "lora": {"enabled": lora, **LORA}},
        "data": {"max_length": MAX_LENGTH, "max_prompt_length": MAX_LENGTH - 1},
        "train": {"batch_size": BATCH, "max_steps": steps, "learning_rate": 1e-5,
                  "gradient_checkpointing": checkpointing, "compile": compiled},
    })
    with tempfile.TemporaryDirectory() as out:
        r = train_dpo(pairs, out_dir=out, policy=MODEL, model_cfg=cfg.model, data_cfg=cfg.data,
                      train_cfg=cfg.train, progress=False)
        log = [json.loads(x) for x in (Path(out) / "train_timing.jsonl").read_text().splitlines()]
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
    if spec["setting"] == "profile":
        from alignloop.data import read_pairs
        from dpo_step_profile import profile_step

        pairs = read_pairs("builtin:demo-pairs", limit=BATCH)[0]
        return profile_step(MODEL, pairs, batch=BATCH, max_length=MAX_LENGTH,
                            precision=spec["precision"], lora=LORA if spec["lora"] else None,
                            compiled=spec.get("compiled", False))
    fn = {"alignloop": lambda: work_alignloop(spec["lora"], spec["steps"], spec["pairs"]),
          "alignloop-bf16": lambda: work_alignloop(spec["lora"], spec["steps"], spec["pairs"],
                                                   precision="bf16-mixed"),
          "alignloop-bf16-fused": lambda: work_alignloop(spec["lora"], spec["steps"], spec["pairs"],
                                                         precision="bf16-mixed", fused_attention=True),
          "alignloop-compiled": lambda: work_alignloop(spec["lora"], spec["steps"], spec["pairs"],
                                                       compiled=True),
          "alignloop-bf16-compiled": lambda: work_alignloop(spec["lora"], spec["steps"], spec["pairs"],
                                                            precision="bf16-mixed", compiled=True),
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
        with tempfile.TemporaryDirectory(prefix="inductor-") as cache:
            env = {**os.environ, **({"TORCHINDUCTOR_CACHE_DIR": cache}
                                    if spec["setting"] in COMPILED else {})}
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**spec, "timed_out_s": timeout, "error": f"no step finished within {timeout:.0f} s"}
    if p.returncode != 0:
        return {**spec, "error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "failed"}
    out = json.loads(p.stdout.strip().splitlines()[-1])
    return {**spec, **out, "wall_s": time.perf_counter() - t}


PRECISION = {"alignloop-bf16": "bf16-mixed", "alignloop-bf16-fused": "bf16-mixed, fused attention",
             "alignloop-compiled": "fp32, compiled", "alignloop-bf16-compiled": "bf16-mixed, compiled",
             "trl-default": "bf16 autocast"}


def summarise(r: dict, epoch_tokens: int, steps_per_epoch: int, n_params: int,
              peaks: dict[str, float]) -> dict:
    """Tokens/s, epoch time and MFU against the fp32 and the bf16 matmul peaks."""
    flops_per_token = (4 if r["lora"] else 6) * n_params
    r = {**r, "precision": PRECISION.get(r["setting"], "fp32")}
    if "timed_out_s" in r:
        # Not one step within the limit: no measured rate. Its ceiling: every FLOP at the
        # bf16 matmul peak (autocast runs every linear layer in bf16).
        return {**r, "tokens_per_s_at_most": peaks["bf16"] * 1e9 / flops_per_token}
    if "error" in r or not r.get("step_s"):
        return r
    # The first step pays for allocator warm-up; every setting drops it when it ran more than one.
    skip = 1 if len(r["step_s"]) > 1 else 0
    r = {**r, "steps": len(r["step_s"]), "train_s": sum(r["step_s"][skip:]),
         "tokens": sum(r["step_tokens"][skip:])}
    tps = r["tokens"] / r["train_s"]
    return {**r, "tokens_per_s": tps, "epoch_s": r["reference_s"] + epoch_tokens / tps,
            "extrapolated": r["steps"] < steps_per_epoch,
            "mfu": flops_per_token * tps / (peaks["fp32"] * 1e9),
            "mfu_bf16": flops_per_token * tps / (peaks["bf16"] * 1e9)}


def steps_per_epoch_of(meta: dict) -> int:
    return -(-meta["pairs"] // meta.get("batch", 8))


def table(results: list[dict], meta: dict) -> str:
    lines = ["| mode | setting | precision | tokens/s | epoch (s) | peak RSS (MB) | MFU (fp32 peak) "
             "| MFU (bf16 peak) | vs TRL default | vs TRL fastest | vs alignloop fp32 | CPU flags |",
             "|" + "---|" * 12]
    by = {(r["lora"], r["setting"]): r for r in results}
    flags = meta.get("cpu_flags", meta["machine"])
    for r in results:
        mode, prec = ("LoRA" if r["lora"] else "full"), r.get("precision", "fp32")
        head = f"| {mode} | {r['setting']} | {prec} |"
        if "tokens_per_s_at_most" in r or "tokens_per_s_below" in r:
            bound = r.get("tokens_per_s_at_most", r.get("tokens_per_s_below"))
            lines.append(f"{head} no step in {r['timed_out_s']:.0f} s; <= {bound:.2f} | "
                         f"> {r['timed_out_s']:.0f} | | | | | | | {flags} |")
            continue
        if "error" in r:
            lines.append(f"{head} error: {r['error'][:60]} | | | | | | | | {flags} |")
            continue

        def ratio(other, r=r):
            o = by.get((r["lora"], other))
            if o and "tokens_per_s" not in o and ("tokens_per_s_at_most" in o or "tokens_per_s_below" in o):
                bound = o.get("tokens_per_s_at_most", o.get("tokens_per_s_below"))
                return f"> {r['tokens_per_s'] / bound:.0f}x"
            return f"{r['tokens_per_s'] / o['tokens_per_s']:.1f}x" if o and "tokens_per_s" in o else "-"

        ep = f"{r['epoch_s']:.0f}" + ("*" if r["extrapolated"] else "")
        mfu_bf16 = f"{100 * r['mfu_bf16']:.0f}%" if "mfu_bf16" in r else "-"
        lines.append(f"{head} {r['tokens_per_s']:.0f} | {ep} | {r['peak_rss_mb']:.0f} | "
                     f"{100 * r['mfu']:.0f}% | {mfu_bf16} | {ratio('trl-default')} | "
                     f"{ratio('trl-fastest')} | {ratio('alignloop')} | {flags} |")
    lines.append("")
    bf16 = meta.get("bf16_matmul_peak_gflops")
    load = (f"1-min load average {meta['load_avg_start'][0]} at the start and "
            f"{meta['load_avg_end'][0]} at the end (other work on the same cores); "
            if "load_avg_start" in meta else "")
    lines.append(f"{meta['pairs']} pairs, batch {meta.get('batch', 8)}, max length {MAX_LENGTH}. Matmul peaks measured "
                 f"in the run: fp32 {meta['matmul_peak_gflops']:.0f} GFLOP/s"
                 + (f", bf16 {bf16:.2f} GFLOP/s" if bf16 else "") + f"; {meta['machine']}; "
                 f"{meta['date']}; {load}`{meta['command']}`. tokens/s over the measured steps after the "
                 f"first; * = epoch time extrapolated from it (plus the reference pass). A bf16 "
                 f"setting with no step within the limit (model load and reference pass included) "
                 f"shows the ceiling of its tokens/s: the bf16 peak over FLOPs per token.")
    firsts = [f"{'LoRA' if r['lora'] else 'full'} {r['setting']} {r['step_s'][0]:.1f} s (eager "
              f"{by[r['lora'], eager]['step_s'][0]:.1f} s)"
              for r in results if r["setting"] in COMPILED and r.get("step_s")
              for eager in [r["setting"].removesuffix("-compiled")]
              if by.get((r["lora"], eager), {}).get("step_s")]
    if firsts:
        lines += ["", "The compiled rows' first step, dropped above, compiles with an empty inductor "
                      "cache: " + "; ".join(firsts) + "."]
    if meta.get("profile"):
        from dpo_step_profile import table as profile_table

        lines += ["", "Time of one alignloop step by op class (torch.profiler, self time; "
                  "benchmarks/dpo_step_profile.py; matmul rate: the matmuls' FLOPs over their "
                  "time, against the peak of the step's precision):", "",
                  profile_table(meta["profile"], {"fp32": meta["matmul_peak_gflops"],
                                                  "bf16": meta.get("bf16_matmul_peak_gflops")})]
        dates = sorted({p["date"] for p in meta["profile"] if p.get("date")} - {meta.get("date")})
        if dates:
            lines.append(f"(profiled on {', '.join(dates)} with `--profile-only`: the code of "
                         f"that day, the rows above are the run's)")
    return "\n".join(lines)


def update_readme(text: str, key: str = "dpo_throughput") -> None:
    from common import update_readme as update

    update(text, key)


SETTINGS = ["alignloop", "alignloop-bf16", "alignloop-bf16-fused", "alignloop-compiled",
            "alignloop-bf16-compiled", "alignloop-gc", "trl-fastest", "trl-default-fp32", "trl-default"]
BF16_SETTINGS = ("alignloop-bf16", "alignloop-bf16-fused", "alignloop-bf16-compiled", "trl-default")
COMPILED = ("alignloop-compiled", "alignloop-bf16-compiled")
"""`train.compile` rows: each worker gets an empty inductor cache, so its first step (dropped
from tokens/s, as every row's is) pays the whole compile; the table's footer gives it."""


PROFILED = (("fp32", False), ("bf16-mixed", False), ("bf16-mixed", True))
"""(precision, compiled) of the profiled full fine-tune steps."""


def profile_steps() -> list[dict]:
    """One op-class profile per `PROFILED` step, each in its own process."""
    return [{**run_setting({"setting": "profile", "lora": False, "precision": precision,
                            "compiled": compiled}, timeout=900), "date": date.today().isoformat()}
            for precision, compiled in PROFILED]


def publish(stem: str, results: list[dict], meta: dict, *, write_json: bool = True) -> None:
    """Write results/STEM.json (unless only re-rendering) and STEM.md, update the README block
    of that name, and print the table."""
    RESULTS.mkdir(exist_ok=True)
    if write_json:
        (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    md = table(results, meta)
    (RESULTS / f"{stem}.md").write_text(md + "\n")
    update_readme(md, stem)
    print(md)


def plan(size: str) -> tuple[int, list[str], dict[str, int], float]:
    """(pairs, settings, steps per setting, default bf16 time limit) of a run size. `quick`
    keeps the four settings the targets compare, on 8 pairs in 2 steps of 4 (about 15
    minutes on 2 cores)."""
    if size == "quick":
        return 8, ["alignloop", "alignloop-bf16", "trl-fastest", "trl-default"], \
            dict.fromkeys(SETTINGS, 2), 90.0
    per_epoch = -(-64 // BATCH)
    steps = {**dict.fromkeys(SETTINGS, per_epoch), "trl-default-fp32": 3, "trl-default": 3}
    return 64, SETTINGS, steps, 600.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=["quick", "full"], default="quick")
    ap.add_argument("--only", help="comma-separated settings to run (default: all of the size)")
    ap.add_argument("--bf16-limit", type=float,
                    help="seconds allowed to a bf16 setting before reporting its ceiling "
                         "(default: 90 quick, 600 full)")
    ap.add_argument("--no-profile", action="store_true", help="skip the op-class profile")
    ap.add_argument("--profile-only", action="store_true",
                    help="rerun only the op-class profile; keep the saved rows")
    ap.add_argument("--table-only", action="store_true",
                    help="re-render the table and README section from the saved results")
    ap.add_argument("--name", help="results file stem for a full pass kept beside the record "
                                   "(e.g. another CPU's: dpo_throughput.xeon_amx); it updates the "
                                   "README block of that name, if there is one")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    from common import plain_name

    stem = (plain_name(ap, args.name) if args.name
            else "dpo_throughput" if args.size == "full" else "dpo_throughput.quick")
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.profile_only or args.table_only:
        saved = json.loads((RESULTS / f"{stem}.json").read_text())
        if args.profile_only:
            saved["meta"]["profile"] = profile_steps()
        publish(stem, saved["results"], saved["meta"], write_json=args.profile_only)
        return

    if args.size == "quick" and "BENCH_BATCH" not in os.environ:
        global BATCH
        os.environ["BENCH_BATCH"] = "4"   # the workers read it
        BATCH = 4
    n_pairs, settings, steps, bf16_limit = plan(args.size)
    settings = args.only.split(",") if args.only else settings
    bf16_limit = args.bf16_limit or bf16_limit
    load_start = [round(x, 2) for x in os.getloadavg()]
    lengths = useful_tokens(n_pairs)
    steps_per_epoch = -(-n_pairs // BATCH)
    peaks = {"fp32": matmul_peak_gflops(), "bf16": matmul_peak_gflops(dtype="bfloat16")}
    from alignloop.models import load_model

    n_params = sum(p.numel() for p in load_model(MODEL).parameters())
    results = []
    previous = RESULTS / f"{stem}.json"
    if args.only and previous.exists():  # rerun some settings, keep the others' last results
        kept = json.loads(previous.read_text())["results"]
        results = [r for r in kept if r["setting"] not in settings]
    for lora in (False, True):
        for setting in settings:
            spec = {"setting": setting, "lora": lora, "steps": steps[setting], "pairs": n_pairs}
            print(f"running {setting} ({'LoRA' if lora else 'full'}, {spec['steps']} steps) ...", flush=True)
            # bf16 on a CPU without bf16 units runs matmuls hundreds of times slower than
            # fp32 (0.2 GFLOP/s measured on an AVX2-only EPYC): cap it, report its ceiling.
            limit = bf16_limit if setting in BF16_SETTINGS else 3600
            r = summarise(run_setting(spec, timeout=limit), sum(lengths), steps_per_epoch, n_params,
                          peaks)
            print(json.dumps(r), flush=True)
            results.append(r)
    results.sort(key=lambda r: (r["lora"], SETTINGS.index(r["setting"])))
    profile = [] if args.no_profile else profile_steps()
    load = [round(x, 2) for x in os.getloadavg()]  # others' work on the same cores slows every row
    meta = {"pairs": n_pairs, "batch": BATCH, "load_avg_start": load_start, "load_avg_end": load,
            "matmul_peak_gflops": peaks["fp32"],
            "bf16_matmul_peak_gflops": peaks["bf16"], "n_params": n_params,
            "cpu_flags": cpu_flags(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
            "date": date.today().isoformat(), "profile": profile,
            "command": f"python benchmarks/dpo_throughput.py --size {args.size}"
                       + (f" --name {args.name}" if args.name else "")
                       + (f" --only {args.only} (other rows kept from the run before)"
                          if args.only else "")}
    # A full pass is the record (results/dpo_throughput.*); a quick pass writes beside it.
    # Each updates its own README block.
    publish(stem, results, meta)


if __name__ == "__main__":
    main()
