"""The `labeling:` section of the config schema: judges, pair selection, routing,
people and vote aggregation. Kept beside config.py so each file stays readable;
`Config.labeling` is a `LabelingConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args, get_type_hints

from alignloop.config.base import require

DEFAULT_PAIRWISE_TEMPLATE = (
    "You are comparing two assistant replies to the same user message.\n\n"
    "User message:\n{prompt}\n\n"
    "Reply A:\n{a}\n\n"
    "Reply B:\n{b}\n\n"
    "Which reply is better: kinder, more helpful and to the point? "
    "Answer with a single letter, A or B."
)
"""The generative judge's question. `{prompt}`, `{a}` and `{b}` are filled in; the
verdict is read from the log-probs of the next token after the chat turn."""

DEFAULT_SCORE_TEMPLATE = (
    "Rate the assistant reply to the user message below.\n\n"
    "User message:\n{prompt}\n\n"
    "Reply:\n{response}\n\n"
    "How good is the reply: kind, helpful and to the point? "
    "Answer with a single digit from {low} (bad) to {high} (excellent)."
)
"""The pointwise judge's question (`llm_score`). `{prompt}` and `{response}` are filled in,
`{low}` and `{high}` with `score_range`; the score is the expected digit under the
next-token probabilities of the digits."""

LLM_KINDS = ("llm_pairwise", "llm_score")
"""Judge kinds that ask a generative model, here (transformers) or on a server (`base_url`)."""


@dataclass(frozen=True)
class JudgeSpec:
    kind: Literal["reward_model", "llm_pairwise", "llm_score", "embedding_ensemble", "python"]
    """`reward_model` (HF sequence-classification models, pointwise), `llm_pairwise`
    (a generative model asked in both orders), `llm_score` (a generative model rating each
    response with a digit, pointwise), `embedding_ensemble` (sentence embeddings +
    bootstrap Bradley-Terry heads learned from the labels so far), `python` (a function)."""
    name: str = ""
    """Label in tables and reports (empty: the kind; must be unique among judges)."""
    weight: float = 1.0
    """Weight of this judge in the ensemble of all configured judges."""
    models: tuple[str, ...] = ()
    """`reward_model`: one or more reward models (several form an ensemble whose spread is
    the uncertainty). `llm_pairwise`, `llm_score`: exactly one generative model (with
    `base_url`: its name on the server)."""
    template: str = DEFAULT_PAIRWISE_TEMPLATE
    """`llm_pairwise`: the question, with `{prompt}`, `{a}` and `{b}` placeholders."""
    verdicts: tuple[str, ...] = ("A", "B")
    """`llm_pairwise`: the answers meaning "first reply" and "second reply"."""
    min_verdict_mass: float = 0.05
    """`llm_pairwise`, `llm_score`: least next-token probability on the verdicts (the
    digits) for the answer to count as parsed; below it the verdict is recorded as
    unparsable."""
    score_template: str = DEFAULT_SCORE_TEMPLATE
    """`llm_score`: the question, with `{prompt}` and `{response}` placeholders (and
    optionally `{low}`, `{high}`)."""
    score_range: tuple[int, int] = (1, 9)
    """`llm_score`: the lowest and highest digit of the rating (single digits, 0..9)."""
    base_url: str = ""
    """`llm_pairwise`, `llm_score`: an OpenAI-compatible server (`http://HOST:PORT/v1`,
    e.g. vLLM's) that serves the judge model; the verdict is read from the `top_logprobs`
    of its one-token chat completion. Empty: the model runs here through transformers."""
    api_key_env: str = ""
    """With `base_url`: the environment variable holding the server's API key (empty: no
    key is sent). The key itself never goes into the config."""
    concurrency: int = 8
    """With `base_url`: requests in flight at once."""
    timeout_s: float = 60.0
    """With `base_url`: seconds one request may take before it is retried."""
    retries: int = 4
    """With `base_url`: retries of a request after a connection error, a timeout, a 429 or
    a 5xx answer (exponential backoff from 0.5 s); other answers fail at once."""
    top_logprobs: int = 20
    """With `base_url`: alternatives asked for per answer token (vLLM and OpenAI allow up
    to 20 unless the server raises `--max-logprobs`); a verdict outside them counts as
    probability 0."""
    function: str = ""
    """`python`: `module:function`, called as f(prompt, response) -> score, or
    f(prompt, a, b) -> P(a preferred) with `returns: preference`."""
    returns: Literal["score", "preference"] = "score"
    """`python`: what the function returns."""
    embedding_model: str = "builtin:all-minilm-l6-v2"
    """`embedding_ensemble`: the sentence encoder (frozen)."""
    members: int = 8
    """`embedding_ensemble`: bootstrap heads in the ensemble."""
    l2: float = 1.0
    """`embedding_ensemble`: L2 penalty of each logistic head (sklearn C = 1 / l2)."""
    temperature: float = 1.0
    """Divides the judge's log-odds; calibration replaces it when human labels exist."""
    batch_size: int = 8
    """Sequences per forward pass (model judges)."""
    max_length: int = 1024
    """Longest judge input in tokens; longer inputs keep their end."""

    def __post_init__(self) -> None:
        require(self.weight > 0, "weight", "must be > 0")
        require(self.temperature > 0, "temperature", "must be > 0")
        require(self.members >= 2, "members", "must be >= 2 (the spread needs two heads)")
        require(self.l2 > 0, "l2", "must be > 0")
        require(0 <= self.min_verdict_mass < 1, "min_verdict_mass", "must be in [0, 1)")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.max_length >= 16, "max_length", "must be >= 16")
        if self.kind == "reward_model":
            require(len(self.models) >= 1, "models", "a reward_model judge needs at least one model")
        if self.kind == "llm_pairwise":
            require(len(self.models) == 1, "models", "an llm_pairwise judge needs exactly one model")
            require(len(self.verdicts) == 2 and all(self.verdicts), "verdicts",
                     "must be two non-empty answers")
            for slot in ("{prompt}", "{a}", "{b}"):
                require(slot in self.template, "template", f"must contain {slot}")
        if self.kind == "llm_score":
            require(len(self.models) == 1, "models", "an llm_score judge needs exactly one model")
            rng = self.score_range
            require(len(rng) == 2 and 0 <= rng[0] < rng[1] <= 9, "score_range",
                    "must be two digits [low, high], low < high, in 0..9")
            for slot in ("{prompt}", "{response}"):
                require(slot in self.score_template, "score_template", f"must contain {slot}")
        if self.base_url:
            require(self.kind in LLM_KINDS, "base_url",
                    f"only judges of kind {' or '.join(LLM_KINDS)} are served; got {self.kind}")
            require(self.base_url.startswith(("http://", "https://")), "base_url",
                    "must be an http:// or https:// URL (e.g. http://127.0.0.1:8001/v1)")
        require(self.concurrency >= 1, "concurrency", "must be >= 1")
        require(self.timeout_s > 0, "timeout_s", "must be > 0")
        require(self.retries >= 0, "retries", "must be >= 0")
        require(self.top_logprobs >= 1, "top_logprobs", "must be >= 1")
        if self.kind == "python":
            require(":" in self.function, "function", "must be `module:function`")

    @property
    def label(self) -> str:
        return self.name or self.kind


