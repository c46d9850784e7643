"""The `loop:` section of the config schema: rounds, prompts, failure slices,
replay, evaluation and gates. `Config.loop` is a `LoopConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from alignloop.config.base import require


@dataclass(frozen=True)
class SlicesConfig:
    by: Literal["auto", "tag", "cluster"] = "auto"
    """How prompts are grouped: their `slice` tag, KMeans clusters of their embeddings, or
    `auto` (tags when the prompts carry them, clusters otherwise)."""
    metric: Literal["judge_score", "win_rate_vs_base", "latent_reward"] = "judge_score"
    """What ranks slices, from the previous round's evaluation: the mean pointwise score of
    the policy's responses by the judges that have one (python `score` functions, reward
    models), the judges' win rate of the policy against the base model, or the ground-truth
    utility (demo panel only)."""
    select: Literal["count", "threshold"] = "count"
    """Keep the `count` worst slices, or every slice whose metric is below `threshold`."""
    count: int = 2
    """Worst slices kept with `select: count`."""
    threshold: float = 0.5
    """Metric value below which a slice fails with `select: threshold`."""
    min_size: int = 3
    """Slices with fewer evaluated prompts than this are not ranked."""
    n_clusters: int = 8
    """Clusters when slicing by embeddings."""

    def __post_init__(self) -> None:
        require(self.count >= 1, "count", "must be >= 1")
        require(self.min_size >= 1, "min_size", "must be >= 1")
        require(self.n_clusters >= 2, "n_clusters", "must be >= 2")


@dataclass(frozen=True)
class GateConfig:
    max_kl_to_base: float = 0.0
    """Most KL(policy || base) per sequence (nats) a round may reach (0: no gate)."""
    max_slice_drop: float = 0.0
    """Largest fall of one slice a round may show against the previous policy: 0.5 minus
    its judge win rate, or the fall of its mean latent reward (demo panel). Slices with
    fewer than `report.min_slice_samples` samples are not judged. 0: no gate."""
    slice_confidence: float = 0.0
    """0: a slice that fell by more than `max_slice_drop` trips the gate. c in (0, 1): it
    also has to be a significant fall, its one-sided bootstrap p-value below (1 - c) / m
    over the m slice checks judged in the round (Bonferroni), so a round that changed
    nothing trips it with chance < 1 - c. Falls held back are recorded (state.json's
    gate `held`, `alignloop status`). At 0, a judge win rate from 9-14 comparisons
    crosses 0.4 by chance 21-25% of the time per slice when nothing changed."""
    action: Literal["flag", "stop", "rollback"] = "flag"
    """When a gate trips: flag the round in its report, stop the loop after it, or roll
    back (the next round starts from, and refers to, the previous policy)."""

    def __post_init__(self) -> None:
        require(self.max_kl_to_base >= 0, "max_kl_to_base", "must be >= 0")
        require(self.max_slice_drop >= 0, "max_slice_drop", "must be >= 0")
        require(0 <= self.slice_confidence < 1, "slice_confidence", "must be in [0, 1)")


@dataclass(frozen=True)
class LoopConfig:
    rounds: int = 3
    """Rounds in the run, round 0 (offline DPO on the static pairs) included."""
    prompts: str = "builtin:demo-prompts"
    """Prompt pool (JSONL/parquet rows with `prompt`, optional `prompt_id`, `slice`, and
    `split` = train | eval). Without `split`, `eval_share` of the prompts (by id) are held out."""
    eval_share: float = 0.25
    """Share held out for evaluation when the pool has no `split` column."""
    eval_prompts: int = 0
    """Most held-out prompts evaluated each round (0: all), chosen by id, the same every round."""
    eval_samples: int = 1
    """Samples per held-out prompt and model at evaluation (temperature 1: unbiased KL)."""
    prompts_per_round: int = 32
    """Training prompts chosen from the failure slices for generation in each online round."""
    heldout_pair_share: float = 0.1
    """Share of the static pairs (chosen by pair id) held out of round 0's training and
    scored every round for the implicit-reward drift figures."""
    heldout_pair_min: int = 20
    """Static sets with fewer pairs than this hold none out (every pair is trained on)."""
    eval_tie_margin: float = 0.02
    """Judge probabilities within this of 0.5 count as a tie in the evaluation win rates."""
    replay_share: float = 0.5
    """Pairs from earlier rounds added to a round's new pairs, as a share of the new ones."""
    panel: str = ""
    """A simulated annotator panel (`demo`): its latent utility is reported as ground truth
    and, with `simulate_labels`, it labels the human queue through the real API."""
    simulate_labels: bool = False
    """Let the panel's bots label the pairs routed to people (demo and tests)."""
    slices: SlicesConfig = field(default_factory=SlicesConfig)
    """Finding failure slices."""
    gate: GateConfig = field(default_factory=GateConfig)
    """Per-round gates on drift."""
    seed: int = 0
    """Seed of prompt choices."""

    def __post_init__(self) -> None:
        require(self.rounds >= 1, "rounds", "must be >= 1")
        require(0 < self.eval_share < 1, "eval_share", "must be in (0, 1)")
        require(self.eval_prompts >= 0, "eval_prompts", "must be >= 0")
        require(self.eval_samples >= 1, "eval_samples", "must be >= 1")
        require(self.prompts_per_round >= 1, "prompts_per_round", "must be >= 1")
        require(0 <= self.heldout_pair_share < 1, "heldout_pair_share", "must be in [0, 1)")
        require(self.heldout_pair_min >= 0, "heldout_pair_min", "must be >= 0")
        require(0 <= self.eval_tie_margin < 0.5, "eval_tie_margin", "must be in [0, 0.5)")
        require(self.replay_share >= 0, "replay_share", "must be >= 0")
        require(not self.simulate_labels or bool(self.panel), "simulate_labels",
                 "needs loop.panel (the panel that labels)")
