"""Labels saved by informative pair selection (no LM needed; minutes on a CPU).

A simulated labeling campaign: prompts with k candidate responses each, every
response a feature vector, a latent Bradley-Terry utility u = w* . phi, and a
panel of annotators who disagree systematically (annotator j votes with
w_j = w* + delta_j) on top of Bradley-Terry noise. The judge is alignloop's
bootstrap ensemble of Bradley-Terry heads (`BTEnsemble`, the embedding judge's
learner) on these synthetic features, refit after every batch of labels; pairs
are chosen by alignloop's own `select_pairs` with the `random`, `uncertainty`
and `double_thompson` strategies.

Measured: held-out preference accuracy against the latent truth (sign of
u_a - u_b over every pair of held-out prompts) as a function of labels spent,
over several seeds. Target: the best strategy reaches the accuracy random
selection has at its full budget with at most a third of the labels.

    python benchmarks/label_efficiency.py --size quick|full
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from alignloop.config.labeling import SelectionConfig  # noqa: E402
from alignloop.labeling import Judgement  # noqa: E402
from alignloop.labeling.embedding import BTEnsemble  # noqa: E402
from alignloop.labeling.select import CandidateGroup, select_pairs  # noqa: E402
from common import RESULTS, machine, today, write_results  # noqa: E402

STRATEGIES = ("random", "uncertainty", "double_thompson")
SIZES = {
    "quick": {"seeds": 3, "budget": 600, "batch": 25, "pool": 600, "candidates": 150},
    "full": {"seeds": 8, "budget": 900, "batch": 25, "pool": 1200, "candidates": 200},
}


@dataclass
class World:
    """Features (prompts, k, d), the latent weights and the panel's weights."""

    phi: np.ndarray        # (P, k, d) pool prompts
    test_phi: np.ndarray   # (T, k, d) held-out prompts
    w_true: np.ndarray     # (d,)
    panel: np.ndarray      # (A, d)


def make_world(seed: int, *, pool: int, test: int = 300, k: int = 4, d: int = 24,
               annotators: int = 5, disagreement: float = 0.5, scale: float = 1.5) -> World:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)
    w *= scale / np.linalg.norm(w) * np.sqrt(d) / 2          # typical |u_a - u_b| ~ scale
    # Samples of one prompt share most of their features (a policy's k samples are alike);
    # they differ along response-specific directions.
    def draw(n):
        base = rng.normal(size=(n, 1, d))
        return base + 0.6 * rng.normal(size=(n, k, d))
    panel = w + disagreement * np.linalg.norm(w) / np.sqrt(d) * rng.normal(size=(annotators, d))
    return World(draw(pool), draw(test), w, panel)


def vote(world: World, rng, fa: np.ndarray, fb: np.ndarray) -> float:
    """One annotator drawn at random votes with Bradley-Terry noise: 1.0 if a wins."""
    w = world.panel[rng.integers(len(world.panel))]
    return float(rng.random() < 1 / (1 + np.exp(-(fa - fb) @ w)))


def accuracy(heads: BTEnsemble, world: World) -> float:
    """Held-out preference accuracy against the latent truth, all pairs of every prompt."""
    T, k, _ = world.test_phi.shape
    i, j = np.triu_indices(k, 1)
    diffs = (world.test_phi[:, i] - world.test_phi[:, j]).reshape(-1, world.test_phi.shape[-1])
    truth = diffs @ world.w_true > 0
    if not heads.fitted:
        return 0.5
    pred = heads.member_probs(diffs).mean(0) > 0.5
    return float(np.mean(pred == truth))


def judged(heads: BTEnsemble, groups_phi: np.ndarray, members: int):
    """Judgements for every pair (g, i, j) of the candidate prompts under the current heads."""
    G, k, d = groups_phi.shape
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    out = {}
    if heads.fitted:
        diffs = np.stack([groups_phi[:, i] - groups_phi[:, j] for i, j in pairs], 1)  # (G, n, d)
        probs = heads.member_probs(diffs.reshape(-1, d)).reshape(members, G, len(pairs))
        for g in range(G):
            for n, (i, j) in enumerate(pairs):
                out[(g, i, j)] = Judgement.from_members(probs[:, g, n])
    else:
        for g in range(G):
            for i, j in pairs:
                out[(g, i, j)] = Judgement(0.5, (0.5,) * members, 0.5)
    return [pairs] * G, out


