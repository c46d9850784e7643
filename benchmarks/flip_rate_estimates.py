"""How well is rdpo's flip rate estimated? The posteriors' estimate against the gold items'
and against the truth, on the label-noise benchmark's pairs (issue 19; no training).

    python benchmarks/flip_rate_estimates.py [--size smoke|quick|target|full]

At the size's largest data size, for every label condition and seed of
benchmarks/label_noise.py (the same candidates, pairs, votes and gold items):

- true: the share of training pairs whose majority label disagrees with the ground truth
  (what `rdpo_true` is told);
- posteriors: the mean Dawid-Skene posterior probability that the majority is wrong
  (what `rdpo` is told);
- gold: the same after rescaling the posteriors by the temperature fitted on the gold
  items (the held-out prompts' pairs, voted on by the same panel; `alignloop.labeling.gold`;
  what `rdpo_gold` is told).

No training: a few minutes, mostly the panel's sentence embeddings of each response (once
each), once label_noise.py has sampled the candidates (cached in its work directory);
otherwise it samples them first, as label_noise.py would.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import label_noise as ln  # noqa: E402
from common import RESULTS, machine, today, update_readme  # noqa: E402
from label_noise_runs import candidates, pair_pool  # noqa: E402
from loop_bench import RUNS  # noqa: E402

CONDITIONS = ("clean", "flip20", "flip40", "disagree")
SEEDS = 3


def estimates(spec: dict, work: Path) -> list[dict]:
    """One row per (condition, seed): the three flip rates and the gold fit."""
    cands = candidates(spec, work)
    n = max(spec["pairs"])
    pairs, gold = pair_pool(cands)[:n], ln.gold_pairs(cands)
    rows = []
    for cond in CONDITIONS:
        for seed in range(SEEDS):
            ballots = ln.votes(pairs, cond, seed)
            _, posterior = ln.labeled_rows(pairs, ballots, "rdpo")
            from_gold, fit = ln.gold_flip_rate(pairs, ballots, gold, cond, seed)
            rows.append({"condition": cond, "seed": seed, "pairs": len(pairs),
                         "true": ln.true_flip_rate(pairs, ballots), "posteriors": posterior,
                         "gold": from_gold, **fit})
    return rows


def table(rows: list[dict]) -> str:
    """Per condition: the mean of each rate over seeds and each estimate's mean error
    (estimate - true) and mean absolute error."""
    import numpy as np

    lines = ["| labels | seeds | true flip rate | posteriors' estimate (error; abs) | gold estimate "
             "(error; abs) | gold temperature |", "|---|---|---|---|---|---|"]
    for cond in CONDITIONS:
        rs = [r for r in rows if r["condition"] == cond]
        true = np.array([r["true"] for r in rs])
        cells = []
        for k in ("posteriors", "gold"):
            err = np.array([r[k] for r in rs]) - true
            cells.append(f"{np.mean(true + err):.3f} ({np.mean(err):+.3f}; {np.mean(np.abs(err)):.3f})")
        temps = ", ".join(f"{r['gold_temperature']:.2f}" for r in rs)
        lines.append(f"| {cond} | {len(rs)} | {np.mean(true):.3f} | {cells[0]} | {cells[1]} | {temps} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(ln.SIZES), default="target")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    ap.add_argument("--work", type=Path, default=RUNS / "label_noise", help="label_noise.py's "
                    "run directories (its candidates are read there)")
    args = ap.parse_args(argv)
    spec = ln.SIZES[args.size]
    rows = estimates(spec, args.work / args.size)
    notes = sorted({r["gold_note"] for r in rows if r["gold_note"]})
    md = (table(rows) + "\n" + (f"Gold fit: {'; '.join(notes)}. " if notes else "") +
          f"{args.size} size, {rows[0]['pairs']} training pairs x {ln.VOTES} votes, "
          f"{rows[0]['gold_items']} gold items x {ln.VOTES} votes (the held-out prompts' pairs), "
          f"the label-noise benchmark's seeds 0-{SEEDS - 1}; {machine()}; {today()}; "
          f"`python benchmarks/flip_rate_estimates.py --size {args.size}`.")
    name = f"flip_rate_estimates.{args.size}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(
        {"meta": {"size": args.size, "machine": machine(), "date": today()},
         "results": [{k: round(v, 6) if isinstance(v, float) else v for k, v in r.items()}
                     for r in rows]}, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(md + "\n")
    if args.out.resolve() == RESULTS.resolve() and args.size != "smoke":
        update_readme(md, key=name)
    print(md)


if __name__ == "__main__":
    main()
