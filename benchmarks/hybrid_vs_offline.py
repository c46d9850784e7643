"""Hybrid loop vs offline DPO on the demo task, at the same label budget and training steps.

    python benchmarks/hybrid_vs_offline.py --size quick|full

Per seed, two runs of alignloop on the embedded SmolLM2-135M-Instruct (LoRA, CPU):

- offline: one DPO round on B static pairs drawn (seeded) from the demo's static set,
  which is base-model samples on the static prompt mix, labeled by the panel (three
  votes each). A team that only has a fixed preference set.
- hybrid: round 0 on the first B/2 of those same pairs, then two online rounds that
  mine failure slices on the held-out prompts, sample there, and spend B/4 panel labels
  each through the labeler: the judges pick one pair per prompt (max-min of their scores,
  10% random pairs) and label none of them (`routing.auto_threshold: 0.5`), so every
  training label of both arms is a panel label.

Training steps are equal (the hybrid's rounds split the offline run's steps in three;
its online rounds also replay earlier pairs). The hybrid spends extra compute on
sampling candidates and on per-round evaluation; that is the price of the loop.

Measured on the held-out prompts, with the panel's mean utility as ground truth: the
latent reward on the failure slices the hybrid chose (per seed) and overall, KL to the
base (k1 per sequence, temperature-1 samples), and the win rate of hybrid over offline
by latent reward. Intervals: a cluster bootstrap over (seed, prompt) of the paired
per-prompt difference, and a Student-t interval over the seeds' means.
Target: hybrid beats offline on the failure slices with a 95% interval that excludes
zero, at no more KL to the base.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, machine, results_name, today, write_results  # noqa: E402
from loop_bench import (  # noqa: E402
    RUNS,
    demo_raw,
    fmt_ci,
    kl_to_base,
    last_round,
    make_config,
    mean_ci,
    report,
    run_loop,
    samples,
    static_rows,
    t_interval,
    write_rows,
)

SIZES = {
    # budget = panel-labeled pairs per arm; steps = optimizer steps per arm (8 pairs each)
    "quick": {"seeds": 1, "budget": 32, "steps": 6, "eval_prompts": 24, "max_new_tokens": 32},
    "full": {"seeds": 3, "budget": 64, "steps": 24, "eval_prompts": 0, "max_new_tokens": 32},
}


def arm_configs(seed: int, size: dict, work: Path):
    """(offline config, hybrid config) for one seed; writes their static pair files."""
    b = size["budget"]
    rows = static_rows()
    random.Random(seed).shuffle(rows)
    offline_file = write_rows(work / "offline_pairs.jsonl", rows[:b])
    hybrid_file = write_rows(work / "hybrid_pairs.jsonl", rows[: b // 2])
    per_round = (b - b // 2) // 2
    common = {"train.seed": seed, "loop.seed": seed, "loop.eval_prompts": size["eval_prompts"],
              "generation.max_new_tokens": size["max_new_tokens"],
              "labeling.routing.auto_threshold": 0.5, "loop.gate.action": "flag"}
    raw = demo_raw()
    offline = make_config(raw, {**common, "data.path": str(offline_file), "loop.rounds": 1,
                                "train.max_steps": size["steps"], "labeling.human.budget": 0})
    hybrid = make_config(raw, {**common, "data.path": str(hybrid_file), "loop.rounds": 3,
                               "train.max_steps": size["steps"] // 3,
                               "labeling.human.budget": per_round,
                               "labeling.selection.pairs_per_prompt": 1,
                               "loop.prompts_per_round": per_round})
    return offline, hybrid


def _labels(run_dir: Path, k_last: int) -> dict:
    """Training labels the run spent: static pairs of round 0 plus labeled online pairs."""
    from alignloop.artifacts import read_parquet

    counts = {"static": len(read_parquet(run_dir / "round_000" / "pairs.parquet"))
              + len(read_parquet(run_dir / "round_000" / "heldout_pairs.parquet"))}
    for k in range(1, k_last + 1):
        for r in read_parquet(run_dir / f"round_{k:03d}" / "labeled_pairs.parquet"):
            counts[r["source"]] = counts.get(r["source"], 0) + 1
    return counts


def seed_result(seed: int, off_dir: Path, hyb_dir: Path) -> dict:
    k = last_round(hyb_dir)
    failing: list[str] = []
    for j in range(1, k + 1):
        for s in json.loads((hyb_dir / f"round_{j:03d}" / "slices.json").read_text())["chosen"]:
            if s not in failing:
                failing.append(s)
    key = lambda r: (r["prompt_id"], r["sample_index"])  # noqa: E731
    hyb = {key(r): r for r in samples(hyb_dir, k)}
    off = {key(r): r for r in samples(off_dir, 0)}
    base = {key(r): r for r in samples(off_dir, 0, "base")}
    rows = [{"seed": seed, "prompt_id": kk[0], "slice": off[kk]["slice"],
             "failing": off[kk]["slice"] in failing, "base": base[kk]["latent_reward"],
             "offline": off[kk]["latent_reward"], "hybrid": hyb[kk]["latent_reward"]}
            for kk in sorted(off) if kk in hyb and kk in base]
    return {"seed": seed, "rounds": k + 1, "failing_slices": failing, "rows": rows,
            "kl_offline": kl_to_base(report(off_dir, 0)), "kl_hybrid": kl_to_base(report(hyb_dir, k)),
            "labels_offline": _labels(off_dir, 0), "labels_hybrid": _labels(hyb_dir, k)}


def summarise(per_seed: list[dict]) -> dict:
    rows = [r for s in per_seed for r in s["rows"]]
    out: dict = {}
    for part, sub in (("failing", [r for r in rows if r["failing"]]), ("overall", rows)):
        groups = [f"{r['seed']}:{r['prompt_id']}" for r in sub]
        out[part] = {
            **{arm: mean_ci([r[arm] for r in sub], groups) for arm in ("base", "offline", "hybrid")},
            "diff": mean_ci([r["hybrid"] - r["offline"] for r in sub], groups),
            "win": mean_ci([1.0 if r["hybrid"] > r["offline"] else 0.5 if r["hybrid"] == r["offline"]
                            else 0.0 for r in sub], groups),
            "diff_by_seed": t_interval([
                sum(r["hybrid"] - r["offline"] for r in sub if r["seed"] == s["seed"])
                / max(1, sum(1 for r in sub if r["seed"] == s["seed"])) for s in per_seed]),
        }
    out["kl_offline"] = t_interval([s["kl_offline"]["value"] for s in per_seed])
    out["kl_hybrid"] = t_interval([s["kl_hybrid"]["value"] for s in per_seed])
    d = out["failing"]["diff"]
    out["target_met"] = bool(d["lo"] > 0 and out["kl_hybrid"]["value"] <= out["kl_offline"]["value"])
    return out


def table(per_seed: list[dict], summary: dict, size_name: str, size: dict) -> str:
    f, o = summary["failing"], summary["overall"]
    steps = size["steps"]
    lines = [
        "| arm | training labels | optimizer steps | panel reward, failure slices | overall "
        "| KL to base (nats/seq, t-interval over seeds) |",
        "|---|---|---|---|---|---|",
        f"| base model | 0 | 0 | {fmt_ci(f['base'])} | {fmt_ci(o['base'])} | 0 |",
        f"| offline: one DPO round on static pairs | {size['budget']} static | {steps} | "
        f"{fmt_ci(f['offline'])} | {fmt_ci(o['offline'])} | {fmt_ci(summary['kl_offline'], 2)} |",
        f"| hybrid: round 0 + 2 online rounds | {size['budget'] // 2} static + "
        f"{size['budget'] - size['budget'] // 2} online | {steps // 3} x 3 | {fmt_ci(f['hybrid'])} | "
        f"{fmt_ci(o['hybrid'])} | {fmt_ci(summary['kl_hybrid'], 2)} |",
        "",
        "| seed | failure slices (chosen by the hybrid) | hybrid - offline, failure slices "
        "| overall | KL offline | KL hybrid | labels offline / hybrid |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in per_seed:
        fr = [r for r in s["rows"] if r["failing"]]
        mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
        lab = lambda c: " + ".join(f"{v} {k}" for k, v in c.items())  # noqa: E731
        lines.append(
            f"| {s['seed']} | {', '.join(s['failing_slices']) or 'none'} | "
            f"{mean([r['hybrid'] - r['offline'] for r in fr]):+.3f} | "
            f"{mean([r['hybrid'] - r['offline'] for r in s['rows']]):+.3f} | "
            f"{s['kl_offline']['value']:.2f} | {s['kl_hybrid']['value']:.2f} | "
            f"{lab(s['labels_offline'])} / {lab(s['labels_hybrid'])} |")
    verdict = "**met**" if summary["target_met"] else "**not met**"
    lines += [
        "",
        f"- Hybrid - offline, panel reward on the failure slices: {fmt_ci(f['diff'])} "
        f"(bootstrap over seed x prompt); over seeds: {fmt_ci(f['diff_by_seed'])} (t, "
        f"{len(per_seed)} seeds). Overall: {fmt_ci(o['diff'])}.",
        f"- Win rate of hybrid over offline by panel reward: failure slices {fmt_ci(f['win'])}, "
        f"overall {fmt_ci(o['win'])} (ties half).",
        f"- Target (hybrid beats offline on the failure slices, 95% interval excludes 0, at no "
        f"more KL to the base): {verdict}.",
        f"{machine()}; {today()}; `python benchmarks/hybrid_vs_offline.py --size {size_name}`.",
    ]
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    arms = ("base", "offline", "hybrid")
    for i, part in enumerate(("failing", "overall")):
        for j, arm in enumerate(arms):
            e = summary[part][arm]
            x = i * 4 + j
            ax.bar(x, e["value"], color=("#999", "#d98c3f", "#3f7fd9")[j],
                   label=arm if i == 0 else None)
            ax.errorbar(x, e["value"], yerr=[[e["value"] - e["lo"]], [e["hi"] - e["value"]]],
                        color="k", capsize=3)
    ax.set_xticks([1, 5], ["failure slices", "all held-out prompts"])
    ax.set_ylabel("panel reward (ground truth)")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="quick")
    ap.add_argument("--seeds", type=int, help="override the size's number of seeds")
    ap.add_argument("--no-readme", action="store_true", help="write results/ only")
    args = ap.parse_args()
    size = dict(SIZES[args.size], **({"seeds": args.seeds} if args.seeds else {}))
    per_seed = []
    for seed in range(size["seeds"]):
        work = RUNS / "hybrid_vs_offline" / args.size / f"seed{seed}"
        offline, hybrid = arm_configs(seed, size, work)
        print(f"== seed {seed}: offline", flush=True)
        run_loop(offline, work / "offline")
        print(f"== seed {seed}: hybrid", flush=True)
        run_loop(hybrid, work / "hybrid")
        per_seed.append(seed_result(seed, work / "offline", work / "hybrid"))
    summary = summarise(per_seed)
    md = table(per_seed, summary, args.size, size)
    RESULTS.mkdir(exist_ok=True)
    plot(summary, RESULTS / (results_name("hybrid_vs_offline", args.size) + ".png"))
    meta = {"size": args.size, **size, "machine": machine(), "date": today(),
            "command": f"python benchmarks/hybrid_vs_offline.py --size {args.size}",
            "target": "hybrid beats offline on the failure slices (95% CI excludes 0) "
                      "at no more KL to the base", "target_met": summary["target_met"]}
    write_results(results_name("hybrid_vs_offline", args.size), meta, {"summary": summary, "seeds": [
        {k: v for k, v in s.items() if k != "rows"} for s in per_seed]}, md,
        readme=args.size == "full" and not args.no_readme)
    print(md)


if __name__ == "__main__":
    main()
