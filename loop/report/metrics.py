"""Drift statistics of a round: pure numpy functions over eval rows (no I/O, no torch).

Every estimate is a dict `{"value", "lo", "hi", "n"}`: the point estimate and a
bootstrap 95% percentile interval (Efron & Tibshirani 1993, ch. 13). Samples of
the same prompt are correlated, so the bootstrap resamples *clusters* (prompts)
when `groups` is given, and single rows otherwise. A ratio statistic
sum(num) / sum(den) is resampled as a ratio (the per-token KL, a win rate over
clusters of unequal size). NaN means undefined (no data, or fewer than two
clusters for an interval); the report writes it as null. A win rate's interval is
widened to the Wilson score interval at its effective number of comparisons where that
is wider: the percentile bootstrap undercovers a proportion at small n, and gives "1 – 1"
when every comparison went one way (Brown, Cai & DasGupta 2001, "Interval Estimation for
a Binomial Proportion", recommend Wilson's at small n).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

KL_ESTIMATOR = (
    "Monte Carlo over samples y ~ pi (temperature 1) of held-out prompts. "
    "k1 = mean of log pi(y) - log q(y) (unbiased; single samples can be negative). "
    "k3 = mean of (r - 1) - log r with r = q(y) / pi(y) per sequence (Schulman 2020, "
    "'Approximating KL Divergence'; unbiased, never negative, heavy-tailed when q >> pi). "
    "sequence: nats per response; per_token: sum over samples / sum of response tokens. "
    "k1 is the headline: its interval covers at the nominal rate; k3's undercovers when r is "
    "heavy-tailed (0.84 for a nominal 0.95 on a toy categorical policy)."
)


def _nan_estimate(n: int = 0) -> dict:
    return {"value": math.nan, "lo": math.nan, "hi": math.nan, "n": n}


def _cluster_index(n: int, groups: Sequence | None) -> np.ndarray:
    if groups is None:
        return np.arange(n)
    return np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)[1]


def estimate(num: Sequence[float], den: Sequence[float] | None = None, groups: Sequence | None = None,
             *, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
             null: float | None = None) -> dict:
    """sum(num) / sum(den) (den = ones: the mean) with a cluster-bootstrap percentile interval.

    Each replicate draws as many clusters as there are, with replacement: the cluster
    multiplicities are one multinomial draw, so the replicate is (w @ S_num) / (w @ S_den)
    over per-cluster sums S.
    With `null` (the value meaning "no change"), the estimate adds `p_not_below`: the share
    of replicates at or above `null`, the one-sided bootstrap p-value of "the value is
    below null" (it is < a exactly when the one-sided 1 - a percentile interval lies below
    null); NaN when there is no interval.
    """
    num = np.asarray(num, dtype=np.float64)
    den = np.ones_like(num) if den is None else np.asarray(den, dtype=np.float64)
    no_p = {} if null is None else {"p_not_below": math.nan}
    if num.size == 0 or den.sum() == 0:
        return {**_nan_estimate(int(num.size)), **no_p}
    value = float(num.sum() / den.sum())
    inv = _cluster_index(num.size, groups)
    n_clusters = int(inv.max()) + 1
    if n_clusters < 2 or n_boot < 1:
        return {"value": value, "lo": math.nan, "hi": math.nan, "n": int(num.size), **no_p}
    s_num = np.bincount(inv, weights=num, minlength=n_clusters)
    s_den = np.bincount(inv, weights=den, minlength=n_clusters)
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    uniform = np.full(n_clusters, 1.0 / n_clusters)
    for start in range(0, n_boot, 256):               # (b, G) multiplicities, in chunks
        w = rng.multinomial(n_clusters, uniform, size=min(256, n_boot - start)).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            reps[start:start + len(w)] = (w @ s_num) / (w @ s_den)
    tail = 100 * (1 - level) / 2
    lo, hi = np.nanpercentile(reps, [tail, 100 - tail])
    out = {"value": value, "lo": float(lo), "hi": float(hi), "n": int(num.size)}
    if null is not None:
        finite = reps[np.isfinite(reps)]
        out["p_not_below"] = float((finite >= null).mean()) if finite.size else math.nan
    return out


# --------------------------------------------------------------------------- KL


def kl_estimate(logp_p: Sequence[float], logp_q: Sequence[float], n_tokens: Sequence[float] | None = None,
                *, groups: Sequence | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """KL(p || q) from samples y ~ p with their summed log-probs under p and q.

    KL(p || q) = E_{y~p}[log p(y) - log q(y)], so with d_i = log p(y_i) - log q(y_i):
    k1 = (1/n) sum_i d_i, and k3 = (1/n) sum_i (r_i - 1) - log r_i, r_i = q(y_i)/p(y_i)
    = exp(-d_i), which is also unbiased (E_p[r] = 1) and non-negative (Schulman 2020).
    Per token: sum_i d_i / sum_i T_i, the KL per generated token. Rows with a NaN are
    dropped (`dropped` counts them). `groups` (prompt ids) clusters the bootstrap.
    """
    d = np.asarray(logp_p, dtype=np.float64) - np.asarray(logp_q, dtype=np.float64)
    tokens = (np.ones_like(d) if n_tokens is None else np.asarray(n_tokens, dtype=np.float64))
    keep = np.isfinite(d) & np.isfinite(tokens)
    d, tokens = d[keep], tokens[keep]
    g = None if groups is None else np.asarray(groups, dtype=object)[keep]
    with np.errstate(over="ignore"):
        k3 = np.expm1(-d) + d                        # (r - 1) - log r, r = exp(-d)
    kw = dict(groups=g, n_boot=n_boot, seed=seed)
    return {
        "estimator": KL_ESTIMATOR,
        "k1": {"sequence": estimate(d, **kw), "per_token": estimate(d, tokens, **kw)},
        "k3": {"sequence": estimate(k3, **kw), "per_token": estimate(k3, tokens, **kw)},
        "n_samples": int(d.size),
        "n_prompts": int(len(set(g.tolist()))) if g is not None else int(d.size),
        "dropped": int((~keep).sum()),
    }


# --------------------------------------------------------------------------- win rates


def outcomes(p_a: Sequence[float], tie: Sequence[bool] | None = None) -> np.ndarray:
    """1 when the judge prefers a (p_a > 0.5), 0 when it prefers b, 0.5 for a tie
    (flagged, or p_a exactly 0.5); NaN when p_a is NaN and the pair is not a tie."""
    p = np.asarray(p_a, dtype=np.float64)
    t = np.zeros(p.shape, bool) if tie is None else np.asarray(tie, dtype=bool)
    out = np.where(p > 0.5, 1.0, np.where(p < 0.5, 0.0, np.where(p == 0.5, 0.5, np.nan)))
    return np.where(t, 0.5, out)


def win_rate(p_a: Sequence[float], tie: Sequence[bool] | None = None, groups: Sequence | None = None,
             *, n_boot: int = 1000, seed: int = 0, null: float | None = None) -> dict:
    """Share of comparisons this side wins, ties counted as half, with a bootstrap interval
    over prompts widened to the Wilson interval at its `effective_n` where that is wider.

    Also `wins`, `ties`, `losses` and `mean_p`, the judge's mean probability (ties as 0.5):
    the soft win rate. Comparisons without a judge verdict (NaN, no tie) are left out.
    `null` adds `p_not_below` (`estimate`).
    """
    o = outcomes(p_a, tie)
    keep = np.isfinite(o)
    o = o[keep]
    p = np.where(o == 0.5, 0.5, np.asarray(p_a, dtype=np.float64)[keep])
    g = None if groups is None else np.asarray(groups, dtype=object)[keep]
    est = estimate(o, groups=g, n_boot=n_boot, seed=seed, null=null)
    if math.isfinite(est["lo"]):
        lo, hi = wilson(est["value"], effective_n(est, o.size, _cluster_index(o.size, g)))
        est.update(lo=min(est["lo"], lo), hi=max(est["hi"], hi))
    est.update(wins=int((o == 1).sum()), ties=int((o == 0.5).sum()), losses=int((o == 0).sum()),
               mean_p=float(p.mean()) if p.size else math.nan)
    return est


def effective_n(est: dict, rows: int, clusters: np.ndarray) -> float:
    """The number of independent comparisons a clustered win rate is worth (Kish's design
    effect): p(1 - p) over its bootstrap variance (read from the interval's width), between
    the number of prompts and of comparisons; the prompts when every comparison went one
    way, since the bootstrap then has no spread to read."""
    prompts = int(clusters.max()) + 1
    p = est["value"]
    var = ((est["hi"] - est["lo"]) / (2 * 1.959964)) ** 2
    if p * (1 - p) == 0 or var == 0:
        return float(prompts)
    return float(min(max(p * (1 - p) / var, prompts), rows))


def wilson(p: float, n: float, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of a proportion `p` over `n` independent
    trials (`effective_n` for a clustered win rate)."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rates_by_slice(rows: Iterable[dict], *, n_boot: int = 1000, seed: int = 0,
                       null: float | None = None) -> dict:
    """{"overall": win_rate, "by_slice": {slice: win_rate}} over comparison rows (`p_a`,
    `tie`, `slice`, and `prompt_id` to cluster the bootstrap when present); `null` adds
    each one's `p_not_below`."""
    rows = list(rows)

    def one(sub: list[dict]) -> dict:
        groups = [r["prompt_id"] for r in sub] if sub and "prompt_id" in sub[0] else None
        return win_rate([r["p_a"] for r in sub], [bool(r.get("tie")) for r in sub], groups,
                        n_boot=n_boot, seed=seed, null=null)

    by: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by[str(r.get("slice") or "")].append(r)
    return {"overall": one(rows), "by_slice": {s: one(by[s]) for s in sorted(by)}}


def paired_change(after: Iterable[dict], before: Iterable[dict], key: str, *,
                  n_boot: int = 1000, seed: int = 0) -> dict:
    """How `key` changed from the `before` rows to the `after` rows, paired by prompt:
    {"overall": est, "by_slice": {slice: est}} of the mean per-prompt change, over the
    prompts both sides have (a prompt's samples averaged first; its slice is the after
    side's), with a bootstrap interval over prompts and `p_not_below` against 0 (the
    p-value of "it fell"). Rows: `prompt_id`, `slice`, `key` (non-finite values dropped)."""
    def means(rows: Iterable[dict]) -> dict[str, tuple[float, str]]:
        acc: dict[str, list] = defaultdict(list)
        where: dict[str, str] = {}
        for r in rows:
            v = r.get(key)
            if v is not None and math.isfinite(v):
                acc[str(r["prompt_id"])].append(v)
                where[str(r["prompt_id"])] = str(r.get("slice") or "")
        return {p: (float(np.mean(v)), where[p]) for p, v in acc.items()}

    a, b = means(after), means(before)
    ids = sorted(set(a) & set(b))
    diff = {p: a[p][0] - b[p][0] for p in ids}
    by: dict[str, list[float]] = defaultdict(list)
    for p in ids:
        by[a[p][1]].append(diff[p])

    def est(x: list[float]) -> dict:
        return estimate(x, n_boot=n_boot, seed=seed, null=0.0)

    return {"overall": est([diff[p] for p in ids]), "by_slice": {s: est(by[s]) for s in sorted(by)}}


# --------------------------------------------------------------------------- length, degeneration


def histogram_edges(*lengths: Sequence[float], bins: int = 20) -> list[float]:
    """Common bin edges for several models' lengths (so their histograms overlay)."""
    values = np.concatenate([np.asarray(x, dtype=np.float64) for x in lengths] or [np.zeros(0)])
    if values.size == 0:
        return [0.0, 1.0]
    top = max(float(values.max()), 1.0)
    return np.linspace(0.0, top, bins + 1).tolist()


def length_stats(n_tokens: Sequence[float], finish_reasons: Sequence[str], *,
                 edges: Sequence[float] | None = None) -> dict:
    """Mean and median tokens, share of responses ending by EOS / stop string ("stop")
    and by the length limit ("length"), and histogram counts over `edges`."""
    t = np.asarray(n_tokens, dtype=np.float64)
    reasons = list(finish_reasons)
    edges = list(edges) if edges is not None else histogram_edges(t)
    counts = np.histogram(t, bins=edges)[0] if t.size else np.zeros(len(edges) - 1, int)
    n = int(t.size)
    return {"n": n, "mean_tokens": float(t.mean()) if n else math.nan,
            "median_tokens": float(np.median(t)) if n else math.nan,
            "share_stop": reasons.count("stop") / n if n else math.nan,
            "share_length": reasons.count("length") / n if n else math.nan,
            "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}}


def _ngrams(words: list[str], k: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + k]) for i in range(len(words) - k + 1)]


