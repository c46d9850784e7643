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

Two more arms: `hybrid_base`, the hybrid with `reference.mode: base` (each round
anchored to the base model rather than the previous policy), and `offline_lr3`, the
offline arm at three times the learning rate (more KL to the base at the same
compute), so a hybrid can be judged against an offline policy that drifted as far.

Training steps are equal (the hybrid's rounds split the offline run's steps in three;
its online rounds also replay earlier pairs). The hybrid spends extra compute on
sampling candidates and on per-round evaluation; that is the price of the loop.

Measured on the held-out prompts, with the panel's mean utility as ground truth: the
latent reward on the failure slices the hybrid chose (per seed) and overall, KL to the
base (k1 per sequence, temperature-1 samples), and the win rate of hybrid over offline
by latent reward. Intervals: a cluster bootstrap over (seed, prompt) of the paired
per-prompt difference, and a Student-t interval over the seeds' means.
Target: hybrid beats offline on the failure slices with a 95% interval that excludes
zero, at no more KL to the base: met for a hybrid arm when at least one offline arm has
at least its KL and the hybrid beats every such arm.
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


HYBRIDS = {"hybrid": "hybrid, reference = previous policy (default)",
           "hybrid_base": "hybrid, reference = base model"}
OFFLINE = {"offline": "offline: one DPO round on static pairs",
           "offline_lr3": "offline, learning rate x3 (more KL at the same compute)"}
ARMS = (*OFFLINE, *HYBRIDS)