@dataclass(frozen=True)
class SelectionConfig:
    strategy: Literal["max_min", "random", "uncertainty", "double_thompson", "apl", "bald",
                      "bald_diverse"] = "uncertainty"
    """How a pair is chosen among a prompt's k samples: `max_min` (best vs worst by the judge
    mean), `random`, `uncertainty` (the pair the judges are least sure about),
    `double_thompson` (two ensemble draws each pick their best), `apl` (high-entropy prompts,
    then the largest implicit-reward gap), `bald` (most information about the judge ensemble:
    the mutual information between the label and the member), `bald_diverse` (`bald`, the
    batch built greedily away from pairs the members already disagree on alike). The
    uncertainty-seeking ones (`uncertainty`, `bald`, `bald_diverse`) pick pairs for people:
    with `labeling.human.budget: 0` the judges alone label, and `max_min` suits them."""
    budget: int = 0
    """Most pairs selected per round (0: `pairs_per_prompt` for every prompt)."""
    pairs_per_prompt: int = 1
    """Most pairs taken from one prompt's samples."""
    random_share: float = 0.1
    """Share of the budget always filled with uniformly random pairs (unbiased estimates)."""
    near_duplicate: float = 0.9
    """Word-level similarity (0..1) at or above which two responses are never paired."""
    thompson_redraws: int = 8
    """`double_thompson`: redraws of the second member when both draws pick the same response."""
    apl_prompt_share: float = 0.5
    """`apl`: share of prompts kept by the policy's predictive entropy before the gap choice."""
    seed: int = 0
    """Seed of the random choices (random pairs, Thompson draws)."""

    def __post_init__(self) -> None:
        names = get_args(get_type_hints(SelectionConfig)["strategy"])
        require(self.strategy in names, "strategy", f"must be one of {list(names)}, "
                f"got {self.strategy!r}")
        require(self.budget >= 0, "budget", "must be >= 0")
        require(self.pairs_per_prompt >= 1, "pairs_per_prompt", "must be >= 1")
        require(0 <= self.random_share <= 1, "random_share", "must be in [0, 1]")
        require(0 < self.near_duplicate <= 1, "near_duplicate", "must be in (0, 1]")
        require(self.thompson_redraws >= 0, "thompson_redraws", "must be >= 0")
        require(0 < self.apl_prompt_share <= 1, "apl_prompt_share", "must be in (0, 1]")