def degeneration(texts: Iterable[str]) -> dict:
    """Diversity and repetition of one model's responses, over lower-cased whitespace words.

    distinct_2 (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural
    Conversation Models"): distinct bigrams over all responses / all bigrams.
    repeated_3gram_rate: share of 3-gram occurrences that repeat an earlier 3-gram of
    the same response, sum_i (n_i - distinct_i) / sum_i n_i (loops and stutters).
    """
    bigrams: list[tuple[str, ...]] = []
    total3 = repeated3 = n = 0
    for text in texts:
        n += 1
        words = str(text).lower().split()
        bigrams += _ngrams(words, 2)
        tri = _ngrams(words, 3)
        total3 += len(tri)
        repeated3 += len(tri) - len(set(tri))
    return {"n": n, "distinct_2": len(set(bigrams)) / len(bigrams) if bigrams else math.nan,
            "repeated_3gram_rate": repeated3 / total3 if total3 else math.nan}


# --------------------------------------------------------------------------- implicit reward


def implicit_reward(rows: Sequence[dict], beta: float, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """DPO's implicit reward on held-out labeled pairs (columns of eval/heldout_pairs.parquet).

    r(y) = beta * (log pi(y) - log pi_ref(y)) (Rafailov et al. 2023). accuracy: share of
    pairs with r(chosen) > r(rejected), an exact tie counting half; margin: mean of
    r(chosen) - r(rejected). Likelihood displacement (Razin et al. 2024, "Unintentional
    Unalignment"; Pal et al. 2024, "Smaug"): DPO can widen the margin while the chosen
    response's own log-prob falls; `logp_change_vs_base` gives the mean change of
    log pi(chosen) and log pi(rejected) against the base model (and against the
    reference), and `likelihood_displacement` is true when the chosen one fell.
    """
    def col(name: str) -> np.ndarray:
        return np.asarray([r.get(name, math.nan) for r in rows], dtype=np.float64)

    pc, pr = col("logp_policy_chosen"), col("logp_policy_rejected")
    margin = beta * ((pc - col("logp_reference_chosen")) - (pr - col("logp_reference_rejected")))
    keep = np.isfinite(margin)
    slices = np.asarray([str(r.get("slice") or "") for r in rows], dtype=object)
    acc = np.where(margin > 0, 1.0, np.where(margin < 0, 0.0, 0.5))
    kw = dict(n_boot=n_boot, seed=seed)

    def change(base: np.ndarray, ours: np.ndarray) -> dict:
        d = ours - base
        return estimate(d[np.isfinite(d)], **kw)

    out = {"beta": float(beta), "n": int(keep.sum()),
           "accuracy": estimate(acc[keep], **kw), "margin": estimate(margin[keep], **kw),
           "logp_change_vs_base": {"chosen": change(col("logp_base_chosen"), pc),
                                   "rejected": change(col("logp_base_rejected"), pr)},
           "logp_change_vs_reference": {"chosen": change(col("logp_reference_chosen"), pc),
                                        "rejected": change(col("logp_reference_rejected"), pr)}}
    fell = out["logp_change_vs_base"]["chosen"]["value"]
    out["likelihood_displacement"] = None if math.isnan(fell) else bool(fell < 0)
    out["by_slice"] = {s: {"accuracy": float(acc[keep & (slices == s)].mean()),
                           "margin": float(margin[keep & (slices == s)].mean()),
                           "n": int((keep & (slices == s)).sum())}
                       for s in sorted(set(slices[keep].tolist()))}
    return out