def arm_configs(seed: int, size: dict, work: Path, extra: dict | None = None) -> dict:
    """{arm: config} for one seed; writes their static pair files. `extra`: more overrides
    for every arm (e.g. `{"train.beta": 0.3}`, reward_kl_frontier.py's sweep)."""
    b = size["budget"]
    rows = static_rows()
    random.Random(seed).shuffle(rows)
    offline_file = write_rows(work / "offline_pairs.jsonl", rows[:b])
    hybrid_file = write_rows(work / "hybrid_pairs.jsonl", rows[: b // 2])
    per_round = (b - b // 2) // 2
    common = {"train.seed": seed, "loop.seed": seed, "loop.eval_prompts": size["eval_prompts"],
              "generation.max_new_tokens": size["max_new_tokens"],
              "labeling.routing.auto_threshold": 0.5, "loop.gate.action": "flag", **(extra or {})}
    hybrid = {**common, "data.path": str(hybrid_file), "loop.rounds": 3,
              "train.max_steps": size["steps"] // 3, "labeling.human.budget": per_round,
              "labeling.selection.pairs_per_prompt": 1, "loop.prompts_per_round": per_round}
    raw = demo_raw()
    return {"offline": make_config(raw, {**common, "data.path": str(offline_file),
                                         "loop.rounds": 1, "train.max_steps": size["steps"],
                                         "labeling.human.budget": 0}),
            "offline_lr3": make_config(raw, {**common, "data.path": str(offline_file),
                                             "loop.rounds": 1, "train.max_steps": size["steps"],
                                             "labeling.human.budget": 0,
                                             "train.learning_rate": 3 * raw["train"]["learning_rate"]}),
            "hybrid": make_config(raw, hybrid),
            "hybrid_base": make_config(raw, {**hybrid, "reference.mode": "base"})}


def _labels(run_dir: Path, k_last: int) -> dict:
    """Training labels the run spent: static pairs of round 0 plus labeled online pairs."""
    from alignloop.artifacts import read_parquet

    counts = {"static": len(read_parquet(run_dir / "round_000" / "pairs.parquet"))
              + len(read_parquet(run_dir / "round_000" / "heldout_pairs.parquet"))}
    for k in range(1, k_last + 1):
        for r in read_parquet(run_dir / f"round_{k:03d}" / "labeled_pairs.parquet"):
            counts[r["source"]] = counts.get(r["source"], 0) + 1
    return counts


def _finished(run_dir: Path, rounds: int) -> bool:
    """The run reported its last round, or ended early on its own (no failure slice left)."""
    path = run_dir / "state.json"
    if not path.exists():
        return False
    state = json.loads(path.read_text())["rounds"]
    return ("report" in state.get(str(rounds - 1), {}).get("stages", {})
            or any(r.get("ended") for r in state.values()))


def seed_result(seed: int, dirs: dict[str, Path]) -> dict:
    """Per held-out sample, each finished arm's panel reward; per arm, KL to base and labels
    spent. Arms that did not run for this seed are left out. The failure slices are the
    slices the default hybrid chose in any round (the loop as users run it)."""
    dirs = {arm: d for arm, d in dirs.items()
            if _finished(d, 1 if arm in OFFLINE else 3) or arm in ("offline", "hybrid")}
    last = {arm: last_round(d) for arm, d in dirs.items()}
    failing: list[str] = []
    for j in range(1, last["hybrid"] + 1):
        for sl in json.loads((dirs["hybrid"] / f"round_{j:03d}" / "slices.json").read_text())["chosen"]:
            if sl not in failing:
                failing.append(sl)
    key = lambda r: (r["prompt_id"], r["sample_index"])  # noqa: E731
    by_arm = {arm: {key(r): r for r in samples(d, last[arm])} for arm, d in dirs.items()}
    base = {key(r): r for r in samples(dirs["offline"], 0, "base")}
    keys = [kk for kk in sorted(base) if all(kk in rows for rows in by_arm.values())]
    rows = [{"seed": seed, "prompt_id": kk[0], "slice": base[kk]["slice"],
             "failing": base[kk]["slice"] in failing, "base": base[kk]["latent_reward"],
             **{arm: by_arm[arm][kk]["latent_reward"] for arm in dirs}} for kk in keys]
    return {"seed": seed, "failing_slices": failing, "rows": rows,
            "kl": {arm: kl_to_base(report(d, last[arm])) for arm, d in dirs.items()},
            "labels": {arm: _labels(d, last[arm]) for arm, d in dirs.items()}}


def _vs(sub: list[dict], h: str, o: str, per_seed: list[dict]) -> dict:
    """Paired comparison of arm h against arm o over the rows of `sub` that have both."""
    sub = [r for r in sub if h in r and o in r]
    groups = [f"{r['seed']}:{r['prompt_id']}" for r in sub]
    seeds = [s["seed"] for s in per_seed if h in s["kl"] and o in s["kl"]]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {"diff": mean_ci([r[h] - r[o] for r in sub], groups),
            "win": mean_ci([1.0 if r[h] > r[o] else 0.5 if r[h] == r[o] else 0.0 for r in sub], groups),
            "diff_by_seed": t_interval([mean([r[h] - r[o] for r in sub if r["seed"] == sd])
                                        for sd in seeds]),
            "seeds": len(seeds)}


def summarise(per_seed: list[dict], hybrids=tuple(HYBRIDS), offline=tuple(OFFLINE)) -> dict:
    """Per arm: panel reward (failure slices, overall) and KL to base, over the seeds the arm
    ran; per hybrid and offline arm: the paired difference, win rate and per-seed interval.
    A hybrid meets the target when some offline arm has at least its KL to the base and
    the hybrid beats every such arm on the failure slices with a 95% interval above zero."""
    present = {a for s in per_seed for a in s["kl"]}
    hybrids = [h for h in hybrids if h in present]
    offline = [o for o in offline if o in present]
    rows = [r for s in per_seed for r in s["rows"]]
    arms = (*offline, *hybrids)
    out: dict = {"kl": {a: t_interval([s["kl"][a]["value"] for s in per_seed if a in s["kl"]])
                        for a in arms},
                 "target_met": {}, "matched_by": {}}
    for part, sub in (("failing", [r for r in rows if r["failing"]]), ("overall", rows)):
        out[part] = {a: mean_ci([r[a] for r in sub if a in r],
                                [f"{r['seed']}:{r['prompt_id']}" for r in sub if a in r])
                     for a in ("base", *arms)}
        out[part]["vs"] = {f"{h}|{o}": _vs(sub, h, o, per_seed) for h in hybrids for o in offline}
    for h in hybrids:
        matched = [o for o in offline if out["kl"][o]["value"] >= out["kl"][h]["value"]]
        out["matched_by"][h] = matched
        out["target_met"][h] = bool(matched) and all(
            out["failing"]["vs"][f"{h}|{o}"]["diff"]["lo"] > 0 for o in matched)
    return out


def table(per_seed: list[dict], summary: dict, size_name: str, size: dict) -> str:
    f, o, kl = summary["failing"], summary["overall"], summary["kl"]
    b, steps = size["budget"], size["steps"]
    hybrids = list(summary["target_met"])
    offline = [a for a in OFFLINE if a in kl]
    lines = [
        "| arm | training labels | optimizer steps | panel reward, failure slices | overall "
        "| KL to base (nats/seq, t-interval over seeds) |",
        "|---|---|---|---|---|---|",
        f"| base model | 0 | 0 | {fmt_ci(f['base'])} | {fmt_ci(o['base'])} | 0 |",
    ]
    seeds = lambda a: f"{kl[a]['n']} seed" + ("s" if kl[a]["n"] != 1 else "")  # noqa: E731
    lines += [f"| {OFFLINE[a]} ({seeds(a)}) | {b} static | {steps} | {fmt_ci(f[a])} | "
              f"{fmt_ci(o[a])} | {fmt_ci(kl[a], 2)} |" for a in offline]
    lines += [f"| {HYBRIDS[h]}: round 0 + 2 online rounds ({seeds(h)}) | {b // 2} static + "
              f"{b - b // 2} online | {steps // 3} x 3 | {fmt_ci(f[h])} | {fmt_ci(o[h])} | "
              f"{fmt_ci(kl[h], 2)} |" for h in hybrids]
    arms = (*offline, *hybrids)
    lines += ["", "| seed | failure slices (chosen by the hybrids) | panel reward on them: "
              + " / ".join(arms) + " | KL to base: " + " / ".join(arms) + " |", "|---|---|---|---|"]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    for s in per_seed:
        fr = [r for r in s["rows"] if r["failing"]]
        lines.append(f"| {s['seed']} | {', '.join(s['failing_slices']) or 'none'} | "
                     + " / ".join(f"{mean([r[a] for r in fr]):.3f}" if a in s["kl"] else "-"
                                  for a in arms) + " | "
                     + " / ".join(f"{s['kl'][a]['value']:.2f}" if a in s["kl"] else "-"
                                  for a in arms) + " |")
    lab = lambda c: " + ".join(f"{v} {k}" for k, v in c.items())  # noqa: E731
    lines += ["", "Labels spent per arm (seed 0): "
              + "; ".join(f"{a}: {lab(per_seed[0]['labels'][a])}" for a in arms
                          if a in per_seed[0]["labels"]) + ".", ""]
    for h in hybrids:
        for off in offline:
            v, w = f["vs"][f"{h}|{off}"], o["vs"][f"{h}|{off}"]
            lines.append(
                f"- {HYBRIDS[h]} vs {OFFLINE[off]}: panel reward on the failure slices "
                f"{fmt_ci(v['diff'])} (bootstrap over seed x prompt), over seeds "
                f"{fmt_ci(v['diff_by_seed'])} (t, {v['seeds']} seed{'s' if v['seeds'] != 1 else ''}); overall "
                f"{fmt_ci(w['diff'])}; win rate {fmt_ci(v['win'])} on the failure slices, "
                f"{fmt_ci(w['win'])} overall (ties half).")
        matched = summary["matched_by"][h]
        verdict = "**met**" if summary["target_met"][h] else "**not met**"
        why = (f"offline arms with at least its KL ({kl[h]['value']:.2f}): {', '.join(matched)}"
               if matched else f"no offline arm reaches its KL ({kl[h]['value']:.2f})")
        lines.append(f"- Target for {HYBRIDS[h]} (beats offline on the failure slices, 95% "
                     f"interval excludes 0, at no more KL to the base): {verdict}; {why}.")
    lines.append(f"{machine()}; {today()}; `python benchmarks/hybrid_vs_offline.py --size {size_name}`.")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    arms = ("base", *[a for a in OFFLINE if a in summary["kl"]], *summary["target_met"])
    for i, part in enumerate(("failing", "overall")):
        for j, arm in enumerate(arms):
            e = summary[part][arm]
            x = i * (len(arms) + 1) + j
            ax.bar(x, e["value"], color=("#999", "#d98c3f", "#b5651d", "#3f7fd9", "#5aa55a")[j],
                   label=arm if i == 0 else None)
            ax.errorbar(x, e["value"], yerr=[[e["value"] - e["lo"]], [e["hi"] - e["value"]]],
                        color="k", capsize=3)
    ax.set_xticks([(len(arms) - 1) / 2, len(arms) + 1 + (len(arms) - 1) / 2],
                  ["failure slices", "all held-out prompts"])
    ax.set_ylabel("panel reward (ground truth)")
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="quick")
    ap.add_argument("--seeds", type=int, help="override the size's number of seeds")
    ap.add_argument("--arms", default=",".join(ARMS),
                    help="arms to run now (default: all); the tables need every arm's runs")
    ap.add_argument("--no-readme", action="store_true", help="write results/ only")
    ap.add_argument("--no-table", action="store_true",
                    help="only run the arms (e.g. one arm per process); no tables")
    args = ap.parse_args()
    size = dict(SIZES[args.size], **({"seeds": args.seeds} if args.seeds else {}))
    wanted = [a for a in ARMS if a in args.arms.split(",")]
    per_seed = []
    for seed in range(size["seeds"]):
        work = RUNS / "hybrid_vs_offline" / args.size / f"seed{seed}"
        configs = arm_configs(seed, size, work)
        for arm in wanted:
            print(f"== seed {seed}: {arm}", flush=True)
            run_loop(configs[arm], work / arm)
        if not args.no_table:
            per_seed.append(seed_result(seed, {arm: work / arm for arm in ARMS}))
    if not per_seed:
        return
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