def campaign(strategy: str, seed: int, size: dict, members: int = 8) -> list[tuple[int, float]]:
    world = make_world(seed, pool=size["pool"])
    rng = np.random.default_rng(1000 + seed)
    heads = BTEnsemble(members=members, l2=1.0, seed=seed)
    X, y, curve = [], [], []
    used: set[tuple[int, int, int]] = set()
    while len(y) < size["budget"]:
        # a fresh slice of the pool is offered each batch, like a new round's prompts
        offer = rng.choice(len(world.phi), size=size["candidates"], replace=False)
        groups_phi = world.phi[offer]
        pairs, js = judged(heads, groups_phi, members)
        groups = [CandidateGroup(str(p), "", tuple(str(x) for x in range(groups_phi.shape[1])))
                  for p in offer]
        # The very first batch has no model yet: every strategy starts from random pairs.
        name = strategy if heads.fitted else "random"
        cfg = SelectionConfig(strategy=name, budget=size["batch"], random_share=0.0,
                              seed=int(rng.integers(1 << 31)))
        for p in select_pairs(groups, pairs, js, cfg):
            key = (int(offer[p.group]), p.i, p.j)
            if key in used:
                continue
            used.add(key)
            fa, fb = world.phi[key[0], p.i], world.phi[key[0], p.j]
            X.append(fa - fb)
            y.append(vote(world, rng, fa, fb))
        heads.fit(np.array(X), np.array(y))
        curve.append((len(y), accuracy(heads, world)))
    return curve


def labels_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((n for n, acc in curve if acc >= target), None)


def mean_curve(runs: list[list[tuple[int, float]]], grid: np.ndarray) -> np.ndarray:
    """Accuracy averaged over seeds on a common grid of label counts."""
    return np.mean([np.interp(grid, [x for x, _ in r], [a for _, a in r]) for r in runs], axis=0)


