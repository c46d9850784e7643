"""The demo's measured figures, read from a finished `make demo` run (no numbers by hand).

    python benchmarks/demo_figures.py [RUN_DIR]     # default runs/demo

Reads every round's report.json, slices.json and state.json and writes
benchmarks/results/demo.{json,md} and the README section between
`<!-- bench:demo -->` markers: per round, the ground-truth (panel) reward overall
and on the failure slices the loop chose, KL to the base with its interval, the
judges' win rate against the base, and the run's wall time; then the acceptance
targets with the measured values.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine, today, write_results  # noqa: E402

TIME_BUDGET_S = 15 * 60


def _slice_mean(by_slice: dict, names: list[str]) -> float | None:
    """Mean over the named slices, weighted by their sample counts."""
    rows = [by_slice[s] for s in names if s in by_slice]
    n = sum(r["n"] for r in rows)
    return sum(r["value"] * r["n"] for r in rows) / n if n else None


def main() -> None:
    run = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent / "runs" / "demo"
    state = json.loads((run / "state.json").read_text())
    rounds = sorted(int(k) for k in state["rounds"])
    failing: list[str] = []
    for k in rounds[1:]:
        path = run / f"round_{k:03d}" / "slices.json"
        if path.exists():
            failing += [s for s in json.loads(path.read_text())["chosen"] if s not in failing]
    starts = [i["started"] for rs in state["rounds"].values() for i in rs["stages"].values()]
    ends = [i.get("finished", i["started"]) for rs in state["rounds"].values()
            for i in rs["stages"].values()]
    wall = max(ends) - min(starts)
    from alignloop.config import load_config

    budget = load_config(run / "config.yaml").loop.gate.max_kl_to_base or None

    rows = []
    base_latent = None
    for k in rounds:
        path = run / f"round_{k:03d}" / "report" / "report.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        lat = r["latent_reward"]["models"]
        base_latent = base_latent or lat.get("base")
        kl = r["kl_to_base"]["k1"]["sequence"]
        win = r["win_rate_vs_base"].get("overall") or {}
        rows.append({
            "round": k, "latent_overall": lat["policy"]["overall"]["value"],
            "latent_failing": _slice_mean(lat["policy"]["by_slice"], failing),
            "kl_to_base": kl["value"], "kl_lo": kl["lo"], "kl_hi": kl["hi"],
            "win_vs_base": win.get("value"), "win_lo": win.get("lo"), "win_hi": win.get("hi"),
        })
    base_row = {"round": "base", "latent_overall": base_latent["overall"]["value"],
                "latent_failing": _slice_mean(base_latent["by_slice"], failing)} if base_latent else None

    first, last = rows[0], rows[-1]
    rising = (last["latent_failing"] is not None and first["latent_failing"] is not None
              and last["latent_failing"] > first["latent_failing"])
    within = budget is None or all(r["kl_to_base"] <= budget for r in rows)
    fast = wall <= TIME_BUDGET_S
    fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    lines = ["| round | panel reward, all held-out | on the failure slices | KL to base (nats/seq, 95% CI) "
             "| judge win rate vs base (95% CI) |", "|---|---|---|---|---|"]
    if base_row:
        lines.append(f"| base model | {fmt(base_row['latent_overall'])} | "
                     f"{fmt(base_row['latent_failing'])} | 0 | - |")
    for r in rows:
        lines.append(f"| {r['round']} | {fmt(r['latent_overall'])} | {fmt(r['latent_failing'])} | "
                     f"{r['kl_to_base']:.2f} [{r['kl_lo']:.2f}, {r['kl_hi']:.2f}] | "
                     f"{fmt(r['win_vs_base'])} [{fmt(r['win_lo'])}, {fmt(r['win_hi'])}] |")
    verdict = lambda ok: "**met**" if ok else "**not met**"  # noqa: E731
    lines += [
        "",
        f"Failure slices chosen by the loop: {', '.join(failing) or 'none'}.",
        f"- Panel (ground-truth) reward on the failure slices rises from round 0 to round "
        f"{last['round']}: {verdict(rising)} ({fmt(first['latent_failing'])} → "
        f"{fmt(last['latent_failing'])}).",
        f"- KL to the base within the configured budget ({budget} nats): {verdict(within)} "
        f"(largest {max(r['kl_to_base'] for r in rows):.2f}).",
        f"- Wall time ≤ 15 minutes: {verdict(fast)} ({wall / 60:.1f} min).",
        f"{machine()}; {today()}; `make demo`, then `python benchmarks/demo_figures.py`.",
    ]
    md = "\n".join(lines)
    meta = {"run": str(run), "machine": machine(), "date": today(), "failing_slices": failing,
            "wall_s": wall, "targets": {"failing_rise": rising, "kl_within": within, "time": fast}}
    write_results("demo", meta, {"rounds": rows, "base": base_row}, md)
    print(md)


if __name__ == "__main__":
    main()
