"""Cold against warm DPO steps: the same 8 batches trained three times over in one process.

dpo_throughput.py times one epoch in a fresh process, so its tokens/s includes a process's
first steps. This separates the two: alignloop's trainer (`_optimizer_step`, the packed
forward, loss, backward, clipping and AdamW) runs the benchmark's 64 pairs as 8 batches of
8, then the same 8 batches again, twice, in one process, per precision. Pass 0 is what a
short run pays; passes 1-2 are the steady state of a long one. Each precision runs in its
own process, one after the other.

Each pass also records the process's system CPU time and minor page faults
(`getrusage`): a pass that grows the heap pays a page fault, and the kernel's zeroing,
for every 4 KiB it touches first, which no choice of precision shortens.

`--compile` adds each precision with `train.compile` (alignloop.training.compile), run
twice in an empty inductor cache of its own: first compiling everything in pass 0, then
from the cache the first run left (what every later run on the machine pays).

    python benchmarks/dpo_passes.py [--precisions fp32,bf16-mixed] [--passes 3] [--compile]
        [--name STEM]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine, plain_name, today, write_results  # noqa: E402
from dpo_throughput import MAX_LENGTH, MODEL, cpu_flags  # noqa: E402

PAIRS, BATCH = 64, 8
FIRST, CACHED = " compiled, first compile", " compiled, cached"
"""Row labels of `--compile`: an empty inductor cache, then the cache the first run left."""


def worker(setting: str, passes: int) -> dict:
    """Seconds per step of every pass (in this process). `setting`: a precision, or a
    precision + "+compile" (`train.compile`)."""
    from alignloop.data import read_pairs
    from dpo_step_profile import trainer_steps

    precision, _, compiled = setting.partition("+")
    pairs = read_pairs("builtin:demo-pairs", limit=PAIRS)[0]
    step, _ = trainer_steps(MODEL, pairs, batch=BATCH, max_length=MAX_LENGTH, precision=precision,
                            compiled=compiled == "compile")
    batches = [list(range(i, i + BATCH)) for i in range(0, PAIRS, BATCH)]
    steps, system_s, faults, tokens = [], [], [], 0
    for k in range(passes):
        seconds = []
        before = resource.getrusage(resource.RUSAGE_SELF)
        for idx in batches:
            t0 = time.perf_counter()
            out = step(idx)
            seconds.append(time.perf_counter() - t0)
            if k == 0:
                tokens += out["tokens"]
        steps.append(seconds)
        after = resource.getrusage(resource.RUSAGE_SELF)
        system_s.append(after.ru_stime - before.ru_stime)
        faults.append(after.ru_minflt - before.ru_minflt)
    return {"precision": setting, "step_s": steps, "tokens_per_pass": tokens,
            "system_s": system_s, "minor_faults": faults}


def _run(setting: str, passes: int, inductor_cache: str = "") -> dict:
    """One worker process; `inductor_cache`: its TORCHINDUCTOR_CACHE_DIR."""
    print(f"running {setting} ...", file=sys.stderr, flush=True)
    env = {**os.environ, **({"TORCHINDUCTOR_CACHE_DIR": inductor_cache} if inductor_cache else {})}
    out = subprocess.run([sys.executable, __file__, "--worker", setting, "--passes", str(passes)],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict], meta: dict) -> str:
    passes = len(rows[0]["step_s"])
    lines = ["| precision | " + " | ".join(f"pass {k} (s)" for k in range(passes))
             + " | tokens/s, pass 0 | tokens/s, last pass | system s per pass "
               "| minor page faults per pass |",
             "|---|" + "---|" * (passes + 4)]
    for r in rows:
        totals = [sum(p) for p in r["step_s"]]
        # results from before the fault columns have none
        system = " / ".join(f"{x:.1f}" for x in r.get("system_s", ())) or "-"
        faults = " / ".join(f"{x:,}" for x in r.get("minor_faults", ())) or "-"
        lines.append(f"| {r['precision']} | " + " | ".join(f"{t:.1f}" for t in totals)
                     + f" | {r['tokens_per_pass'] / totals[0]:.0f} | "
                       f"{r['tokens_per_pass'] / totals[-1]:.0f} | {system} | {faults} |")
    by = {r["precision"]: [sum(p) for p in r["step_s"]] for r in rows}
    ratios = [("bf16-mixed", "fp32"), (f"bf16-mixed{CACHED}", f"fp32{CACHED}"),
              (f"bf16-mixed{CACHED}", "fp32"), (f"bf16-mixed{FIRST}", "fp32"),
              (f"bf16-mixed{CACHED}", "bf16-mixed"), (f"fp32{CACHED}", "fp32")]
    said = [f"{a} against {b}: {by[b][0] / by[a][0]:.2f}x in pass 0, "
            f"{by[b][-1] / by[a][-1]:.2f}x in the last pass." for a, b in ratios if a in by and b in by]
    lines += [""] + [f"- {s}" if len(said) > 1 else s for s in said] if said else []
    lines.append(f"{PAIRS} pairs as {PAIRS // BATCH} batches of {BATCH}, max length {MAX_LENGTH}, "
                 f"full fine-tune; {meta['machine']} ({meta['cpu']}); {meta['date']}; "
                 f"`{meta['command']}`.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--precisions", default="fp32,bf16-mixed")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--name", default="dpo_passes",
                    help="results file stem and README block (e.g. another CPU's: "
                         "dpo_passes.xeon_amx); default %(default)s")
    ap.add_argument("--compile", action="store_true",
                    help="also each precision with train.compile, twice: with an empty inductor "
                         "cache (pass 0 pays the whole compile), then with the cache it left")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    plain_name(ap, args.name)
    precisions = args.precisions.split(",")
    bad = [p for p in precisions if p not in ("fp32", "bf16-mixed", "bf16")]
    if bad:
        ap.error(f"argument --precisions: unknown {bad}; valid: fp32, bf16-mixed, bf16")
    if args.worker:
        print(json.dumps(worker(args.worker, args.passes)))
        return
    rows = [_run(p, args.passes) for p in precisions]
    if args.compile:
        for p in precisions:
            with tempfile.TemporaryDirectory(prefix="inductor-") as cache:
                rows += [{**_run(f"{p}+compile", args.passes, cache), "precision": p + label}
                         for label in (FIRST, CACHED)]
    meta = {"machine": machine(), "cpu": cpu_flags(), "date": today(),
            "command": "python benchmarks/dpo_passes.py"
                       + (f" --precisions {args.precisions}" if args.precisions != "fp32,bf16-mixed" else "")
                       + (" --compile" if args.compile else "")
                       + (f" --name {args.name}" if args.name != "dpo_passes" else "")}
    md = table(rows, meta)
    write_results(args.name, meta, rows, md)
    print(md)


if __name__ == "__main__":
    main()
