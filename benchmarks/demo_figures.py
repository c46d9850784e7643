"""The demo's measured figures, read from a finished `make demo` run (no numbers by hand).

    python benchmarks/demo_figures.py [RUN_DIR]     # default runs/demo

Reads every round's report.json, slices.json and state.json and writes
benchmarks/results/demo.{json,md} and the README section between
`<!-- bench:demo -->` markers: per round, the ground-truth (panel) reward overall
and on the failure slices the loop chose, KL to the base with its interval, the
judges' win rate against the base, the share of held-out responses that end by EOS
rather than at `generation.max_new_tokens` (a cut response cannot show it learned to be
brief), and the run's wall time; then the acceptance targets with the measured values.
"""

from __future__ import annotations

import argparse
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


def _gate(state_round: dict) -> str:
    """What the loop did with the round: kept, or its gate's action when it tripped."""
    g = state_round.get("gate") or {}
    if not g.get("tripped"):
        return "kept"
    return {"rollback": "rolled back", "stop": "stopped after", "flag": "flagged"}.get(
        g.get("action"), str(g.get("action")))


def _round_row(k: int, r: dict, failing: list[str], gate: str = "kept") -> dict:
    """One round's figures from its report.json; `gate`: what the loop did with it."""
    lat = r["latent_reward"]["models"]
    kl = r["kl_to_base"]["k1"]["sequence"]
    win = r["win_rate_vs_base"].get("overall") or {}
    eos = r["length"].get("ends_by_eos") or {}
    return {"round": k, "latent_overall": lat["policy"]["overall"]["value"],
            "latent_failing": _slice_mean(lat["policy"]["by_slice"], failing),
            "kl_to_base": kl["value"], "kl_lo": kl["lo"], "kl_hi": kl["hi"],
            "win_vs_base": win.get("value"), "win_lo": win.get("lo"), "win_hi": win.get("hi"),
            "ends_by_eos": (eos.get("policy") or {}).get("value"), "gate": gate}


def collect(run: Path) -> dict:
    """The figures of a finished run: per round, the base model, the slices, the wall time."""
    from alignloop.config import load_config

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
    cfg = load_config(run / "config.yaml")
    rows, base_latent, base_eos = [], None, None
    for k in rounds:
        path = run / f"round_{k:03d}" / "report" / "report.json"
        if path.exists():
            r = json.loads(path.read_text())
            rows.append(_round_row(k, r, failing, _gate(state["rounds"][str(k)])))
            base_latent = base_latent or r["latent_reward"]["models"].get("base")
            base_eos = base_eos or (r["length"].get("ends_by_eos") or {}).get("base")
    base = {"round": "base", "latent_overall": base_latent["overall"]["value"],
            "latent_failing": _slice_mean(base_latent["by_slice"], failing),
            "ends_by_eos": (base_eos or {}).get("value")} if base_latent else None
    return {"run": str(run), "rounds": rows, "base": base, "failing_slices": failing,
            "wall_s": max(ends) - min(starts), "max_new_tokens": cfg.generation.max_new_tokens,
            "kl_budget": cfg.loop.gate.max_kl_to_base or None}


def _rises(rows: list[dict], key: str) -> bool:
    first, last = rows[0][key], rows[-1][key]
    return first is not None and last is not None and last > first


def _never_falls(rows: list[dict], key: str) -> bool:
    """The value never falls from one kept round to the next (a rolled-back round is not
    kept: the next round starts from the one before it)."""
    kept = [r[key] for r in rows if r.get("gate", "kept") != "rolled back"]
    return all(a is not None and b is not None and b >= a
               for a, b in zip(kept, kept[1:], strict=False))