def summarize(curves: dict, size: dict, size_name: str) -> tuple[dict, list[dict], str]:
    """The table. Primary statistic: on the seed-averaged curves, the labels a strategy needs
    to reach the accuracy random selection has at its full budget. Per seed, the same with a
    seed that never gets there counted as needing more than the budget."""
    budget = size["budget"]
    grid = np.arange(size["batch"], budget + 1, size["batch"])
    bar = float(mean_curve(curves["random"], grid)[-1])
    rows = []
    for s in STRATEGIES:
        m = mean_curve(curves[s], grid)
        hit = np.nonzero(m >= bar)[0]
        per_seed = []
        for seed in range(len(curves[s])):
            seed_bar = curves["random"][seed][-1][1]
            per_seed.append(labels_to_reach(curves[s][seed], seed_bar))
        as_num = [n if n is not None else math.inf for n in per_seed]
        finals = [run[-1][1] for run in curves[s]]
        rows.append({
            "strategy": s, "final_accuracy_mean": float(np.mean(finals)),
            "final_accuracy_sd": float(np.std(finals)),
            "labels_to_bar_mean_curve": int(grid[hit[0]]) if len(hit) else None,
            "labels_to_bar_per_seed": per_seed,
            "labels_to_bar_per_seed_median": float(np.median(as_num)),
        })
    best = min((r for r in rows if r["strategy"] != "random" and r["labels_to_bar_mean_curve"]),
               key=lambda r: r["labels_to_bar_mean_curve"], default=None)
    ratio = best["labels_to_bar_mean_curve"] / budget if best else None
    name = "label_efficiency" if size_name == "full" else "label_efficiency.quick"
    meta = {"size": size_name, **size, "machine": machine(), "date": today(),
            "command": f"python benchmarks/label_efficiency.py --size {size_name}",
            "target": "best strategy reaches random's full-budget accuracy with <= 1/3 of the labels",
            "random_full_budget_accuracy": bar,
            "best_strategy": best["strategy"] if best else None, "labels_ratio": ratio,
            "target_met": bool(ratio is not None and ratio <= 1 / 3)}
    lines = ["| strategy | accuracy at the full budget (mean ± sd over seeds) | labels to reach "
             "random's full-budget accuracy (seed-averaged curve) | same, median of per-seed "
             "curves |", "|---|---|---|---|"]
    for r in rows:
        need, med = r["labels_to_bar_mean_curve"], r["labels_to_bar_per_seed_median"]
        lines.append(f"| {r['strategy']} | {r['final_accuracy_mean']:.3f} ± "
                     f"{r['final_accuracy_sd']:.3f} | {'not reached' if need is None else need} "
                     f"of {budget} | {'> budget' if math.isinf(med) else f'{med:.0f}'} |")
    verdict = "met" if meta["target_met"] else "not met"
    lines += ["", f"Target (best strategy needs ≤ 1/3 of random's labels): **{verdict}** — "
              f"{best['strategy'] if best else 'no strategy'} reaches random's full-budget "
              f"accuracy ({bar:.3f}) with {'-' if ratio is None else f'{ratio:.2f}'} of the "
              f"budget on the seed-averaged curve. Per seed the bar is noisy (random itself "
              f"reaches its own final value early on some seeds), hence the median column. "
              f"{size['seeds']} seeds, batches of {size['batch']} labels, 5-annotator panel "
              f"with systematic disagreement; {meta['machine']}; {meta['date']}; "
              f"`{meta['command']}`; plot: benchmarks/results/{name}.png."]
    return meta, rows, "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=list(SIZES), default="quick")
    ap.add_argument("--table-only", action="store_true",
                    help="re-render the table, plot and README section from the saved curves")
    ap.add_argument("--batch", type=int, help="labels per refit (overrides the size's)")
    ap.add_argument("--candidates", type=int, help="prompts offered per batch (overrides)")
    ap.add_argument("--name", help="results file name (default: by size)")
    args = ap.parse_args()
    size = dict(SIZES[args.size])
    size.update({k: v for k, v in (("batch", args.batch), ("candidates", args.candidates)) if v})
    name = args.name or ("label_efficiency" if args.size == "full" else "label_efficiency.quick")
    if args.table_only:
        saved = json.loads((RESULTS / f"{name}.json").read_text())
        curves = {s: [[tuple(p) for p in run] for run in runs]
                  for s, runs in saved["results"]["curves"].items()}
    else:
        curves = {s: [] for s in STRATEGIES}
        for seed in range(size["seeds"]):
            for s in STRATEGIES:
                curves[s].append(campaign(s, seed, size))
                print(f"seed {seed} {s:16s} final accuracy {curves[s][-1][-1][1]:.3f}", flush=True)
    meta, rows, md = summarize(curves, size, args.size)
    _plot(curves, RESULTS / f"{name}.png")
    # a quick pass never overwrites the full results the README shows
    write_results(name, meta, {"rows": rows, "curves": curves}, md,
                  readme=args.size == "full" and not args.name)
    print(md)


def _plot(curves, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    n = np.array(sorted({x for runs in curves.values() for run in runs for x, _ in run}))
    for s, runs in curves.items():
        # runs can differ by a label or two per batch (a repeated pair is skipped): interpolate
        acc = np.array([np.interp(n, [x for x, _ in run], [a for _, a in run]) for run in runs])
        m, sd = acc.mean(0), acc.std(0)
        ax.plot(n, m, label=s)
        ax.fill_between(n, m - sd, m + sd, alpha=0.2)
    ax.set_xlabel("labels spent")
    ax.set_ylabel("held-out accuracy vs latent truth")
    ax.set_title("Label efficiency by selection strategy")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
