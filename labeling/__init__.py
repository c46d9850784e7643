"""Judges, pair selection, routing, vote aggregation and the human queue.

The records every labeling stage passes around:

- `Comparison`: one question to a judge — a prompt and two responses `a`, `b`.
- `Judgement`: a judge's answer — `p_a` = P(a preferred), the member
  probabilities behind it (ensemble members, reward models, or the two
  presentation orders of a generative judge), their spread as the epistemic
  `uncertainty`, whether the judge was order-consistent, and whether its
  verdict could be read at all.
- `Judge`: the protocol every judge implements (`judge(comparisons)`).

Judges live one per module (`reward_model`, `llm_pairwise`, `llm_score`,
`embedding`, `python_judge`) and are combined by `ensemble.Ensemble`;
`make_judge(spec)` picks one by the config's `kind` through a plain dict,
importing only the backend it needs. The generative judges (`llm_pairwise`,
`llm_score`) run their model here or ask an OpenAI-compatible server
(`served`, the judge's `base_url`).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from alignloop.errors import AlignloopError
from alignloop.records import Prompt

if TYPE_CHECKING:
    from alignloop.config.labeling import JudgeSpec


class LabelingError(AlignloopError, ValueError):
    """A labeling problem: a judge that cannot run, a candidates file that cannot be read."""


@dataclass(frozen=True)
class Comparison:
    """Is `a` or `b` the better response to `prompt`? `key` is the caller's id for the pair."""

    prompt: Prompt
    a: str
    b: str
    key: str = ""


@dataclass(frozen=True)
class Judgement:
    """A judge's answer about one `Comparison`.

    `members` are the member probabilities P(a preferred), aligned across every
    judgement of the same judge (member m is the same model everywhere), so a
    Thompson draw can pick one member for a whole prompt. `p_a` is their
    weighted mean; `uncertainty` their weighted standard deviation. An invalid
    judgement (unreadable verdict) has `p_a` = NaN and says why in `detail`.
    """

    p_a: float
    members: tuple[float, ...]
    uncertainty: float
    order_consistent: bool = True
    valid: bool = True
    detail: str = ""
    weights: tuple[float, ...] = field(default=(), compare=False)

    @classmethod
    def from_members(cls, members: Sequence[float], weights: Sequence[float] = (), *,
                     order_consistent: bool = True, detail: str = "") -> Judgement:
        ms = tuple(float(m) for m in members)
        ws = tuple(float(w) for w in weights) or (1.0,) * len(ms)
        total = sum(ws)
        mean = sum(w * m for w, m in zip(ws, ms, strict=True)) / total
        var = sum(w * (m - mean) ** 2 for w, m in zip(ws, ms, strict=True)) / total
        return cls(mean, ms, math.sqrt(max(var, 0.0)), order_consistent, True, detail, ws)

    @classmethod
    def invalid(cls, n_members: int, detail: str) -> Judgement:
        nan = float("nan")
        return cls(nan, (nan,) * n_members, nan, False, False, detail)


@runtime_checkable
class Judge(Protocol):
    """Anything that answers comparisons.

    `n_members` is the length of every `Judgement.members` it returns.
    Capabilities, as class attributes: `learns` (has `fit(comparisons, p_a)`, refit
    on the labels collected so far). Optional methods: `score(prompts, responses)`
    (a pointwise utility), `use_cache(path)` and `usage` (a served judge keeps its
    answers in `path` and counts its requests and tokens).
    """

    name: str
    n_members: int
    learns: bool

    def judge(self, items: Sequence[Comparison]) -> list[Judgement]: ...


def prompt_text(prompt: Prompt) -> str:
    """A prompt as plain text: unchanged, or chat messages as `role: content` lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in prompt)


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def logit(p: float, eps: float = 1e-6) -> float:
    p = min(max(p, eps), 1 - eps)
    return math.log(p / (1 - p))


def with_temperature(p: float, temperature: float) -> float:
    """Divide the log-odds by `temperature` (> 1 softens, < 1 sharpens)."""
    if temperature == 1.0 or math.isnan(p):
        return p
    return sigmoid(logit(p) / temperature)


def load_function(spec: str, what: str = "function"):
    """`module:attr` -> the object, with an error that says which part is missing."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise LabelingError(f"{what} '{spec}': cannot import module '{module_name}' ({e})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise LabelingError(f"{what} '{spec}': module '{module_name}' has no '{attr}'") from None


# kind -> "module:factory"; a factory takes the JudgeSpec and the placement (where a judge
# that runs a model runs it: `alignloop.placement`; None: CPU, fp32) and returns a Judge.
JUDGES = {
    "reward_model": "alignloop.labeling.reward_model:RewardModelJudge.from_spec",
    "llm_pairwise": "alignloop.labeling.llm_pairwise:LLMPairwiseJudge.from_spec",
    "llm_score": "alignloop.labeling.llm_score:LLMScoreJudge.from_spec",
    "embedding_ensemble": "alignloop.labeling.embedding:EmbeddingEnsembleJudge.from_spec",
    "python": "alignloop.labeling.python_judge:PythonJudge.from_spec",
}


def make_judge(spec: JudgeSpec, placement=None) -> Judge:
    """The judge a config entry describes; heavy imports happen only for that kind."""
    target = JUDGES[spec.kind]
    module_name, _, path = target.partition(":")
    obj = importlib.import_module(module_name)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj(spec, placement)
