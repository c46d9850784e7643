"""Inter-annotator agreement: Krippendorff's alpha, Cohen's kappa, percent agreement.

Values are any hashable labels (here the choices "a", "b", "tie", "both_bad");
a value of None or NaN, or a coder absent from a unit, is missing.

Krippendorff's alpha (Krippendorff 2011, "Computing Krippendorff's
Alpha-Reliability", coincidence-matrix form) works with any number of coders
and missing data. A unit u with m_u >= 2 values adds, for every ordered pair of
values (c, k) from two different coders, 1 / (m_u - 1) to the coincidence o_ck;
units with fewer than two values are not pairable and are ignored. With
n_c = sum_k o_ck and n = sum_c n_c (the pairable values),

    alpha = 1 - D_o / D_e,   D_o = (1/n) sum_{c,k} o_ck delta2_ck,
                             D_e = 1/(n (n-1)) sum_{c,k} n_c n_k delta2_ck,

with the metric delta2 of the level of measurement: nominal 1[c != k];
ordinal (sum_{g=c..k} n_g - (n_c + n_k)/2)^2 over the sorted values; interval
(c - k)^2; ratio ((c - k)/(c + k))^2. alpha is NaN when undefined: no pairable
values, or no expected disagreement (every pairable value the same).

Cohen's kappa (Cohen 1960) compares two coders on the items both labeled:
kappa = (p_o - p_e) / (1 - p_e), with p_o the share of items they agree on and
p_e = sum_c P_A(c) P_B(c) the agreement expected from their label frequencies;
NaN when no item is shared or p_e = 1. Its interval (`cohen_kappa_interval`) is a
percentile bootstrap over the shared items (Efron & Tibshirani 1993, ch. 13), seeded,
so the same codings give the same interval; resamples where kappa is undefined (every
drawn item coded alike by both) are left out.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping

import numpy as np
from alignloop.labeling import LabelingError

LEVELS = ("nominal", "ordinal", "interval", "ratio")


def _missing(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _pairable(units: Mapping[Hashable, Mapping[Hashable, Hashable]]) -> list[list[Hashable]]:
    """The values of every unit that has at least two of them (missing ones dropped)."""
    out = []
    for coders in units.values():
        vals = [v for v in coders.values() if not _missing(v)]
        if len(vals) >= 2:
            out.append(vals)
    return out


def _coincidences(pairable: list[list[Hashable]], values: list[Hashable]) -> np.ndarray:
    """o (V, V): o_ck = sum_u (ordered pairs (c, k) from two coders of u) / (m_u - 1)."""
    index = {v: i for i, v in enumerate(values)}
    o = np.zeros((len(values), len(values)))
    for vals in pairable:
        c = np.bincount([index[v] for v in vals], minlength=len(values)).astype(np.float64)
        o += (np.outer(c, c) - np.diag(c)) / (len(vals) - 1)   # c_c c_k pairs, c_c(c_c-1) if c=k
    return o


def _delta2(level: str, values: list, n_c: np.ndarray) -> np.ndarray:
    """delta2 (V, V), the squared distance between values under `level`."""
    if level == "nominal":
        return 1.0 - np.eye(len(values))
    if level == "ordinal":
        cum = np.cumsum(n_c)                                # values are sorted
        ix = np.arange(len(values))
        lo, hi = np.minimum.outer(ix, ix), np.maximum.outer(ix, ix)
        between = cum[hi] - cum[lo] + n_c[lo]               # sum_{g=c..k} n_g
        return (between - (n_c[:, None] + n_c[None, :]) / 2) ** 2
    x = np.asarray(values, dtype=np.float64)
    diff = np.subtract.outer(x, x)
    if level == "interval":
        return diff**2
    total = np.add.outer(x, x)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total == 0, 0.0, (diff / total) ** 2)


def krippendorff_alpha(units: Mapping[Hashable, Mapping[Hashable, Hashable]],
                       level: str = "nominal") -> float:
    """Krippendorff's alpha of `units` ({unit: {coder: value}}) at `level` (see module)."""
    if level not in LEVELS:
        raise LabelingError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    pairable = _pairable(units)
    seen = dict.fromkeys(v for vals in pairable for v in vals)
    values = list(seen) if level == "nominal" else sorted(seen)
    if not values:
        return math.nan
    o = _coincidences(pairable, values)
    n_c = o.sum(axis=1)
    n = n_c.sum()
    d2 = _delta2(level, values, n_c)
    expected = float(np.sum(np.outer(n_c, n_c) * d2)) / (n * (n - 1))
    if expected <= 0:
        return math.nan
    observed = float(np.sum(o * d2)) / n
    return 1.0 - observed / expected