@dataclass(frozen=True)
class RoutingConfig:
    auto_threshold: float = 0.25
    """A pair is labeled by the judges when |p_a - 0.5| >= this (0.25: p >= 0.75 or <= 0.25)
    and they are order-consistent and not too uncertain."""
    max_auto_uncertainty: float = 0.15
    """Judge spread (std of member probabilities) above which a pair is never auto-labeled."""
    unparsable: Literal["human", "drop"] = "human"
    """Where pairs go whose judge verdict could not be read."""
    min_judge_slope: float = 0.25
    """A judge is set aside for the next round when its agreement with people is this low:
    the slope a of sigmoid(a * logit(p_judge)) fitted to people's soft labels on the pairs
    it judged and they labeled (a = 1 / temperature for a sound judge; a <= 0: it knows
    nothing, or prefers what people do not, which no temperature can express). A set-aside
    judge decides no pair: its pairs go to people (within the budget, then `unparsable`).
    Needs 5 such pairs; -20 turns the check off."""

    def __post_init__(self) -> None:
        require(0 <= self.auto_threshold <= 0.5, "auto_threshold", "must be in [0, 0.5]")
        require(self.max_auto_uncertainty >= 0, "max_auto_uncertainty", "must be >= 0")
        require(-20 <= self.min_judge_slope <= 20, "min_judge_slope", "must be in [-20, 20]")


