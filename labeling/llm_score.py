"""The `llm_score` judge: a generative model rates each response with one digit, pointwise.

The model is asked to rate a (prompt, response) with a digit from `low` to `high`
(`score_range`, 1..9 by default: one token each in common tokenizers). The
rating is read from the next-token distribution after the question, not from
sampled text, as the expected digit under the probabilities renormalised over
the digits:

    s(x) = sum_d d * P(d | question(x)) / sum_d P(d | question(x)),   d = low..high

Like a reward model, it scores each unique response once and reads every pair
off the scores under Bradley-Terry, one rating point as one unit of log-odds:

    P(a preferred) = sigmoid(s(a) - s(b))

(the ensemble's temperature, or the one calibrated on human labels, rescales
it). When the digits hold less than `min_verdict_mass` of the next-token
probability the model did not answer: the score is NaN and every pair with that
response is invalid, never a guess. `score` gives the expected ratings as a
pointwise utility (for `loop.slices.metric: judge_score`).

The model is a `VerdictModel` (llm_pairwise): here through transformers, or on an
OpenAI-compatible server with the judge's `base_url` (`served.ServedVerdictModel`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from alignloop.config.labeling import DEFAULT_SCORE_TEMPLATE
from alignloop.labeling import Comparison, Judgement, LabelingError, prompt_text, sigmoid
from alignloop.labeling.llm_pairwise import VerdictModel, VerdictModelJudge, verdict_model_for
from alignloop.records import Prompt

if TYPE_CHECKING:
    from alignloop.config.labeling import JudgeSpec

_SLOT = re.compile(r"\{(prompt|response|low|high)\}")


def fill_score_template(template: str, prompt: Prompt, response: str, low: int, high: int) -> str:
    """`template` with its slots filled in one pass (braces inside a response stay as written)."""
    values = {"prompt": prompt_text(prompt), "response": response, "low": str(low),
              "high": str(high)}
    return _SLOT.sub(lambda m: values[m.group(1)], template)


def expected_rating(probs: Sequence[float], digits: Sequence[int], min_mass: float) -> tuple[float, str]:
    """(expected digit, detail) from the raw probabilities of `digits`; NaN when their
    mass is below `min_mass` (or not a positive number)."""
    mass = float(sum(probs))
    if not mass > 0 or mass < min_mass:
        return math.nan, f"unparsable: digit mass {mass:.3g}; min_verdict_mass is {min_mass:g}"
    return float(sum(d * p for d, p in zip(digits, probs, strict=True)) / mass), f"digit mass {mass:.3g}"


class LLMScoreJudge(VerdictModelJudge):
    """A generative model's expected digit rating as a pointwise judge (one member)."""

    n_members = 1
    learns = False

    def __init__(self, model: VerdictModel, *, name: str = "llm_score",
                 template: str = DEFAULT_SCORE_TEMPLATE, score_range: Sequence[int] = (1, 9),
                 min_verdict_mass: float = 0.05):
        self.model = model
        self.name = name
        self.template = template
        self.digits = tuple(range(score_range[0], score_range[1] + 1))
        self.min_verdict_mass = min_verdict_mass
        self.token_ids = model.verdict_token_ids(tuple(str(d) for d in self.digits))
        if len(set(self.token_ids)) != len(self.token_ids):
            raise LabelingError(f"judge {name!r}: the digits {self.digits} do not start with "
                                f"distinct tokens ({self.token_ids}); the rating cannot be read")

    @classmethod
    def from_spec(cls, spec: JudgeSpec, placement=None) -> LLMScoreJudge:
        return cls(verdict_model_for(spec, placement), name=spec.label,
                   template=spec.score_template, score_range=spec.score_range,
                   min_verdict_mass=spec.min_verdict_mass)

    def ratings(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[tuple[float, str]]:
        """(expected rating, detail) of each response; each distinct one is asked once."""
        lo, hi = self.digits[0], self.digits[-1]
        questions = [fill_score_template(self.template, p, r, lo, hi)
                     for p, r in zip(prompts, responses, strict=True)]
        unique = list(dict.fromkeys(questions))
        if not unique:
            return []
        probs = np.asarray(self.model.first_token_probs(unique, self.token_ids), dtype=float)
        if probs.shape != (len(unique), len(self.digits)):
            raise LabelingError(f"judge {self.name!r}: the verdict model returned shape "
                                f"{probs.shape} for {len(unique)} questions; expected "
                                f"({len(unique)}, {len(self.digits)})")
        read = {q: expected_rating(probs[n], self.digits, self.min_verdict_mass)
                for n, q in enumerate(unique)}
        return [read[q] for q in questions]

    def score(self, prompts, responses) -> list[float]:
        """Pointwise utility of each response: its expected rating (NaN when unreadable)."""
        return [s for s, _ in self.ratings(prompts, responses)]

    def judge(self, items: Sequence[Comparison]) -> list[Judgement]:
        if not items:
            return []
        rated = self.ratings([c.prompt for c in items for _ in (0, 1)],
                             [r for c in items for r in (c.a, c.b)])
        out = []
        for n in range(len(items)):
            (sa, da), (sb, db) = rated[2 * n], rated[2 * n + 1]
            detail = f"rating a {sa:.3g} ({da}), b {sb:.3g} ({db})"
            if math.isnan(sa) or math.isnan(sb):
                out.append(Judgement.invalid(1, detail))
            else:
                out.append(Judgement.from_members([sigmoid(sa - sb)], detail=detail))
        return out
