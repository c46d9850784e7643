"""Temperature scaling of judge probabilities against human labels.

Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural
Networks", sec. 4.2) keeps the judge's ranking and rescales its confidence: the
calibrated probability is sigmoid(z / T) with z = logit(p). T > 1 softens an
overconfident judge, T < 1 sharpens a timid one. T minimises the binary
negative log-likelihood against the (possibly soft) human targets t in [0, 1],

    NLL(T) = -(1/n) sum_i [ t_i log sigmoid(z_i/T) + (1 - t_i) log(1 - sigmoid(z_i/T)) ],

a one-dimensional problem solved by bounded scalar minimisation over log T in
[log 0.05, log 20]. With soft targets equal to the true probabilities, NLL is
minimised where sigmoid(z_i/T) = t_i, so p = sigmoid(3 x) with t = sigmoid(x)
gives T = 3 exactly.

Calibration is measured by the expected calibration error (Naeini et al. 2015;
Guo et al. 2017 eq. 3) over equal-width bins B_m of p,

    ECE = sum_m (|B_m| / n) * | mean_{B_m}(p) - mean_{B_m}(t) |,

and the Brier score mean((p - t)^2) (Brier 1950). Pairs whose judge verdict was
unreadable (p = NaN) or that have no target are left out and counted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from alignloop.labeling import LabelingError
from scipy.optimize import minimize_scalar

T_BOUNDS = (0.05, 20.0)
MIN_ITEMS = 5
EPS = 1e-6


@dataclass(frozen=True)
class CalibrationResult:
    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    n: int
    """Pairs used (both p and target known)."""
    n_excluded: int = 0
    """Pairs left out because p or the target was NaN."""
    note: str = ""
    """Why the temperature was left at 1.0, or that the fit reached a bound."""


def _clean(p: Sequence[float], target: Sequence[float]) -> tuple[np.ndarray, np.ndarray, int]:
    """(p, t) without NaN pairs, and how many were dropped; checks ranges and lengths."""
    p = np.asarray(p, dtype=np.float64).ravel()
    t = np.asarray(target, dtype=np.float64).ravel()
    if p.shape != t.shape:
        raise LabelingError(f"calibration: {p.size} probabilities but {t.size} targets")
    keep = ~(np.isnan(p) | np.isnan(t))
    p, t = p[keep], t[keep]
    if np.any((p < 0) | (p > 1)) or np.any((t < 0) | (t > 1)):
        raise LabelingError("calibration: probabilities and targets must lie in [0, 1]")
    return p, t, int((~keep).sum())


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def _nll(z: np.ndarray, t: np.ndarray) -> float:
    """Soft-target binary NLL of sigmoid(z): log(1 + e^z) - t z, computed stably."""
    return float(np.mean(np.logaddexp(0.0, z) - t * z))


def _fit(z: np.ndarray, t: np.ndarray) -> tuple[float, str]:
    if z.size < MIN_ITEMS:
        return 1.0, f"only {z.size} labeled pairs (< {MIN_ITEMS}): temperature left at 1.0"
    if not np.any(np.abs(z) > EPS):
        return 1.0, "every probability is 0.5, so the temperature has no effect: left at 1.0"
    if np.all(t == t[0]) and t[0] in (0.0, 1.0):
        return 1.0, "every target is the same hard label: temperature left at 1.0"
    lo, hi = math.log(T_BOUNDS[0]), math.log(T_BOUNDS[1])
    res = minimize_scalar(lambda u: _nll(z / math.exp(u), t), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-6})
    temperature = math.exp(float(res.x))
    note = ""
    if min(abs(res.x - lo), abs(res.x - hi)) < 1e-3:
        note = f"the fit reached the bound T = {temperature:.3g}"
    return temperature, note


SLOPE_BOUND = 20.0


def agreement_slope(p: Sequence[float], target: Sequence[float]) -> tuple[float, int]:
    """(a, n): the slope a minimising the NLL of sigmoid(a * logit(p)) against `target`,
    over a in [-20, 20], and the pairs used. A temperature is 1 / a for a > 0 and cannot
    say what a <= 0 says: the judge knows nothing (a near 0) or prefers what people do not
    (a < 0). NaN with fewer than `MIN_ITEMS` pairs, or when every p is 0.5."""
    p_, t, _ = _clean(p, target)
    z = _logit(p_)
    if z.size < MIN_ITEMS or not np.any(np.abs(z) > EPS):
        return math.nan, int(z.size)
    res = minimize_scalar(lambda a: _nll(a * z, t), bounds=(-SLOPE_BOUND, SLOPE_BOUND),
                          method="bounded", options={"xatol": 1e-6})
    return float(res.x), int(z.size)


def fit_temperature(p: Sequence[float], target: Sequence[float]) -> float:
    """The T minimising the NLL of sigmoid(logit(p) / T) against `target` (see module)."""
    p_, t, _ = _clean(p, target)
    return _fit(_logit(p_), t)[0]


def expected_calibration_error(p: Sequence[float], target: Sequence[float],
                               bins: int = 10) -> float:
    """ECE over `bins` equal-width bins of p, weighted by bin count; NaN when nothing is left."""
    if bins < 1:
        raise LabelingError(f"bins must be >= 1, got {bins}")
    p_, t, _ = _clean(p, target)
    if p_.size == 0:
        return math.nan
    b = np.minimum((p_ * bins).astype(np.int64), bins - 1)              # (n,) bin of each p
    gap = np.abs(np.bincount(b, p_, minlength=bins) - np.bincount(b, t, minlength=bins))
    return float(gap.sum() / p_.size)       # sum_m |B_m|/n * |sum p - sum t| / |B_m|, count > 0


def brier(p: Sequence[float], target: Sequence[float]) -> float:
    """Mean squared difference between p and the target; NaN when nothing is left."""
    p_, t, _ = _clean(p, target)
    return float(np.mean((p_ - t) ** 2)) if p_.size else math.nan


def calibrate(p: Sequence[float], target: Sequence[float], bins: int = 10) -> CalibrationResult:
    """Fit the temperature and report ECE and NLL before and after it."""
    p_, t, dropped = _clean(p, target)
    z = _logit(p_)
    temperature, note = _fit(z, t)
    if p_.size == 0:
        nan = math.nan
        return CalibrationResult(1.0, nan, nan, nan, nan, 0, dropped, note)
    q = 1.0 / (1.0 + np.exp(-z / temperature))
    return CalibrationResult(
        temperature=temperature,
        ece_before=expected_calibration_error(p_, t, bins),
        ece_after=expected_calibration_error(q, t, bins),
        nll_before=_nll(z, t),
        nll_after=_nll(z / temperature, t),
        n=int(p_.size), n_excluded=dropped, note=note)
