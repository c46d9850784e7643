"""Labels saved by informative pair selection (no LM needed; minutes on a CPU).

A simulated labeling campaign: prompts with k candidate responses each, every
response a feature vector, a latent Bradley-Terry utility u = w* . phi, and a
panel of annotators who disagree systematically (annotator j votes with
w_j = w* + delta_j) on top of Bradley-Terry noise. The judge is alignloop's
bootstrap ensemble of Bradley-Terry heads (`BTEnsemble`, the embedding judge's
learner) on these synthetic features, refit after every batch of labels; pairs
are chosen by alignloop's own `select_pairs`. A variant is a strategy (`random`,
`uncertainty`, `double_thompson`, `bald`, `bald_diverse`) and an acquisition
batch size (labels bought between two refits: 25, 10 or 5). Two references say how
far selection can go in this world: `oracle_d_optimal` picks knowing the truth (greedy
D-optimal design; never counted as the best variant), and the ceiling is the accuracy
of heads fit on 20,000 random labels, where every curve flattens.

Measured: held-out preference accuracy against the latent truth (sign of
u_a - u_b over every pair of held-out prompts) as a function of labels spent,
over several seeds. Target: the best variant reaches the accuracy random
selection has at its full budget with at most a third of the labels. The
figure is read off the seed-averaged curves; its interval comes from
resampling the seeds (each seed is one world, shared by every variant, so
random and the variant are resampled together).

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
from label_efficiency_stats import (  # noqa: E402
    bootstrap_interval,
    grid_of,
    labels_to_bar,
    labels_to_reach,
    mean_curve,
    paired_difference,
)

VARIANTS = (("random", 25), ("uncertainty", 25), ("double_thompson", 25), ("bald", 25),
            ("bald_diverse", 25), ("uncertainty", 10), ("uncertainty", 5),
            ("double_thompson", 10), ("double_thompson", 5), ("bald", 10), ("bald", 5),
            ("bald_diverse", 10), ("bald_diverse", 5), ("oracle_d_optimal", 25),
            ("oracle_d_optimal", 5))
"""(strategy, labels per refit); the first is the bar every other variant is held to."""
ORACLE = "oracle_d_optimal"
"""A reference, not a strategy: it picks knowing the truth (`_oracle_picks`), so it never
counts as the best variant. It is not a bound: it designs for parameter information, not
accuracy, and uncertainty sampling does as well (README)."""
SIZES = {
    "quick": {"seeds": 3, "budget": 600, "pool": 600, "candidates": 150},
    "full": {"seeds": 12, "budget": 900, "pool": 1200, "candidates": 200},
}
DEFAULT = SelectionConfig().strategy
"""Each variant is also compared with the configured default strategy at its batch size."""


def variant_name(strategy: str, batch: int) -> str:
    return f"{strategy}, batch {batch}"


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
        mean, sd = probs.mean(0), probs.std(0)     # what Judgement.from_members computes
        for g in range(G):
            for n, (i, j) in enumerate(pairs):
                out[(g, i, j)] = Judgement(float(mean[g, n]), tuple(probs[:, g, n].tolist()),
                                           float(sd[g, n]))
    else:
        for g in range(G):
            for i, j in pairs:
                out[(g, i, j)] = Judgement(0.5, (0.5,) * members, 0.5)
    return [pairs] * G, out


def campaign(strategy: str, seed: int, size: dict, batch: int,
             members: int = 8) -> list[tuple[int, float]]:
    """One labeling campaign in the world of `seed`: buy `batch` labels chosen by `strategy`,
    refit, measure; until the budget is spent. Returns [(labels so far, accuracy)]."""
    world = make_world(seed, pool=size["pool"])
    rng = np.random.default_rng(1000 + seed)
    heads = BTEnsemble(members=members, l2=1.0, seed=seed)
    X, y, curve = [], [], []
    used: set[tuple[int, int, int]] = set()
    info = np.eye(world.phi.shape[-1])      # the labels' Fisher information under the truth
    while len(y) < size["budget"]:
        # a fresh slice of the pool is offered each batch, like a new round's prompts
        offer = rng.choice(len(world.phi), size=size["candidates"], replace=False)
        groups_phi = world.phi[offer]
        pairs, js = judged(heads, groups_phi, members)
        # a pair already labeled is not offered again (its prompt can come back)
        pairs = [[(i, j) for i, j in gp if (int(offer[g]), i, j) not in used]
                 for g, gp in enumerate(pairs)]
        groups = [CandidateGroup(str(p), "", tuple(str(x) for x in range(groups_phi.shape[1])))
                  for p in offer]
        # The very first batch has no model yet: every strategy starts from random pairs.
        name = strategy if heads.fitted else "random"
        cfg = SelectionConfig(strategy=name if name != ORACLE else "random",
                              budget=min(batch, size["budget"] - len(y)),
                              random_share=0.0,
                              seed=int(rng.integers(1 << 31)))
        picks = (_oracle_picks(world, offer, pairs, cfg.budget, info) if name == ORACLE
                 else [(p.group, p.i, p.j) for p in select_pairs(groups, pairs, js, cfg)])
        for g, i, j in picks:
            key = (int(offer[g]), i, j)
            used.add(key)
            fa, fb = world.phi[key[0], i], world.phi[key[0], j]
            X.append(fa - fb)
            y.append(vote(world, rng, fa, fb))
            if strategy == ORACLE:
                info += _true_weight(world, fa - fb) * np.outer(fa - fb, fa - fb)
        heads.fit(np.array(X), np.array(y))
        curve.append((len(y), accuracy(heads, world)))
    return curve


CEILING_LABELS = 20_000


def ceiling_accuracy(seed: int, size: dict, labels: int = CEILING_LABELS) -> float:
    """Held-out accuracy of the heads fit on `labels` uniformly random votes in the world of
    `seed`: where every curve flattens (the panel's systematic disagreement and the heads'
    prior keep it below 1)."""
    world = make_world(seed, pool=size["pool"])
    rng = np.random.default_rng(2000 + seed)
    g = rng.integers(0, world.phi.shape[0], labels)
    a = rng.integers(0, world.phi.shape[1], labels)
    b = (a + rng.integers(1, world.phi.shape[1], labels)) % world.phi.shape[1]
    fa, fb = world.phi[g, a], world.phi[g, b]
    y = [vote(world, rng, x, z) for x, z in zip(fa, fb, strict=True)]
    return accuracy(BTEnsemble(members=8, l2=1.0, seed=seed).fit(fa - fb, np.array(y)), world)


def _true_weight(world: World, x: np.ndarray) -> np.ndarray:
    """p (1 - p) of the panel's vote on feature differences `x` (..., d): the Fisher weight
    of one label under the true Bradley-Terry model (p: a random annotator prefers a)."""
    p = (1 / (1 + np.exp(-(x @ world.panel.T)))).mean(-1)
    return p * (1 - p)


def _oracle_picks(world: World, offer, pairs, n: int, info: np.ndarray):
    """`n` offered pairs chosen greedily for the largest gain in log det of the labels' Fisher
    information under the true model (D-optimal design with the truth known; `info` starts
    at the heads' L2 prior, the identity). Not a strategy a labeler can run: it knows the
    panel's weights: a reference for what informed selection saves in this world."""
    keys = [(g, i, j) for g, gp in enumerate(pairs) for i, j in gp]
    x = np.stack([world.phi[offer[g], i] - world.phi[offer[g], j] for g, i, j in keys])
    lam = _true_weight(world, x)
    inv = np.linalg.inv(info)
    taken: list[int] = []
    for _ in range(min(n, len(keys))):
        gain = np.log1p(lam * np.einsum("nd,de,ne->n", x, inv, x))
        gain[taken] = -np.inf
        k = int(np.argmax(gain))
        taken.append(k)
        v = inv @ x[k]
        inv -= lam[k] * np.outer(v, v) / (1 + lam[k] * x[k] @ v)
    return [keys[k] for k in taken]


def summarize(curves: dict, size: dict, size_name: str,
              ceiling: list[float] | None = None) -> tuple[dict, list[dict], str]:
    """The table. Primary statistic: on the seed-averaged curves, the labels a variant needs
    to reach the accuracy random selection (batch 25) has at its full budget, with a 90%
    seed-bootstrap interval. Per seed, the same with a seed that never gets there counted as
    needing more than the budget."""
    budget = size["budget"]
    bar_name = variant_name(*VARIANTS[0])
    bar_runs, bar_grid = curves[bar_name], grid_of(VARIANTS[0][1], budget)
    bar = float(mean_curve(bar_runs, bar_grid)[-1])
    rows = []
    for strategy, batch in VARIANTS:
        name = variant_name(strategy, batch)
        if name not in curves:      # re-rendering results saved before the variant existed
            continue
        runs, grid = curves[name], grid_of(batch, budget)
        need = labels_to_bar(runs, bar_runs, grid, bar_grid)
        lo, hi = bootstrap_interval(runs, bar_runs, grid, bar_grid)
        per_seed = [labels_to_reach(runs[k], bar_runs[k][-1][1]) for k in range(len(runs))]
        ref = variant_name(DEFAULT, batch)      # the default strategy at the same batch size
        vs = (paired_difference(runs, curves[ref], bar_runs, grid, grid, bar_grid)
              if strategy not in ("random", DEFAULT) and ref in curves else None)
        finals = [run[-1][1] for run in runs]
        rows.append({
            "variant": name, "strategy": strategy, "batch": batch,
            "final_accuracy_mean": float(np.mean(finals)), "final_accuracy_sd": float(np.std(finals)),
            "labels_to_bar_mean_curve": None if math.isinf(need) else int(need),
            "labels_to_bar_interval90": [lo, hi],
            "vs_default_same_batch": None if vs is None else {
                "default": ref, "labels_difference": vs[0], "interval90": list(vs[1:])},
            "labels_to_bar_per_seed": per_seed,
            "labels_to_bar_per_seed_median": float(np.median(
                [n if n is not None else math.inf for n in per_seed])),
        })
    best = min((r for r in rows[1:] if r["labels_to_bar_mean_curve"] and r["strategy"] != ORACLE),
               key=lambda r: (r["labels_to_bar_mean_curve"], r["labels_to_bar_interval90"][1]),
               default=None)
    ratio = best["labels_to_bar_mean_curve"] / budget if best else None
    name = "label_efficiency" if size_name == "full" else "label_efficiency.quick"
    meta = {"size": size_name, **size, "machine": machine(), "date": today(),
            "command": f"python benchmarks/label_efficiency.py --size {size_name}",
            "target": "best variant reaches random's full-budget accuracy with <= 1/3 of the labels",
            "random_full_budget_accuracy": bar,
            "best_strategy": best["variant"] if best else None, "labels_ratio": ratio,
            "labels_ratio_interval90": ([x / budget for x in best["labels_to_bar_interval90"]]
                                        if best else None),
            "target_met": bool(ratio is not None and ratio <= 1 / 3),
            "oracle": _oracle_summary(rows, budget),
            "ceiling_accuracy": None if not ceiling else float(np.mean(ceiling)),
            "ceiling_labels": CEILING_LABELS}
    return meta, rows, _table(rows, meta, budget, name)


def _oracle_summary(rows: list[dict], budget: int) -> dict | None:
    """The oracle's best batch size: its share of the budget and interval (None: not run)."""
    done = [r for r in rows if r["strategy"] == ORACLE and r["labels_to_bar_mean_curve"]]
    if not done:
        return None
    r = min(done, key=lambda r: r["labels_to_bar_mean_curve"])
    return {"variant": r["variant"], "labels_ratio": r["labels_to_bar_mean_curve"] / budget,
            "labels_ratio_interval90": [x / budget for x in r["labels_to_bar_interval90"]]}


def _table(rows: list[dict], meta: dict, budget: int, name: str) -> str:
    def labels(x):
        return "> budget" if x is None or math.isinf(x) else f"{x:.0f}"

    lines = ["| variant (strategy, labels per refit) | accuracy at the full budget (mean ± sd "
             "over seeds) | labels to reach random's full-budget accuracy (seed-averaged curve) "
             "| 90% interval (seed bootstrap) | share of the budget | median of per-seed curves "
             f"| labels vs {DEFAULT} at the same batch (paired, 90% interval) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        need, (lo, hi) = r["labels_to_bar_mean_curve"], r["labels_to_bar_interval90"]
        lines.append(f"| {r['variant']} | {r['final_accuracy_mean']:.3f} ± "
                     f"{r['final_accuracy_sd']:.3f} | {labels(need)} of {budget} | "
                     f"{labels(lo)} – {labels(hi)} | "
                     f"{'-' if need is None else f'{need / budget:.2f}'} | "
                     f"{labels(r['labels_to_bar_per_seed_median'])} | {_vs(r)} |")
    best, ratio = meta["best_strategy"], meta["labels_ratio"]
    ci = meta["labels_ratio_interval90"]
    verdict = "met" if meta["target_met"] else "not met"
    lines += ["", f"Target (best variant needs ≤ 1/3 of random's labels): **{verdict}** — "
              f"{best or 'no variant'} reaches random's full-budget accuracy "
              f"({meta['random_full_budget_accuracy']:.3f}) with "
              f"{'-' if ratio is None else f'{ratio:.2f}'} of the budget on the seed-averaged "
              f"curve (90% seed-bootstrap interval "
              f"{'-' if ci is None else f'{ci[0]:.2f} – {ci[1]:.2f}' if math.isfinite(ci[1]) else f'{ci[0]:.2f} – not reached'}). "
              f"{_oracle_sentence(meta.get('oracle'))}{_ceiling_sentence(meta)}"
              f"Random, batch 25 sets the bar. Per seed the bar is noisy (random itself "
              f"reaches its own final value early on some seeds), hence the median column. "
              f"{meta['seeds']} seeds, 5-annotator panel with systematic disagreement, "
              f"{meta['candidates']} fresh prompts (4 responses each) offered per batch; "
              f"{meta['machine']}; {meta['date']}; `{meta['command']}`; plot: "
              f"benchmarks/results/{name}.png."]
    return "\n".join(lines)


def _oracle_sentence(oracle: dict | None) -> str:
    if oracle is None:
        return ""
    lo, hi = oracle["labels_ratio_interval90"]
    return (f"The {oracle['variant']} reference, which picks the pairs of most Fisher "
            f"information under the true utilities (no labeler can), needs "
            f"{oracle['labels_ratio']:.2f} of the budget ({lo:.2f} – {hi:.2f}). ")


def _ceiling_sentence(meta: dict) -> str:
    top = meta.get("ceiling_accuracy")
    if top is None:
        return ""
    gap = top - meta["random_full_budget_accuracy"]
    return (f"Heads fit on {meta['ceiling_labels']:,} random labels reach {top:.3f} (mean "
            f"over seeds), so random's bar sits {gap:.3f} below where the curves flatten; if "
            f"that gap shrinks as 1/√labels, reaching the bar with a third of the budget "
            f"takes labels that each carry 3× a random label's information. ")


def _vs(row: dict) -> str:
    v = row["vs_default_same_batch"]
    if v is None:
        return "-"

    def signed(x):
        return "∞" if math.isinf(x) and x > 0 else "-∞" if math.isinf(x) else f"{x:+.0f}"

    return f"{signed(v['labels_difference'])} [{signed(v['interval90'][0])}, " \
           f"{signed(v['interval90'][1])}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=list(SIZES), default="quick")
    ap.add_argument("--seeds", type=int, help="seeds (overrides the size's)")
    ap.add_argument("--table-only", action="store_true",
                    help="re-render the table, plot and README section from the saved curves")
    ap.add_argument("--candidates", type=int, help="prompts offered per batch (overrides)")
    ap.add_argument("--name", help="results file name (default: by size)")
    ap.add_argument("--variants", help="run only these variants (e.g. 'oracle_d_optimal:5,"
                    "bald:25') and merge them into the saved curves of the same size")
    args = ap.parse_args()
    size = dict(SIZES[args.size])
    size.update({k: v for k, v in (("seeds", args.seeds), ("candidates", args.candidates)) if v})
    name = args.name or ("label_efficiency" if args.size == "full" else "label_efficiency.quick")
    if args.table_only:
        curves, ceiling = _saved(name, size)
    else:
        from threadpoolctl import threadpool_limits

        todo = _parse_variants(args.variants) if args.variants else VARIANTS
        curves = _saved(name, size)[0] if args.variants else {}
        curves.update({variant_name(*v): [] for v in todo})
        with threadpool_limits(1):   # small fits: threads only contend on a shared machine
            for seed in range(size["seeds"]):
                for strategy, batch in todo:
                    runs = curves[variant_name(strategy, batch)]
                    runs.append(campaign(strategy, seed, size, batch))
                    print(f"seed {seed} {variant_name(strategy, batch):24s} final accuracy "
                          f"{runs[-1][-1][1]:.3f}", flush=True)
            ceiling = [ceiling_accuracy(seed, size) for seed in range(size["seeds"])]
    meta, rows, md = summarize(curves, size, args.size, ceiling)
    _plot(curves, RESULTS / f"{name}.png")
    # a quick pass never overwrites the full results the README shows
    write_results(name, meta, {"rows": rows, "curves": curves, "ceiling": ceiling}, md,
                  readme=args.size == "full" and not args.name)
    print(md)


def _parse_variants(text: str) -> list[tuple[str, int]]:
    known = {variant_name(*v): v for v in VARIANTS}
    out = []
    for item in text.split(","):
        strategy, _, batch = item.strip().partition(":")
        v = known.get(variant_name(strategy, int(batch) if batch.isdigit() else -1))
        if v is None:
            raise SystemExit(f"--variants: unknown variant {item.strip()!r}; known: "
                             f"{', '.join(f'{s}:{b}' for s, b in VARIANTS)}")
        out.append(v)
    return out


def _saved(name: str, size: dict) -> tuple[dict, list[float] | None]:
    """The curves and ceiling of an earlier run of the same size (same seeds, budget, pool
    and offer)."""
    path = RESULTS / f"{name}.json"
    if not path.exists():
        raise SystemExit(f"{path} does not exist: run every variant first")
    saved = json.loads(path.read_text())
    differ = [k for k in size if saved["meta"].get(k) != size[k]]
    if differ:
        raise SystemExit(f"{path} was run with other settings ({', '.join(differ)})")
    curves = {s: [[tuple(p) for p in run] for run in runs]
              for s, runs in saved["results"]["curves"].items()}
    return curves, saved["results"].get("ceiling")


def _plot(curves, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120, sharey=True)
    n = np.array(sorted({x for runs in curves.values() for run in runs for x, _ in run}))
    bar = np.mean([run[-1][1] for run in curves[variant_name(*VARIANTS[0])]])
    for name, runs in curves.items():
        # variants refit at different label counts: interpolate onto one axis
        acc = np.array([np.interp(n, [x for x, _ in run], [a for _, a in run]) for run in runs])
        m, sd = acc.mean(0), acc.std(0)
        # left: strategies at batch 25; right: batch sizes (and the bar for reference)
        for ax in [axes[0]] * name.endswith("batch 25") + [axes[1]] * (
                not name.endswith("batch 25") or name.startswith("random")):
            ax.plot(n, m, label=name, lw=1.2)
            ax.fill_between(n, m - sd, m + sd, alpha=0.12)
    for ax, title in zip(axes, ("strategies, 25 labels per refit", "labels per refit"),
                         strict=True):
        ax.axhline(bar, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("labels spent")
        ax.set_title(title)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("held-out accuracy vs latent truth (mean ± sd)")
    fig.tight_layout()
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
