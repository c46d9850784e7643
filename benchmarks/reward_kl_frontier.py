"""Hybrid vs offline on the reward-KL frontier (issue 19): does the hybrid loop buy more
ground-truth reward per nat of KL to the base, or does it only move further?

    python benchmarks/reward_kl_frontier.py --size smoke|quick|full [--seeds N]

The DPO paper answers the same question for its sentiment task with reward against
KL(pi || pi_ref) over a sweep of beta and training steps (Rafailov et al. 2023, Fig. 2
left). Here each arm is a family of runs of alignloop on the demo task (SmolLM2-135M,
LoRA, CPU), built like `hybrid_vs_offline.py` (same label budget per arm, the same static
pairs, panel labels only), over a sweep of beta and of training steps:

- offline: one DPO round on the static budget, at 1/3, 2/3 and all of the steps (three
  runs: a run evaluates only its end);
- hybrid (reference = previous policy) and hybrid_base (reference = base): round 0 and
  two online rounds; each round's evaluation is a point (after 1/3, 2/3, 3/3 of the steps).

A point is (arm, beta, steps) averaged over seeds: KL to the base (k1, nats per sequence,
temperature-1 samples on the held-out prompts, from the round report) and the panel's
latent reward of the policy's samples on the failure slices (the slices the default
hybrid chose for that seed) and overall. An arm's frontier is the staircase upper
envelope of its points: at KL budget x, the best mean reward among its points with
KL <= x (no interpolation between runs: a point between two runs was not measured).

Target: over the KL range both arms reach, the hybrid frontier lies above the offline
one, and at the offline arm's best point the hybrid's best point with no more KL has a
higher reward on the failure slices, with a 95% cluster-bootstrap interval over
(seed, prompt) of the paired difference that excludes zero.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, machine, measured_text, results_name, today, write_results  # noqa: E402
from hybrid_vs_offline import arm_configs  # noqa: E402
from loop_bench import RUNS, demo_raw, fmt_ci, kl_to_base, mean_ci, report, run_loop, samples  # noqa: E402

SIZES = {
    # budget = panel-labeled pairs per arm; steps = optimizer steps of a whole run (8 pairs each)
    "smoke": {"seeds": 1, "betas": [0.1], "budget": 16, "steps": 3, "eval_prompts": 8,
              "max_new_tokens": 16},
    "quick": {"seeds": 1, "betas": [0.05, 0.1, 0.3], "budget": 32, "steps": 6,
              "eval_prompts": 24, "max_new_tokens": 32},
    "full": {"seeds": 3, "betas": [0.03, 0.1, 0.3, 1.0], "budget": 64, "steps": 24,
             "eval_prompts": 0, "max_new_tokens": 32},
}
ARMS = {"offline": "offline DPO", "hybrid": "hybrid (reference = previous policy)",
        "hybrid_base": "hybrid (reference = base)"}
COLORS = {"offline": "#d98c3f", "hybrid": "#3f7fd9", "hybrid_base": "#5aa55a"}


def run_points(seed: int, size: dict, size_name: str, arms: list[str]) -> list[dict]:
    """Run (or resume) every run of one seed; one point per evaluated round."""
    work = RUNS / "reward_kl_frontier" / size_name / f"seed{seed}"
    steps = size["steps"]
    points = []
    for beta in size["betas"]:
        extra = {"train.beta": beta}
        for arm in arms:
            if arm == "offline":
                for s in sorted({max(1, steps * f // 3) for f in (1, 2, 3)}):
                    cfg = arm_configs(seed, {**size, "steps": s}, work, extra)["offline"]
                    d = work / f"offline-beta{beta}-steps{s}"
                    run_loop(cfg, d)
                    points.append(_point(d, 0, arm, beta, s, seed))
            else:
                d = work / f"{arm}-beta{beta}"
                run_loop(arm_configs(seed, size, work, extra)[arm], d)
                for k in range(_rounds_done(d)):
                    points.append(_point(d, k, arm, beta, (k + 1) * (steps // 3), seed))
    return points


SWEEP_KEYS = ("budget", "steps", "eval_prompts", "max_new_tokens")
"""What a saved result must share with this sweep for its points to join it."""


def saved_points(path: Path, size: dict) -> dict[int, list[dict]]:
    """{seed: points} measured before, from a results file of the same sweep (perhaps written
    on another machine), each point tagged with the machine and date that measured it. Every
    beta of this sweep the file has for a seed is taken (a file is written only once all its
    runs finished, so each one it has is whole); points of other betas are left out, and
    the betas it lacks run here (`missing_betas`). A file of another sweep is refused
    (ValueError) by the setting that differs."""
    try:
        saved = json.loads(path.read_text())
        meta, points = saved["meta"], saved["results"]["points"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a reward_kl_frontier results file ({e})") from None
    for key in SWEEP_KEYS:
        if meta.get(key) != size[key]:
            raise ValueError(f"{path}: measured with {key} = {meta.get(key)!r}, this sweep has "
                             f"{size[key]!r}")
    by_seed: dict[int, list[dict]] = {}
    for p in points:
        if p["beta"] in size["betas"]:
            by_seed.setdefault(p["seed"], []).append(
                {**p, "measured": p.get("measured", f"{meta['machine']}; {meta['date']}")})
    return by_seed


def merge_saved(files: list[dict[int, list[dict]]]) -> dict[int, list[dict]]:
    """Several files' saved points as one: for each (seed, beta) the first file that has it."""
    merged: dict[int, list[dict]] = {}
    for saved in files:
        for seed, points in saved.items():
            have = {p["beta"] for p in merged.get(seed, [])}
            merged.setdefault(seed, []).extend(p for p in points if p["beta"] not in have)
    return merged


