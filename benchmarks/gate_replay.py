"""The demo's slice gate replayed on finished runs: what a significance test would decide.

    python benchmarks/gate_replay.py [--runs runs/demo_seeds] [--seeds 0,1,2,3,4]
                                     [--confidence 0.8,0.9,0.95] [--name gate_replay]

Each run's round reports are rebuilt with this code (so they carry the p-values the
gate tests) and judged by the run's own gate, then by the same gate with
`loop.gate.slice_confidence` c for each c asked for. A replayed decision is exact while
every earlier round got the decision it got in the run: the rounds before it then started
from the same policy and ran the very same way. A round whose decision changes makes the
rounds after it unknown (they would have started from another policy); such a seed is
marked "not exact" and left out of that c's aggregate. In the demo's three rounds a change
in the last round is always exact.

Per c and seed: each round's decision, the failure-slice panel reward by round (the
figure `demo_seeds.py` reports), whether it never falls between kept rounds, and the last
kept round's gain over round 0; over exact seeds, the mean gain with a Student-t 95%
interval. Writes benchmarks/results/NAME.{json,md} and the README section between
`<!-- bench:NAME -->` markers, where there is one.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine, plain_name, today, write_results  # noqa: E402
from demo_figures import _gate, collect  # noqa: E402
from demo_seeds import seed_row  # noqa: E402
from loop_bench import t_interval  # noqa: E402


def own_confidence(run: Path) -> float:
    from alignloop.config import load_config

    return load_config(run / "config.yaml").loop.gate.slice_confidence


def verdicts(run: Path, confidences: list[float]) -> dict[float, list[dict]]:
    """{c: [gate verdict per round]} for each `slice_confidence` c (0: the point
    threshold), from the run's reports rebuilt with this code and the run's gate."""
    from alignloop.config import load_config
    from alignloop.report import build_round_report, gate_verdict, load_round

    cfg = load_config(run / "config.yaml")
    fig = collect(run)
    reports = [build_round_report(load_round(run, r["round"]), cfg) for r in fig["rounds"]]
    out = {}
    for c in confidences:
        gate = dataclasses.replace(cfg.loop.gate, slice_confidence=c)
        out[c] = [gate_verdict(rep, gate, min_slice_samples=cfg.report.min_slice_samples)
                  for rep in reports]
    return out


def replay(fig: dict, decided: list[dict]) -> tuple[dict, int]:
    """`fig` with the replayed gate decisions, and how many of its rounds the replay
    knows: all of them, or up to the first round whose decision changed."""
    rows, known = [], len(fig["rounds"])
    for i, (r, v) in enumerate(zip(fig["rounds"], decided, strict=True)):
        gate = _gate({"gate": v})
        if gate != r.get("gate", "kept") and known == len(fig["rounds"]):
            known = i + 1
        rows.append({**r, "gate": gate, "held": v["held"], "reason": v["reason"]})
    return {**fig, "rounds": rows}, known


def replay_row(seed: int, fig: dict, decided: list[dict]) -> dict:
    """`demo_seeds.seed_row` of the replayed run, with `exact` (every round known) and
    `never_falls`: "yes", "no" (a fall between kept rounds the replay knows), or
    "unknown" (none known, but rounds after a changed decision are not). The failure-slice
    rewards of unknown rounds, and the gain of an inexact replay, are None."""
    replayed, known = replay(fig, decided)
    row = seed_row(seed, replayed)
    prefix = seed_row(seed, {**replayed, "rounds": replayed["rounds"][:known]})
    exact = known == len(fig["rounds"])
    if not exact:                  # the rounds after the changed decision would have differed
        row["failing"] = row["failing"][:known] + [None] * (len(fig["rounds"]) - known)
        row["gain"] = None
    row.update(exact=exact, known_rounds=known, never_falls=("no" if not prefix["kept_never_falls"] else
                                         "yes" if exact else "unknown"),
               held=[r["held"] for r in replayed["rounds"]],
               reasons=[r["reason"] for r in replayed["rounds"]])
    return row


def _name(c: float, own: float) -> str:
    test = "point threshold" if c == 0 else f"significance, c = {c:g}"
    return test + (" (the runs' own)" if c == own else "")


def render(table: dict, seeds: list[int], own: float) -> str:
    fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    lines = ["| slice test | seed | failure-slice panel reward by round (decision) | last kept "
             "− round 0 | never falls between kept rounds | exact |",
             "|---|---|---|---|---|---|"]
    for c, res in table.items():
        name = _name(c, own)
        for seed, r in zip(seeds, res["rows"], strict=True):
            rounds = " / ".join("?" if v is None else fmt(v) + ("" if g == "kept" else f" ({g})")
                                for v, g in zip(r["failing"], r["gates"], strict=True))
            gain = "?" if r["gain"] is None else f"{r['gain']:+.3f}"
            lines.append(f"| {name} | {seed} | {rounds} | {gain} | "
                         f"{r['never_falls']} | "
                         f"{'yes' if r['exact'] else 'no'} |")
    lines.append("")
    for c, res in table.items():
        name = _name(c, own)
        a = res["aggregate"]
        gain = ("-" if a["gain"] is None else
                f"{a['gain']:+.3f} [{a['gain_lo']:+.3f}, {a['gain_hi']:+.3f}]")
        lines.append(f"- {name}: {a['rolled_back']} round(s) rolled back; never falls in "
                     f"{a['never_falls']} of {len(seeds)} seeds (falls in {a['falls']}, unknown "
                     f"in {a['unknown']}); gain of the last kept "
                     f"round over round 0 {gain} (Student-t 95% over the exact seeds).")
    return "\n".join(lines)


def rerun_command(seeds: str, confidence: str, runs: Path, name: str) -> str:
    """The command that rewrites this very table: runs and name too, where not the defaults
    (`runs` relative to the repository where it lies in it)."""
    command = f"python benchmarks/gate_replay.py --seeds {seeds} --confidence {confidence}"
    command += f" --runs {runs}" if runs != Path("runs/demo_seeds") else ""
    return command + (f" --name {name}" if name != "gate_replay" else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=Path, default=HERE.parent / "runs" / "demo_seeds",
                    help="one finished run per seed under it (benchmarks/demo_seeds.py)")
    ap.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds")
    ap.add_argument("--confidence", default="0.8,0.9,0.95",
                    help="comma-separated slice_confidence values in (0, 1) to replay, besides "
                    "the runs' own and the point threshold (0)")
    ap.add_argument("--name", default="gate_replay", help="results file name")
    args = ap.parse_args()
    plain_name(ap, args.name)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
        confidences = [float(c) for c in args.confidence.split(",")]
    except ValueError:
        ap.error("--seeds takes integers and --confidence numbers, comma-separated")
    if not all(0 < c < 1 for c in confidences):
        ap.error(f"--confidence: every value must be in (0, 1), got {args.confidence}")
    runs = [args.runs / f"seed_{s}" for s in seeds]
    for run in runs:
        if not (run / "state.json").exists():
            ap.error(f"{run}: no finished run there (benchmarks/demo_seeds.py makes them)")
    owns = {own_confidence(run) for run in runs}
    if len(owns) > 1:
        ap.error(f"the runs under {args.runs} were made with different slice_confidence {owns}")
    own = owns.pop()
    cs = list(dict.fromkeys([own, 0.0, *confidences]))
    per_run = [(collect(run), verdicts(run, cs)) for run in runs]
    for seed, (fig, v) in zip(seeds, per_run, strict=True):
        # the runs' own gate, replayed, must decide what the runs recorded
        if not replay_row(seed, fig, v[own])["exact"]:
            raise SystemExit(f"gate_replay: seed {seed}: the run's own gate decides otherwise "
                             "now than the run recorded: the runs are from other code")
    table = {}
    for c in cs:
        rows = [replay_row(seed, fig, v[c]) for seed, (fig, v) in zip(seeds, per_run, strict=True)]
        good = [r for r in rows if r["exact"]]
        gain = t_interval([r["gain"] for r in good]) if len(good) > 1 else None
        table[c] = {"rows": rows, "aggregate": {
            "exact": len(good), "never_falls": sum(r["never_falls"] == "yes" for r in rows),
            "falls": sum(r["never_falls"] == "no" for r in rows),
            "unknown": sum(r["never_falls"] == "unknown" for r in rows),
            "rolled_back": sum(g == "rolled back" for r in rows for g in r["gates"]),
            "gain": gain and gain["value"], "gain_lo": gain and gain["lo"],
            "gain_hi": gain and gain["hi"]}}
    where = args.runs.resolve()
    where = where.relative_to(HERE.parent) if where.is_relative_to(HERE.parent) else where
    command = rerun_command(args.seeds, args.confidence, where, args.name)
    md = render(table, seeds, own) + f"\n{machine()}; {today()}; runs in `{where}`; `{command}`."
    meta = {"machine": machine(), "date": today(), "runs": str(where), "command": command}
    write_results(args.name, meta, {str(c): t for c, t in table.items()}, md)
    print(md)


if __name__ == "__main__":
    main()