def render(fig: dict) -> tuple[str, dict]:
    """The README table and target lines, and the targets met."""
    rows, base, budget = fig["rounds"], fig["base"], fig["kl_budget"]
    first, last = rows[0], rows[-1]
    kept = [r for r in rows if r.get("gate", "kept") != "rolled back"]
    targets = {"failing_rise": _rises(rows, "latent_failing"),
               "kept_never_falls": _never_falls(rows, "latent_failing"),
               "kl_within": budget is None or all(r["kl_to_base"] <= budget for r in rows),
               "eos_rise": _rises(rows, "ends_by_eos"), "time": fig["wall_s"] <= TIME_BUDGET_S}
    fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    pct = lambda x: "-" if x is None else f"{100 * x:.0f}%"  # noqa: E731
    lines = ["| round | panel reward, all held-out | on the failure slices | KL to base (nats/seq, 95% CI) "
             "| judge win rate vs base (95% CI) | ends by EOS | gate |",
             "|---|---|---|---|---|---|---|"]
    if base:
        lines.append(f"| base model | {fmt(base['latent_overall'])} | "
                     f"{fmt(base['latent_failing'])} | 0 | - | {pct(base['ends_by_eos'])} | - |")
    for r in rows:
        lines.append(f"| {r['round']} | {fmt(r['latent_overall'])} | {fmt(r['latent_failing'])} | "
                     f"{r['kl_to_base']:.2f} [{r['kl_lo']:.2f}, {r['kl_hi']:.2f}] | "
                     f"{fmt(r['win_vs_base'])} [{fmt(r['win_lo'])}, {fmt(r['win_hi'])}] | "
                     f"{pct(r['ends_by_eos'])} | {r.get('gate', 'kept')} |")
    verdict = lambda ok: "**met**" if ok else "**not met**"  # noqa: E731
    lines += [
        "",
        f"Failure slices chosen by the loop: {', '.join(fig['failing_slices']) or 'none'}. "
        f"Ends by EOS: the share of held-out responses that end by themselves rather than at "
        f"max_new_tokens = {fig['max_new_tokens']} tokens (a cut response cannot show that the "
        f"policy learned to be brief).",
        f"- Panel (ground-truth) reward on the failure slices rises from round 0 to round "
        f"{last['round']}: {verdict(targets['failing_rise'])} ({fmt(first['latent_failing'])} → "
        f"{fmt(last['latent_failing'])}).",
        f"- Panel reward on the failure slices never falls from one kept round to the next "
        f"(a rolled-back round is not kept): {verdict(targets['kept_never_falls'])} "
        f"({' → '.join(fmt(r['latent_failing']) for r in kept)}).",
        f"- KL to the base within the configured budget ({budget} nats): "
        f"{verdict(targets['kl_within'])} (largest {max(r['kl_to_base'] for r in rows):.2f}).",
        f"- Share ending by EOS rises from round 0 to round {last['round']}: "
        f"{verdict(targets['eos_rise'])} ({pct(first['ends_by_eos'])} → "
        f"{pct(last['ends_by_eos'])}; base model {pct(base['ends_by_eos'] if base else None)}).",
        f"- Wall time ≤ 15 minutes: {verdict(targets['time'])} ({fig['wall_s'] / 60:.1f} min).",
        f"{machine()}; {today()}; `make demo`, then `python benchmarks/demo_figures.py`.",
    ]
    return "\n".join(lines), targets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", nargs="?", type=Path, default=HERE.parent / "runs" / "demo",
                    help="a finished run's directory (default: runs/demo)")
    run = ap.parse_args().run
    if not (run / "state.json").is_file():
        ap.error(f"run: {run / 'state.json'} does not exist (not a run directory; `make demo` "
                 "writes runs/demo)")
    fig = collect(run)
    md, targets = render(fig)
    meta = {"run": fig["run"], "machine": machine(), "date": today(),
            "failing_slices": fig["failing_slices"], "wall_s": fig["wall_s"],
            "max_new_tokens": fig["max_new_tokens"], "targets": targets}
    write_results("demo", meta, {"rounds": fig["rounds"], "base": fig["base"]}, md)
    print(md)


if __name__ == "__main__":
    main()