@dataclass(frozen=True)
class HumanConfig:
    budget: int = 0
    """Most pairs sent to people per round, most informative first (0: no people)."""
    votes_required: int = 1
    """Votes each routed pair needs."""
    max_votes: int = 3
    """Cap on votes when the first ones disagree (adaptive redundancy)."""
    db: str = ""
    """The queue's database URL (`sqlite:///PATH` or `postgresql+psycopg://...`); empty:
    `RUN_DIR/queue.db`."""
    lease_minutes: float = 10.0
    """How long an item handed to an annotator stays reserved; unanswered, it goes back."""
    gold_rate: float = 0.0
    """Share of assignments that are gold items (known answers, `alignloop queue import
    --gold`) for the simulated panel (`loop.simulate_labels`); people meet them at `queue
    serve --gold-rate`. They measure each annotator's accuracy and feed
    `aggregation.gold_calibration`."""
    wait: Literal["block", "exit"] = "block"
    """When the round needs labels: `block` waits (up to `wait_timeout_s`, with a progress
    line) and goes on with what it has; `exit` stops the run with a "waiting for N labels"
    message, and a later `alignloop run` resumes the round there."""
    wait_timeout_s: float = 3600.0
    """Longest wait for labels under `wait: block`, in seconds."""
    min_labels: int = 0
    """Labels the round waits for (0: every routed pair has the votes it needs)."""

    def __post_init__(self) -> None:
        require(self.budget >= 0, "budget", "must be >= 0")
        require(self.votes_required >= 1, "votes_required", "must be >= 1")
        require(self.max_votes >= self.votes_required, "max_votes", "must be >= votes_required")
        require(self.lease_minutes > 0, "lease_minutes", "must be > 0")
        require(0 <= self.gold_rate < 1, "gold_rate", "must be in [0, 1)")
        require(self.wait in ("block", "exit"), "wait", "must be block or exit")
        require(self.wait_timeout_s >= 0, "wait_timeout_s", "must be >= 0")
        require(self.min_labels >= 0, "min_labels", "must be >= 0")


@dataclass(frozen=True)
class AggregationConfig:
    prior_reliability: float = 0.75
    """Prior mean of an annotator's chance of voting the true preference (Dawid-Skene)."""
    prior_strength: float = 4.0
    """Pseudo-votes behind that prior: one real vote never makes a label certain."""
    judge_vote_weight: float = 0.0
    """Weight of the judges' log-odds as a weak extra voter on human-labeled pairs (0: off)."""
    iterations: int = 500
    """Most EM iterations (about 130 are needed on a few thousand sparse votes)."""
    pair_weight: Literal["none", "confidence"] = "none"
    """Training weight of a human-labeled pair (the pair's `weight`; every loss averages
    with it). `none`: 1 for every pair. `confidence`: the mean confidence of its a/b/tie
    votes over 3 (1 unsure, 2 fairly sure, 3 sure: all-sure votes weigh 1, all-unsure
    1/3); an admin's adjudicated verdict weighs 1. Judge-labeled pairs always weigh 1."""
    gold_calibration: bool = False
    """Rescale the human-labeled pairs' posteriors by a temperature fitted on the queue's
    gold items (known answers; every vote on them so far) against their answers
    (`alignloop.labeling.gold`), so `p_chosen` says how often such labels are right, not
    only how much the votes agree: what the `soft` loss trains on and what `rdpo` with
    `train.flip_rate_per_pair` reads as each pair's flip rate. The gold votes also join
    the Dawid-Skene fit. Needs a queue that holds gold items (`alignloop queue add
    --gold`); with fewer than 5 voted gold items the temperature stays 1 and
    calibration.json says why."""

    def __post_init__(self) -> None:
        require(self.pair_weight in ("none", "confidence"), "pair_weight",
                "must be none or confidence")
        require(0.5 < self.prior_reliability < 1, "prior_reliability", "must be in (0.5, 1)")
        require(self.prior_strength > 0, "prior_strength", "must be > 0")
        require(self.judge_vote_weight >= 0, "judge_vote_weight", "must be >= 0")
        require(self.iterations >= 1, "iterations", "must be >= 1")


@dataclass(frozen=True)
class LabelingConfig:
    judges: tuple[JudgeSpec, ...] = ()
    """Model judges; several form a weighted ensemble. Empty: every selected pair goes to
    people (within `human.budget`)."""
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    """Which pairs of a prompt's samples are worth labeling."""
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    """Judge-labeled, sent to people, or dropped."""
    human: HumanConfig = field(default_factory=HumanConfig)
    """People in the loop."""
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    """Turning votes into soft labels."""
    calibrate: bool = True
    """Fit each judge's temperature on pairs people labeled (when there are any)."""

    def __post_init__(self) -> None:
        labels = [j.label for j in self.judges]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        require(not dup, "judges", f"judge names must be unique; repeated: {dup} (set `name`)")
