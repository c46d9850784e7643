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

    python benchmarks/dpo_passes.py [--precisions fp32,bf16-mixed] [--passes 3] [--name STEM]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine, plain_name, today, write_results  # noqa: E402
from dpo_throughput import MAX_LENGTH, MODEL, cpu_flags  # noqa: E402

PAIRS, BATCH = 64, 8


def worker(precision: str, passes: int) -> dict:
    """Seconds per step of every pass (in this process)."""
    from alignloop.data import read_pairs
    from dpo_step_profile import trainer_steps

    pairs = read_pairs("builtin:demo-pairs", limit=PAIRS)[0]
    step, _ = trainer_steps(MODEL, pairs, batch=BATCH, max_length=MAX_LENGTH, precision=precision)
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
    return {"precision": precision, "step_s": steps, "tokens_per_pass": tokens,
            "system_s": system_s, "minor_faults": faults}


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
    if "fp32" in by and "bf16-mixed" in by:
        lines += ["", f"bf16-mixed against fp32: {by['fp32'][0] / by['bf16-mixed'][0]:.2f}x in "
                      f"pass 0, {by['fp32'][-1] / by['bf16-mixed'][-1]:.2f}x in the last pass."]
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
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    plain_name(ap, args.name)
    if args.worker:
        print(json.dumps(worker(args.worker, args.passes)))
        return
    rows = []
    for precision in args.precisions.split(","):
        print(f"running {precision} ...", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, __file__, "--worker", precision,
                              "--passes", str(args.passes)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    meta = {"machine": machine(), "cpu": cpu_flags(), "date": today(),
            "command": "python benchmarks/dpo_passes.py"
                       + (f" --name {args.name}" if args.name != "dpo_passes" else "")}
    md = table(rows, meta)
    write_results(args.name, meta, rows, md)
    print(md)


if __name__ == "__main__":
    main()