def percent_agreement(units: Mapping[Hashable, Mapping[Hashable, Hashable]]) -> float:
    """Share of agreeing pairs among the pairable values, sum_c o_cc / n (NaN when none).

    Each unit with m values weighs m; with two coders this is the share of
    shared units on which they agree.
    """
    pairable = _pairable(units)
    values = list(dict.fromkeys(v for vals in pairable for v in vals))
    if not values:
        return math.nan
    o = _coincidences(pairable, values)
    return float(np.trace(o) / o.sum())


def _shared(a: Mapping[Hashable, Hashable], b: Mapping[Hashable, Hashable]
            ) -> tuple[list[Hashable], list[Hashable]]:
    keys = [k for k in a if k in b and not _missing(a[k]) and not _missing(b[k])]
    return [a[k] for k in keys], [b[k] for k in keys]


def _freq(labels: Iterable[Hashable], n: int) -> dict[Hashable, float]:
    out: dict[Hashable, float] = {}
    for x in labels:
        out[x] = out.get(x, 0.0) + 1.0 / n
    return out


def cohen_kappa(a: Mapping[Hashable, Hashable], b: Mapping[Hashable, Hashable]) -> float:
    """Cohen's kappa of two coders ({item: value} each) over the items both labeled."""
    va, vb = _shared(a, b)
    n = len(va)
    if n == 0:
        return math.nan
    p_o = sum(x == y for x, y in zip(va, vb, strict=True)) / n
    fa, fb = _freq(va, n), _freq(vb, n)
    p_e = sum(f * fb.get(c, 0.0) for c, f in fa.items())
    if 1.0 - p_e < 1e-12:
        return math.nan
    return (p_o - p_e) / (1.0 - p_e)


def cohen_kappa_interval(a: Mapping[Hashable, Hashable], b: Mapping[Hashable, Hashable],
                         level: float = 0.95, draws: int = 2000, seed: int = 0
                         ) -> tuple[float, float]:
    """(lo, hi): the `level` percentile bootstrap interval of `cohen_kappa(a, b)` over the
    items both coded (see module); (NaN, NaN) with fewer than 2 shared items, or when
    kappa is undefined in most resamples."""
    va, vb = _shared(a, b)
    n = len(va)
    if n < 2:
        return math.nan, math.nan
    codes = {v: i for i, v in enumerate(dict.fromkeys(va + vb))}
    xa = np.array([codes[v] for v in va])
    xb = np.array([codes[v] for v in vb])
    rng = np.random.default_rng(seed)
    p_o, p_e = np.empty(draws), np.empty(draws)
    chunk = max(1, 2_000_000 // n)                  # resamples at a time: bounded memory
    for start in range(0, draws, chunk):
        idx = rng.integers(n, size=(min(chunk, draws - start), n))
        ra, rb = xa[idx], xb[idx]
        rows = slice(start, start + len(idx))
        p_o[rows] = (ra == rb).mean(axis=1)
        p_e[rows] = sum((ra == c).mean(axis=1) * (rb == c).mean(axis=1)
                        for c in range(len(codes)))
    ok = 1.0 - p_e >= 1e-12
    if ok.sum() < draws / 2:
        return math.nan, math.nan
    kappa = (p_o[ok] - p_e[ok]) / (1.0 - p_e[ok])
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(kappa, [tail, 100 - tail])
    return float(lo), float(hi)