def missing_betas(size: dict, saved: list[dict]) -> list[float]:
    """The betas of this sweep that a seed's saved points lack, in sweep order."""
    have = {p["beta"] for p in saved}
    return [b for b in size["betas"] if b not in have]


def collect_points(size: dict, saved: dict[int, list[dict]], run) -> list[dict]:
    """Every seed's points: the saved ones, and `run(seed, size)` for the betas they lack
    (not called when none is missing), in the order a whole run gives (beta, arm, steps)."""
    points = []
    for seed in range(size["seeds"]):
        have = saved.get(seed, [])
        todo = missing_betas(size, have)
        ran = run(seed, {**size, "betas": todo}) if todo else []
        points += sorted(have + ran, key=lambda p: (size["betas"].index(p["beta"]),
                                                    list(ARMS).index(p["arm"]), p["steps"]))
    return points


def provenance(points: list[dict]) -> list[dict]:
    """Which machine measured which seeds: [{"seeds": [...], "by": "machine; date"}], in
    seed order (one entry when every seed ran in one place)."""
    seeds: dict[str, set[int]] = {}
    for p in points:
        seeds.setdefault(p.get("measured", f"{machine()}; {today()}"), set()).add(p["seed"])
    return [{"seeds": sorted(s), "by": by} for by, s in sorted(seeds.items(), key=lambda kv: min(kv[1]))]


def _rounds_done(run_dir: Path) -> int:
    state = json.loads((run_dir / "state.json").read_text())["rounds"]
    return sum(1 for r in state.values() if "report" in r.get("stages", {}))


def _point(run_dir: Path, k: int, arm: str, beta: float, steps: int, seed: int) -> dict:
    rewards: dict[str, list[float]] = {}
    slices = {}
    for r in samples(run_dir, k):
        rewards.setdefault(r["prompt_id"], []).append(r["latent_reward"])
        slices[r["prompt_id"]] = r["slice"]
    chosen = []
    if (run_dir / f"round_{k:03d}" / "slices.json").exists():
        chosen = json.loads((run_dir / f"round_{k:03d}" / "slices.json").read_text())["chosen"]
    return {"arm": arm, "beta": beta, "steps": steps, "seed": seed, "round": k,
            "kl": kl_to_base(report(run_dir, k))["value"], "chosen_slices": chosen,
            "measured": f"{machine()}; {today()}",
            "reward": {p: float(np.mean(v)) for p, v in rewards.items()}, "slice": slices}


# --------------------------------------------------------------------------- the frontier


def failing_slices(points: list[dict], default_beta: float) -> dict[int, set[str]]:
    """Per seed, the slices the default hybrid (the demo's beta) chose in any round; every
    hybrid run of the seed when that beta was not swept."""
    out: dict[int, set[str]] = {}
    for p in points:
        if p["arm"] == "hybrid":
            out.setdefault(p["seed"], set())
    for seed in out:
        runs = [p for p in points if p["arm"] == "hybrid" and p["seed"] == seed]
        default = [p for p in runs if p["beta"] == default_beta] or runs
        out[seed] = {s for p in default for s in p["chosen_slices"]}
    return out


def config_means(points: list[dict], failing: dict[int, set[str]]) -> list[dict]:
    """One row per (arm, beta, steps): mean KL over seeds and mean reward over seed x prompt,
    on the failure slices and overall, with the per-(seed, prompt) rewards kept for pairing."""
    groups: dict[tuple, list[dict]] = {}
    for p in points:
        groups.setdefault((p["arm"], p["beta"], p["steps"]), []).append(p)
    rows = []
    for (arm, beta, steps), ps in sorted(groups.items()):
        paired = {(p["seed"], pid): r for p in ps for pid, r in p["reward"].items()}
        fail = {key: r for key, r in paired.items()
                if next(p for p in ps if p["seed"] == key[0])["slice"][key[1]]
                in failing.get(key[0], set())}
        rows.append({"arm": arm, "beta": beta, "steps": steps, "seeds": len(ps),
                     "kl": float(np.mean([p["kl"] for p in ps])),
                     "kl_by_seed": [p["kl"] for p in ps],
                     "reward_failing": float(np.mean(list(fail.values()))) if fail else float("nan"),
                     "reward_overall": float(np.mean(list(paired.values()))),
                     "paired_failing": fail, "paired_overall": paired})
    return rows


