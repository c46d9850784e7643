"""The label-noise sweep's arithmetic: intervals over seeds x prompts, kept share of the
clean gain, the target check, the table and the plot (benchmarks/label_noise.py runs it).

Every (data size, seed, condition, loss) run leaves per-prompt numbers on the same
held-out prompts: the panel-reward gain of the policy's sample over the base model's
sample, and the k1 KL estimate log pi(y)/pi_base(y) of a temperature-1 policy sample.
Within a seed every condition and loss shares the base samples and the prompts, so the
comparisons are paired. Intervals come from a two-stage bootstrap: draw the seeds with
replacement, then within each drawn seed the prompts with replacement; a statistic of
two runs (the kept share) uses the same draws for both, so the pairing is kept. With one
seed the first stage does nothing and the interval covers prompts only.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

N_BOOT = 2000
KEEP_TARGET = 0.7
# the objectives the target asks about (rdpo_gold is rdpo with its flip rate measured on
# gold items, which spends their votes); rdpo_true is a control
ROBUST = ("soft", "rdpo", "rdpo_gold")
MIN_KL = 0.05                  # nats per sequence: below it "gain per nat" is not reported


def matrix(runs: list[dict], key: str) -> np.ndarray:
    """(seeds, prompts) array of per-prompt `key` values of one cell's runs (one per seed),
    on the prompts every run has, in id order."""
    ids = sorted(set.intersection(*(set(r["prompt_ids"]) for r in runs)))
    return np.array([[dict(zip(r["prompt_ids"], r[key], strict=True))[i] for i in ids]
                     for r in runs], dtype=float)


def draws(n_seeds: int, n_prompts: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap indices: seeds (B, S) and, within each drawn seed, prompts (B, S, P)."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, n_seeds, size=(N_BOOT, n_seeds)),
            rng.integers(0, n_prompts, size=(N_BOOT, n_seeds, n_prompts)))


def _resampled_means(x: np.ndarray, idx: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    s, p = idx
    return x[s[..., None], p].mean(axis=(1, 2))                       # (B,)


def _interval(value: float, reps: np.ndarray, n: int) -> dict:
    reps = reps[np.isfinite(reps)]
    lo, hi = np.percentile(reps, [2.5, 97.5]) if reps.size else (math.nan, math.nan)
    return {"value": float(value), "lo": float(lo), "hi": float(hi), "n": n}


def mean_interval(x: np.ndarray) -> dict:
    """Mean of a (seeds, prompts) array with its two-stage bootstrap 95% interval."""
    return _interval(x.mean(), _resampled_means(x, draws(*x.shape)), x.size)


def kept_share(clean: np.ndarray, noisy: np.ndarray) -> dict:
    """Mean noisy gain / mean clean gain, paired: both resampled with the same draws."""
    ids = draws(*clean.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        reps = _resampled_means(noisy, ids) / _resampled_means(clean, ids)
    value = noisy.mean() / clean.mean() if clean.mean() else math.nan
    return _interval(value, reps, clean.size)


def summarise(runs: dict, sizes, conditions, losses) -> list[dict]:
    """One row per (size, condition, loss): gain, KL, gain per nat, kept share of the clean
    gain (same size and loss), the flip rate rdpo was given, and held-out accuracy.
    `runs[(size, condition, loss)]` lists that cell's run measures, one per seed; a cell
    not in `runs` (a loss run at some sizes only) has no row."""
    rows = []
    for n in sizes:
        for cond in conditions:
            for loss in losses:
                if (n, cond, loss) not in runs:
                    continue
                cell = runs[(n, cond, loss)]
                gain, kl = matrix(cell, "gains"), matrix(cell, "kls")
                row = {"pairs": n, "condition": cond, "loss": loss, "seeds": len(cell),
                       "gain": mean_interval(gain), "kl": mean_interval(kl),
                       # undefined until the policy has moved (KL estimates near 0 are noise)
                       "gain_per_nat": (float(gain.mean() / kl.mean()) if kl.mean() >= MIN_KL
                                        else None),
                       "flip_rate": float(np.mean([r["flip_rate"] for r in cell])),
                       "accuracy": (float(np.mean([r["accuracy"] for r in cell]))
                                    if all("accuracy" in r for r in cell) else None),
                       "kept": None}
                if cond != "clean":     # paired: the clean runs of this cell's seeds
                    seeds = {r.get("seed") for r in cell}
                    clean = [r for r in runs[(n, "clean", loss)] if r.get("seed") in seeds]
                    row["kept"] = kept_share(matrix(clean, "gains"), gain)
                rows.append(row)
    return rows


def target_check(rows: list[dict], size: int) -> dict:
    """The issue's target at 40% flips and data size `size`: soft or rdpo keeps >= 70% of
    its clean gain, and sigmoid's kept share is lower with intervals that do not overlap
    (the robust loss's lower bound above sigmoid's upper bound)."""
    kept = {r["loss"]: r["kept"] for r in rows if r["pairs"] == size and r["condition"] == "flip40"}
    hard = kept["sigmoid"]
    passing = [loss for loss in ROBUST if loss in kept and kept[loss]["value"] >= KEEP_TARGET
               and kept[loss]["lo"] > hard["hi"]]
    best = max((loss for loss in ROBUST if loss in kept), key=lambda loss: kept[loss]["value"])
    pick = passing[0] if passing else best
    return {"met": bool(passing), "pairs": size, "best_robust": pick,
            "kept_robust": kept[pick], "kept_hard": hard}


def fmt(e: dict | None, digits: int = 3) -> str:
    if e is None or not math.isfinite(e.get("value", math.nan)):
        return "-"
    v = f"{e['value']:.{digits}f}"
    if math.isfinite(e.get("lo", math.nan)) and math.isfinite(e.get("hi", math.nan)):
        v += f" [{e['lo']:.{digits}f}, {e['hi']:.{digits}f}]"
    return v


def verdict_line(check: dict) -> str:
    r, h = check["kept_robust"], check["kept_hard"]
    return (f"- Target (at 40% flips and the largest data size, {check['pairs']} pairs: `soft` "
            f"or `rdpo` (its flip rate from the posteriors or, `rdpo_gold`, from gold items) "
            f"keeps >= {KEEP_TARGET:.0%} of its clean-label gain, and `sigmoid`'s kept "
            f"share is lower with non-overlapping 95% intervals): "
            f"{'**met**' if check['met'] else '**not met**'} (best: {check['best_robust']} keeps "
            f"{fmt(r, 2)}, sigmoid keeps {fmt(h, 2)}).")


def table(rows: list[dict], check: dict | None) -> str:
    lines = ["| pairs | seeds | labels | loss | flip rate given | panel-reward gain over base (95% CI) "
             "| KL to base, nats/seq (95% CI) | gain per nat | kept of clean gain (95% CI) "
             "| held-out accuracy |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        given = f"{r['flip_rate']:.3f}" if r["loss"].startswith("rdpo") else "-"
        acc = f"{r['accuracy']:.3f}" if r["accuracy"] is not None else "-"
        per_nat = f"{r['gain_per_nat']:.3f}" if r["gain_per_nat"] is not None else "-"
        lines.append(f"| {r['pairs']} | {r['seeds']} | {r['condition']} | {r['loss']} | {given} | "
                     f"{fmt(r['gain'])} | {fmt(r['kl'], 2)} | {per_nat} | "
                     f"{fmt(r['kept'], 2)} | {acc} |")
    if check is not None:
        lines += ["", verdict_line(check)]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Gain over the base against data size, one line per loss, one panel per condition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conds = list(dict.fromkeys(r["condition"] for r in rows))
    losses = list(dict.fromkeys(r["loss"] for r in rows))
    colors = {"sigmoid": "#d98c3f", "soft": "#3f7fd9", "rdpo": "#5aa55a", "rdpo_gold": "#2f8f8f",
              "rdpo_true": "#8a5ad9"}
    fig, axes = plt.subplots(1, len(conds), figsize=(3.0 * len(conds) + 1.2, 3.0),
                             sharey=True, squeeze=False)
    for ax, cond in zip(axes[0], conds, strict=True):
        for j, loss in enumerate(losses):
            rs = [r for r in rows if r["condition"] == cond and r["loss"] == loss]
            xs = [r["pairs"] * (1 + 0.03 * (j - len(losses) / 2)) for r in rs]   # dodge
            ys = [r["gain"]["value"] for r in rs]
            err = [[max(r["gain"]["value"] - r["gain"]["lo"], 0) for r in rs],
                   [max(r["gain"]["hi"] - r["gain"]["value"], 0) for r in rs]]
            ax.errorbar(xs, ys, yerr=err, marker="o", ms=3, capsize=2, label=loss,
                        color=colors.get(loss), ls="--" if loss == "rdpo_true" else "-")
        ax.axhline(0, color="0.6", lw=0.6)
        ax.set_xscale("log", base=2)
        sizes = sorted({r["pairs"] for r in rows})
        ax.set_xlim(min(sizes) / 1.3, max(sizes) * 1.3)   # also when one size is swept
        ax.minorticks_off()
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_title(cond, fontsize=9)
        ax.set_xlabel("training pairs", fontsize=8)
    axes[0][0].set_ylabel("panel-reward gain over base", fontsize=8)
    axes[0][-1].legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
