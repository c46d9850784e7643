"""A judge written as a plain Python function, named `module:function` in the config.

- `returns: score`: f(prompt, response) -> float utility; scored once per unique
  response, P(a > b) = sigmoid(f(a) - f(b)) (Bradley-Terry).
- `returns: preference`: f(prompt, a, b) -> P(a preferred) in [0, 1].

A function that returns something else (a string, NaN, a probability outside
[0, 1]) is an error naming the function and the input, not a silent default.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence

from alignloop.labeling import Comparison, Judgement, LabelingError, load_function, sigmoid


class PythonJudge:
    n_members = 1
    learns = False

    def __init__(self, fn: Callable, *, returns: str = "score", name: str = "python"):
        if returns not in ("score", "preference"):
            raise LabelingError(f"python judge '{name}': returns must be score or preference")
        self.fn = fn
        self.returns = returns
        self.name = name
        self._what = getattr(fn, "__qualname__", repr(fn))

    @classmethod
    def from_spec(cls, spec, placement=None) -> PythonJudge:
        fn = load_function(spec.function, what=f"judge '{spec.label}' function")
        if not callable(fn):
            raise LabelingError(f"judge '{spec.label}': {spec.function} is not callable")
        return cls(fn, returns=spec.returns, name=spec.label)

    def _number(self, value, args: str) -> float:
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise LabelingError(f"judge '{self.name}': {self._what}({args}) returned "
                                f"{value!r}, not a number") from None
        if math.isnan(x) or math.isinf(x):
            raise LabelingError(f"judge '{self.name}': {self._what}({args}) returned {x}")
        return x

    def score(self, prompts, responses) -> list[float] | None:
        """Pointwise utility of each response (`returns: score` only; None otherwise)."""
        if self.returns != "score":
            return None
        return [self._number(self.fn(p, r), f"prompt, {r[:40]!r}")
                for p, r in zip(prompts, responses, strict=True)]

    def judge(self, items: Sequence[Comparison]) -> list[Judgement]:
        if self.returns == "preference":
            out = []
            for c in items:
                p = self._number(self.fn(c.prompt, c.a, c.b), _short(c))
                if not 0.0 <= p <= 1.0:
                    raise LabelingError(f"judge '{self.name}': {self._what}({_short(c)}) returned "
                                        f"{p}, not a probability in [0, 1]")
                out.append(Judgement.from_members([p]))
            return out
        scores: dict[tuple[str, str], float] = {}
        for c in items:
            key = json.dumps(c.prompt, sort_keys=True)
            for response in (c.a, c.b):
                if (key, response) not in scores:
                    args = f"prompt, {response[:40]!r}"
                    scores[(key, response)] = self._number(self.fn(c.prompt, response), args)
        out = []
        for c in items:
            key = json.dumps(c.prompt, sort_keys=True)
            out.append(Judgement.from_members([sigmoid(scores[(key, c.a)] - scores[(key, c.b)])]))
        return out


def _short(c: Comparison) -> str:
    return f"prompt, {c.a[:30]!r}, {c.b[:30]!r}"