def staircase(rows: list[dict], key: str = "reward_failing") -> list[tuple[float, float]]:
    """The upper envelope as (KL, best reward at KL <= that) steps, KL increasing."""
    steps, best = [], -np.inf
    for r in sorted(rows, key=lambda r: (r["kl"], -r[key])):
        if np.isfinite(r[key]) and r[key] > best:
            best = r[key]
            steps.append((r["kl"], best))
    return steps


def frontier_at(stair: list[tuple[float, float]], x: float) -> float:
    """The staircase's value at KL x (NaN below its first point)."""
    vals = [v for kl, v in stair if kl <= x]
    return vals[-1] if vals else float("nan")


def compare(rows: list[dict], hybrid: str = "hybrid", offline: str = "offline") -> dict:
    """The gap between two arms' frontiers over the KL range both reach, and the paired
    test at the offline arm's best point."""
    h = [r for r in rows if r["arm"] == hybrid]
    o = [r for r in rows if r["arm"] == offline]
    if not h or not o:
        return {}
    hs, os_ = staircase(h), staircase(o)
    lo, hi = max(hs[0][0], os_[0][0]), min(max(r["kl"] for r in h), max(r["kl"] for r in o))
    grid = np.linspace(lo, hi, 50) if hi > lo else np.array([lo])
    gap = [frontier_at(hs, x) - frontier_at(os_, x) for x in grid]
    best_o = max(o, key=lambda r: r["reward_failing"])
    under = [r for r in h if r["kl"] <= best_o["kl"]]
    out = {"kl_range": [float(lo), float(hi)], "gap_grid": [float(x) for x in grid],
           "gap": [float(g) for g in gap], "offline_best": _brief(best_o),
           "largest_gap_at": float(grid[int(np.nanargmax(gap))]) if gap else None,
           "offline_wins_at": [float(x) for x, g in zip(grid, gap, strict=True) if g < 0],
           "above_everywhere": bool(hi >= lo and all(g > 0 for g in gap))}
    if not under:
        out["matched"] = None
        return out
    match = max(under, key=lambda r: r["reward_failing"])
    keys = sorted(set(match["paired_failing"]) & set(best_o["paired_failing"]))
    diff = mean_ci([match["paired_failing"][k] - best_o["paired_failing"][k] for k in keys],
                   [f"{s}:{p}" for s, p in keys])
    out.update(matched=_brief(match), diff=diff, n_pairs=len(keys))
    return out


def _brief(r: dict) -> dict:
    return {k: r[k] for k in ("arm", "beta", "steps", "seeds", "kl", "reward_failing",
                              "reward_overall")}


def verdict(cmp: dict) -> bool:
    return bool(cmp and cmp.get("matched") and cmp["above_everywhere"]
                and cmp["diff"]["lo"] > 0)


# --------------------------------------------------------------------------- report


def table(rows: list[dict], comparisons: dict[str, dict], command: str,
          measured: str | None = None) -> str:
    lines = ["| arm | beta | steps | seeds | KL to base (nats/seq) | panel reward, failure slices "
             "| overall |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {ARMS[r['arm']]} | {r['beta']} | {r['steps']} | {r['seeds']} | {r['kl']:.2f} | "
              f"{r['reward_failing']:.3f} | {r['reward_overall']:.3f} |"
              for r in sorted(rows, key=lambda r: (r["arm"], r["kl"]))]
    lines.append("")
    for h, c in comparisons.items():
        if not c:
            continue
        ob = c["offline_best"]
        head = (f"- {ARMS[h]} vs offline over KL {c['kl_range'][0]:.2f} to {c['kl_range'][1]:.2f} "
                f"(both reach it): frontier above offline's everywhere: "
                f"{'yes' if c['above_everywhere'] else 'no'}")
        if c["largest_gap_at"] is not None:
            head += (f"; largest gap {max(c['gap']):.3f} at KL {c['largest_gap_at']:.2f}; offline "
                     f"above at {len(c['offline_wins_at'])} of {len(c['gap'])} grid points")
        lines.append(head + ".")
        if c.get("matched"):
            m = c["matched"]
            lines.append(
                f"- At offline's best point (beta {ob['beta']}, {ob['steps']} steps: KL "
                f"{ob['kl']:.2f}, reward {ob['reward_failing']:.3f}) the best {h} point with no "
                f"more KL (beta {m['beta']}, {m['steps']} steps: KL {m['kl']:.2f}) scores "
                f"{fmt_ci(c['diff'])} more on the failure slices (paired, cluster bootstrap over "
                f"{c['n_pairs']} seed x prompt). Target: **{'met' if verdict(c) else 'not met'}**.")
        else:
            lines.append(f"- No {h} point has KL at or below offline's best point "
                         f"({ob['kl']:.2f}). Target: **not met**.")
    lines.append(f"{measured or f'{machine()}; {today()}'}; `{command}`.")
    return "\n".join(lines)


