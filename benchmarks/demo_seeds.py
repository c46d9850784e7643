"""The demo over several seeds: `make demo`'s config run once per seed, read back, aggregated.

    python benchmarks/demo_seeds.py [--seeds 0,1,2] [--runs runs/demo_seeds] [--collect-only]
                                    [--set KEY=VALUE ...] [--name demo_seeds]

Each seed S runs `alignloop run configs/demo.yaml --run-dir RUNS/seed_S` with
`train.seed`, `loop.seed` and `generation.seed` set to S (a finished run is only read
back: rerunning resumes). Every run is read with `demo_figures.collect`, so the figures
are the same ones the single-run demo table shows. Per seed: the wall time, the
ground-truth (panel) reward on that run's own failure slices per round, which rounds the
gates rolled back, the last kept round's gain over round 0, and the ends-by-EOS share.
Over seeds: the mean gain with a Student-t 95% interval (seeds are the unit: each run
chooses its own failure slices, so gains are compared within a run, never across).

Targets (issue 19 and 15): the failure-slice reward never falls from one kept round to
the next in any seed; the last kept round beats round 0 with an interval excluding zero;
every run within 6 minutes. Writes benchmarks/results/NAME.{json,md} (NAME: demo_seeds)
and the README section between `<!-- bench:NAME -->` markers, where there is one; runs
with --set never write the demo's own section (`demo_seeds`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine, plain_name, today, write_results  # noqa: E402
from demo_figures import _never_falls, collect  # noqa: E402
from loop_bench import t_interval  # noqa: E402

CONFIG = HERE.parent / "configs" / "demo.yaml"
TIME_TARGET_S = 6 * 60


def run_seed(seed: int, run_dir: Path, overrides: list[str]) -> None:
    """One demo run at `seed` (resumes, or only reads back, a run already there)."""
    sets = [f"{key}={seed}" for key in ("train.seed", "loop.seed", "generation.seed")]
    cmd = [sys.executable, "-m", "alignloop.cli", "run", str(CONFIG), "--run-dir", str(run_dir)]
    for s in sets + overrides:
        cmd += ["--set", s]
    print(f"seed {seed}: {' '.join(cmd[2:])}", flush=True)
    subprocess.run(cmd, check=True)


def seed_row(seed: int, fig: dict) -> dict:
    """One seed's figures from `demo_figures.collect`."""
    rows = fig["rounds"]
    kept = [r for r in rows if r.get("gate", "kept") != "rolled back"]
    first, last = kept[0], kept[-1]
    return {"seed": seed, "wall_s": fig["wall_s"], "failing_slices": fig["failing_slices"],
            "failing": [r["latent_failing"] for r in rows],
            "overall": [r["latent_overall"] for r in rows],
            "gates": [r.get("gate", "kept") for r in rows],
            "ends_by_eos": [r["ends_by_eos"] for r in rows],
            "last_kept": last["round"],
            "gain": last["latent_failing"] - first["latent_failing"],
            "gain_overall": last["latent_overall"] - first["latent_overall"],
            "kept_never_falls": _never_falls(rows, "latent_failing")}


def aggregate(rows: list[dict]) -> dict:
    """The over-seeds figures and the targets met."""
    gain = t_interval([r["gain"] for r in rows])
    overall = t_interval([r["gain_overall"] for r in rows])
    lo = gain["lo"]
    return {"seeds": len(rows), "gain": gain["value"], "gain_lo": lo, "gain_hi": gain["hi"],
            "gain_overall": overall["value"], "gain_overall_lo": overall["lo"],
            "gain_overall_hi": overall["hi"],
            "targets": {"kept_never_falls": all(r["kept_never_falls"] for r in rows),
                        "gain_excludes_zero": lo > 0,
                        "time": all(r["wall_s"] <= TIME_TARGET_S for r in rows)}}


def render(rows: list[dict], agg: dict, command: str) -> str:
    """The README table and target lines."""
    fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    pct = lambda x: "-" if x is None else f"{100 * x:.0f}%"  # noqa: E731
    verdict = lambda ok: "**met**" if ok else "**not met**"  # noqa: E731
    lines = ["| seed | wall (min) | failure slices | failure-slice panel reward by round | "
             "last kept − round 0 | never falls between kept rounds | ends by EOS by round |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        rewards = " / ".join(fmt(v) + (" (rolled back)" if g == "rolled back" else "")
                             for v, g in zip(r["failing"], r["gates"], strict=True))
        lines.append(f"| {r['seed']} | {r['wall_s'] / 60:.1f} | {', '.join(r['failing_slices'])} | "
                     f"{rewards} | {r['gain']:+.3f} | {'yes' if r['kept_never_falls'] else 'no'} | "
                     f"{' / '.join(pct(v) for v in r['ends_by_eos'])} |")
    t = agg["targets"]
    lines += [
        "",
        f"Over {agg['seeds']} seeds (Student-t 95% interval over seeds; each run is compared "
        f"with itself, on the failure slices it chose):",
        f"- Failure-slice panel reward never falls from one kept round to the next, in every "
        f"seed: {verdict(t['kept_never_falls'])}.",
        f"- Last kept round beats round 0 on the failure slices, interval excluding zero: "
        f"{verdict(t['gain_excludes_zero'])} (mean {agg['gain']:+.3f} "
        f"[{agg['gain_lo']:+.3f}, {agg['gain_hi']:+.3f}]; all held-out prompts "
        f"{agg['gain_overall']:+.3f} [{agg['gain_overall_lo']:+.3f}, {agg['gain_overall_hi']:+.3f}]).",
        f"- Every run within {TIME_TARGET_S // 60} minutes: {verdict(t['time'])} "
        f"(longest {max(r['wall_s'] for r in rows) / 60:.1f} min; runs one after another).",
        f"{machine()}; {today()}; `{command}`.",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: %(default)s)")
    ap.add_argument("--runs", type=Path, default=HERE.parent / "runs" / "demo_seeds",
                    help="one run directory per seed under it (default: runs/demo_seeds)")
    ap.add_argument("--collect-only", action="store_true",
                    help="read the runs already there; run nothing")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for every seed's run (repeatable)")
    ap.add_argument("--name", default="demo_seeds",
                    help="results file and README section name (default: %(default)s)")
    args = ap.parse_args()
    plain_name(ap, args.name)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        ap.error(f"--seeds: {args.seeds!r} is not a comma-separated list of integers")
    rows = []
    for seed in seeds:
        run_dir = args.runs / f"seed_{seed}"
        if not args.collect_only:
            run_seed(seed, run_dir, args.sets)
        if not (run_dir / "state.json").exists():
            ap.error(f"{run_dir}: no finished run there (run without --collect-only)")
        rows.append(seed_row(seed, collect(run_dir)))
    agg = aggregate(rows)
    command = "python benchmarks/demo_seeds.py" + (f" --seeds {args.seeds}" if args.seeds != "0,1,2" else "")
    command += "".join(f" --set {s}" for s in args.sets) + (
        f" --runs {args.runs} --name {args.name}" if args.name != "demo_seeds" else "")
    md = render(rows, agg, command)
    meta = {"machine": machine(), "date": today(), "config": str(CONFIG.relative_to(HERE.parent)),
            "overrides": args.sets, "command": command, **agg}
    # the README block named NAME, if the README has one; overrides never take the demo's own
    write_results(args.name, meta, rows, md, readme=not args.sets or args.name != "demo_seeds")
    print(md)


if __name__ == "__main__":
    main()
