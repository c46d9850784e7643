"""A weighted ensemble of judges, with one temperature per judge.

Every configured judge runs on the same comparisons; its member probabilities
are softened or sharpened by its temperature (log-odds / T, fitted on human
labels by `calibration`), then all members are pooled: judge j's weight is
split evenly over its members. The pooled mean is `p_a`, the pooled spread the
epistemic `uncertainty` — so disagreement *between* judges counts as
uncertainty just like disagreement between the heads of one judge. A judge
whose verdict on a comparison was unreadable is left out of that comparison
(its members stay NaN, so member m means the same model everywhere); when no
judge could answer, the comparison is invalid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from alignloop.labeling import Comparison, Judge, Judgement, make_judge, with_temperature


@dataclass(frozen=True)
class Member:
    judge: Judge
    weight: float = 1.0
    temperature: float = 1.0


class Ensemble:
    name = "ensemble"

    def __init__(self, members: Sequence[Member]):
        names = [m.judge.name for m in members]
        if len(set(names)) != len(names):
            raise ValueError(f"judge names must be unique, got {names}")
        self.members = list(members)
        self.set_aside: dict[str, str] = {}   # judge name -> why it decides nothing (`without`)

    @classmethod
    def from_specs(cls, specs, placement=None) -> Ensemble:
        """The judges of `specs`; those that run a model run it as `placement` says."""
        return cls([Member(make_judge(s, placement), s.weight, s.temperature) for s in specs])

    @property
    def names(self) -> list[str]:
        return [m.judge.name for m in self.members]

    @property
    def n_members(self) -> int:
        return sum(m.judge.n_members for m in self.members)

    @property
    def learns(self) -> bool:
        return any(getattr(m.judge, "learns", False) for m in self.members)

    def without(self, reasons: dict[str, str]) -> Ensemble:
        """The same judges, those named in `reasons` set aside: they still judge (their
        verdicts are recorded) but carry no weight, and a pair only they could decide is
        invalid with their reason, so routing sends it to people."""
        out = Ensemble(self.members)
        out.set_aside = {**self.set_aside, **reasons}
        return out

    def with_temperatures(self, temperatures: dict[str, float]) -> Ensemble:
        out = Ensemble([Member(m.judge, m.weight, temperatures.get(m.judge.name, m.temperature))
                        for m in self.members])
        out.set_aside = dict(self.set_aside)
        return out

    def fit(self, items: Sequence[Comparison], p_a: Sequence[float]) -> None:
        """Refit the judges that learn from labels (the embedding ensemble)."""
        for m in self.members:
            if getattr(m.judge, "learns", False):
                m.judge.fit(items, p_a)

    def use_cache(self, path) -> None:
        """Served judges keep their answers in `path` (JSONL, shared; keys name the judge)
        and count their usage afresh; other judges have nothing to cache."""
        for m in self.members:
            if hasattr(m.judge, "use_cache"):
                m.judge.use_cache(path)

    def usage(self) -> dict[str, dict]:
        """Request and token counts of the served judges since `use_cache`, by judge name."""
        return {m.judge.name: dict(u) for m in self.members
                if (u := getattr(m.judge, "usage", None)) is not None}

    def judge_each(self, items: Sequence[Comparison]) -> dict[str, list[Judgement]]:
        """Every judge's raw (untempered) judgements, by judge name."""
        items = list(items)
        return {m.judge.name: m.judge.judge(items) for m in self.members}

    def combine(self, by_judge: dict[str, list[Judgement]]) -> list[Judgement]:
        """Pool the judges' members with weights and temperatures (no judge is rerun)."""
        n = len(next(iter(by_judge.values()))) if by_judge else 0
        out = []
        for i in range(n):
            members: list[float] = []
            weights: list[float] = []
            consistent, problems = True, []
            for m in self.members:
                j = by_judge[m.judge.name][i]
                k = m.judge.n_members
                if m.judge.name in self.set_aside:
                    members += [math.nan] * k
                    weights += [0.0] * k
                    problems.append(f"{m.judge.name} set aside: {self.set_aside[m.judge.name]}")
                    continue
                if not j.valid:
                    members += [math.nan] * k
                    weights += [0.0] * k
                    problems.append(f"{m.judge.name}: {j.detail}")
                    continue
                members += [with_temperature(p, m.temperature) for p in j.members]
                weights += [m.weight / k] * k
                consistent = consistent and j.order_consistent
            if sum(weights) == 0:
                out.append(Judgement.invalid(len(members), "; ".join(problems)))
                continue
            valid = [(p, w) for p, w in zip(members, weights, strict=True) if w > 0]
            pooled = Judgement.from_members([p for p, _ in valid], [w for _, w in valid],
                                            order_consistent=consistent, detail="; ".join(problems))
            out.append(Judgement(pooled.p_a, tuple(members), pooled.uncertainty,
                                 consistent, True, pooled.detail, tuple(weights)))
        return out

    def judge(self, items: Sequence[Comparison]) -> list[Judgement]:
        return self.combine(self.judge_each(items))

    def score(self, prompts, responses) -> list[float] | None:
        """Weighted mean pointwise utility over the judges that have one (python `score`
        functions, reward models); None when none does. Used to rank failure slices."""
        total, weight = None, 0.0
        for m in self.members:
            fn = getattr(m.judge, "score", None)
            s = fn(prompts, responses) if fn else None
            if s is None:
                continue
            total = [m.weight * x for x in s] if total is None else [
                t + m.weight * x for t, x in zip(total, s, strict=True)]
            weight += m.weight
        return None if total is None else [t / weight for t in total]