def plot(points: list[dict], rows: list[dict], failing: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm in ARMS:
        mine = [r for r in rows if r["arm"] == arm]
        if not mine:
            continue
        for p in (p for p in points if p["arm"] == arm):   # each seed's point, faint
            fr = [v for pid, v in p["reward"].items() if p["slice"][pid] in failing.get(p["seed"], ())]
            if fr:
                ax.scatter(p["kl"], np.mean(fr), s=10, color=COLORS[arm], alpha=0.3)
        ax.scatter([r["kl"] for r in mine], [r["reward_failing"] for r in mine], s=30,
                   color=COLORS[arm], label=ARMS[arm])
        stair = staircase(mine)
        xs = [kl for kl, _ in stair] + [max(r["kl"] for r in mine)]
        ys = [v for _, v in stair] + [stair[-1][1]]
        ax.step(xs, ys, where="post", color=COLORS[arm])
    ax.set_xlabel("KL(policy || base), nats per sequence")
    ax.set_ylabel("panel reward on the failure slices")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _betas(text: str, ap: argparse.ArgumentParser) -> list[float]:
    try:
        betas = sorted({float(b) for b in text.split(",")})
    except ValueError:
        ap.error(f"--betas: comma-separated numbers expected, got {text!r}")
    if not betas or min(betas) <= 0:
        ap.error(f"--betas: every beta must be > 0, got {text!r}")
    return betas


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="quick")
    ap.add_argument("--seeds", type=int, help="override the size's number of seeds")
    ap.add_argument("--betas", help="override the size's beta sweep, comma-separated (e.g. 0.1,0.3)")
    ap.add_argument("--no-readme", action="store_true", help="write results/ only")
    ap.add_argument("--saved", type=Path, metavar="RESULTS_JSON", action="append", default=[],
                    help="take the (seed, beta) runs this results file of the same sweep "
                         "measured (e.g. on another machine, or before a beta was added) "
                         "instead of running them; the others run here, and the table says "
                         "which machine measured which seeds. May be given more than once "
                         "(the first file that has a run wins)")
    args = ap.parse_args()
    if args.seeds is not None and args.seeds < 1:
        ap.error(f"--seeds: must be >= 1, got {args.seeds}")
    size = dict(SIZES[args.size], **({"seeds": args.seeds} if args.seeds else {}))
    if args.betas:
        size["betas"] = _betas(args.betas, ap)
    from alignloop.errors import AlignloopError

    try:
        saved = merge_saved([saved_points(path, size) for path in args.saved])
    except ValueError as e:
        ap.error(f"--saved: {e}")
    try:
        points = collect_points(size, saved, lambda seed, sz: run_points(seed, sz, args.size,
                                                                         list(ARMS)))
    except AlignloopError as e:   # e.g. a kept run directory made with another config
        raise SystemExit(f"error: {e}") from None
    failing = failing_slices(points, demo_raw()["train"]["beta"])
    rows = config_means(points, failing)
    comparisons = {h: compare(rows, h) for h in ("hybrid", "hybrid_base")}
    command = " ".join(["python benchmarks/reward_kl_frontier.py", f"--size {args.size}"]
                       + ([f"--seeds {args.seeds}"] if args.seeds else [])
                       + ([f"--betas {args.betas}"] if args.betas else [])
                       + [f"--saved {path}" for path in args.saved])
    where = provenance(points)
    md = table(rows, comparisons, command, measured_text(where))
    name = results_name("reward_kl_frontier", args.size)
    RESULTS.mkdir(exist_ok=True)
    plot(points, rows, failing, RESULTS / f"{name}.png")
    meta = {"size": args.size, **size, "machine": machine(), "date": today(),
            "command": command, "measured": where,
            "target_met": {h: verdict(c) for h, c in comparisons.items()}}
    lean = [{k: v for k, v in r.items() if not k.startswith("paired")} for r in rows]
    write_results(name, meta, {"configs": lean, "comparisons": comparisons,
                               "failing_slices": {s: sorted(v) for s, v in failing.items()},
                               "points": points}, md,
                  readme=args.size == "full" and not args.no_readme)
    print(md)


if __name__ == "__main__":
    main()
