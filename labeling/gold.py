"""Gold items: pairs whose answer is known, voted on like any other pair.

The votes' agreement with each other says how consistent the annotators are, not how
often the aggregated label is wrong: annotators who share a mistake agree on it, and the
Dawid-Skene posteriors (`alignloop.labeling.aggregate`) cannot see it. Gold items can.
Fitting a temperature to the posteriors of the gold items against their answers
(`alignloop.labeling.calibration`, Guo et al. 2017) rescales every posterior to how
often labels like it turn out right, and the mean calibrated probability that a label is
wrong is the flip rate robust DPO needs (Chowdhury et al. 2024, "Provably Robust DPO",
where epsilon is assumed known).

    gold_targets(answers)                  "a"/"b"/"tie" -> 1 / 0 / 0.5 (both_bad left out)
    calibrate_to_gold(posteriors, answers) the temperature (>= 1), with ECE and NLL before/after
    calibrated(p, temperature)             sigmoid(logit(p) / T)
    flip_rate(p_a, a_chosen, temperature)  mean calibrated P(the chosen side is wrong)

The gold items must be drawn like the pairs they calibrate (same kind of pairs, same
number of votes each): a temperature fitted on items with more votes, or easier ones,
says little about the others.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
from alignloop.labeling import LabelingError
from alignloop.labeling.calibration import CalibrationResult, calibrate

TARGET = {"a": 1.0, "b": 0.0, "tie": 0.5}


def gold_targets(answers: Mapping[str, str]) -> dict[str, float]:
    """P(a better) of each gold item from its answer; "both_bad" says nothing about a vs b
    and is left out. Any other answer is an error naming the item."""
    out = {}
    for item, answer in answers.items():
        if answer == "both_bad":
            continue
        if answer not in TARGET:
            raise LabelingError(f"gold item {item!r}: answer {answer!r} is not one of a, b, tie, "
                                "both_bad")
        out[item] = TARGET[answer]
    return out


def calibrate_to_gold(posteriors: Mapping[str, float], answers: Mapping[str, str]) -> CalibrationResult:
    """The temperature T >= 1 that makes sigmoid(logit(p_a) / T) of the gold items'
    posteriors best match their answers (binary NLL), with ECE and NLL before and after.
    Gold items without a posterior (no vote yet) are left out; with fewer than
    `calibration.MIN_ITEMS` left, T stays 1.0 and the result's note says why.

    Gold items only soften: they show labels wrong more often than the votes say, never
    surer. A fit below 1 is left at 1, since a small gold set the panel gets all right
    would otherwise drive T to its lower bound and every human label to certainty."""
    targets = gold_targets(answers)
    items = sorted(i for i in targets if i in posteriors)
    fit = calibrate([posteriors[i] for i in items], [targets[i] for i in items])
    if fit.temperature >= 1.0:
        return fit
    return replace(fit, temperature=1.0, ece_after=fit.ece_before, nll_after=fit.nll_before,
                   note=f"the gold items would sharpen the posteriors (fitted T = "
                        f"{fit.temperature:.3g} < 1): left at 1, gold calibration only softens")


def calibrated(p: Sequence[float] | np.ndarray, temperature: float) -> np.ndarray:
    """sigmoid(logit(p) / temperature), elementwise (p = 0 or 1 stays where it is)."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise LabelingError(f"temperature must be finite and > 0, got {temperature}")
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore"):
        z = np.log(p) - np.log1p(-p)
    return 0.5 * (1.0 + np.tanh(0.5 * z / temperature))


def flip_rate(p_a: Sequence[float], a_chosen: Sequence[bool], temperature: float = 1.0) -> float:
    """Mean over pairs of the calibrated probability that the side trained on as chosen is
    the worse one: 1 - q where a was chosen, q where b was (q = `calibrated(p_a, T)`).
    With T = 1 this is the posteriors' own estimate; with the gold temperature it is the
    gold items' measure of it."""
    p = np.asarray(p_a, dtype=np.float64)
    chosen = np.asarray(a_chosen, dtype=bool)
    if p.shape != chosen.shape:
        raise LabelingError(f"flip_rate: {p.size} posteriors but {chosen.size} chosen sides")
    if p.size == 0:
        raise LabelingError("flip_rate: no pairs")
    if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise LabelingError("flip_rate: posteriors must lie in [0, 1]")
    q = calibrated(p, temperature)
    return float(np.mean(np.where(chosen, 1.0 - q, q)))
