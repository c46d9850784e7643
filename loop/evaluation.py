"""The evaluation artifacts of a round (a contract between the round driver and the reports).

The driver's eval stage writes three parquet files under `round_NNN/eval/`; the
drift report (`alignloop.report`) reads them. All held-out prompts are the
same in every round, so rounds compare on the same prompts and sample indices.

`eval/samples.parquet` — one row per (held-out prompt, model, sample):

    prompt_id      str    stable id of the held-out prompt
    prompt         str    the prompt as JSON text (a JSON string or a list of messages),
                          like pairs.parquet
    slice          str    the prompt's slice tag ("" when untagged)
    model          str    "policy" (this round's policy) or "base" (the starting model),
                          sampled with the run's generation settings (what users see), or
                          "policy_kl": extra policy samples at temperature 1 without
                          top-k/top-p, written when the generation settings are tempered, so
                          that the KL estimates average over samples of the policy itself.
                          Earlier rounds' policy samples are read from their own round dirs;
                          a round without "base" rows uses round 0's (sampled once).
    sample_index   int    0..n-1 per (prompt, model)
    text           str    the response
    n_tokens       int    generated tokens (len(Completion.token_ids)), the end token
                          included when the sample ended on one
    finish_reason  str    "stop" (EOS or a stop string) or "length" (hit max_new_tokens)
    logp_policy    float  sum of the sampled tokens' log-probs (Completion.token_ids, end
                          token included) under this round's policy
    logp_reference float  ... under this round's reference (the model the round trained against)
    logp_base      float  ... under the base model
    latent_reward  float  ground-truth utility of the response (the demo panel's latent
                          utility); NaN or absent when the run has none          [optional]
    judge_score    float  a pointwise judge score, if the judge has one; not read by the
                          report (kept for failure-slice mining)                [optional]

    The KL estimates average log pi - log q over samples drawn at temperature 1
    without top-k/top-p ("policy_kl" rows, or "policy" rows when the run samples
    untempered), which is unbiased only for samples of pi itself. The log-prob
    columns are NaN on the other rows (they are not used there).

`eval/comparisons.parquet` — the judge's paired comparisons on the same prompt and
sample index, this round's policy (a) against an opponent (b):

    prompt_id, slice, sample_index   as above
    a_model        str    "policy"
    b_model        str    "previous" (the previous round's policy sample with the same
                          prompt_id and sample_index) or "base"
    p_a            float  judge probability that a (this round's policy) is better
    tie            bool   the judge is within its tie margin, or the two texts are identical
    judge          str    which judge or ensemble gave p_a                       [optional]

`eval/heldout_pairs.parquet` — labeled pairs never trained on, scored by the
three models (chosen = the preferred side, p_chosen >= 0.5):

    pair_id, slice, p_chosen
    logp_policy_chosen, logp_policy_rejected          this round's policy
    logp_reference_chosen, logp_reference_rejected    this round's reference
    logp_base_chosen, logp_base_rejected              the base model

Round 0 usually has reference = base; then its KL to reference equals its KL to base.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from alignloop.errors import AlignloopError
from alignloop.records import Prompt

SAMPLES = "eval/samples.parquet"
COMPARISONS = "eval/comparisons.parquet"
HELDOUT_PAIRS = "eval/heldout_pairs.parquet"

MODELS = ("policy", "base", "policy_kl")
OPPONENTS = ("previous", "base")
FINISH_REASONS = ("stop", "length")

SAMPLE_COLUMNS = (
    "prompt_id", "prompt", "slice", "model", "sample_index", "text", "n_tokens",
    "finish_reason", "logp_policy", "logp_reference", "logp_base",
)
SAMPLE_OPTIONAL = ("latent_reward", "judge_score")
COMPARISON_COLUMNS = ("prompt_id", "slice", "sample_index", "a_model", "b_model", "p_a", "tie")
COMPARISON_OPTIONAL = ("judge",)
HELDOUT_PAIR_COLUMNS = (
    "pair_id", "slice", "p_chosen",
    "logp_policy_chosen", "logp_policy_rejected",
    "logp_reference_chosen", "logp_reference_rejected",
    "logp_base_chosen", "logp_base_rejected",
)


class EvalSchemaError(AlignloopError, ValueError):
    """An eval artifact that does not follow the schema above (names the file)."""


def round_dir(run_dir: str | Path, k: int) -> Path:
    return Path(run_dir) / f"round_{k:03d}"


@dataclass(frozen=True)
class EvalSample:
    prompt_id: str
    prompt: Prompt
    slice: str
    model: str
    sample_index: int
    text: str
    n_tokens: int
    finish_reason: str
    logp_policy: float = math.nan
    logp_reference: float = math.nan
    logp_base: float = math.nan
    latent_reward: float = math.nan
    judge_score: float = math.nan

    def to_row(self) -> dict:
        row = asdict(self)
        row["prompt"] = json.dumps(self.prompt, ensure_ascii=False)
        return row


@dataclass(frozen=True)
class EvalComparison:
    prompt_id: str
    slice: str
    sample_index: int
    b_model: str
    p_a: float
    tie: bool = False
    a_model: str = "policy"
    judge: str = ""

    def to_row(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class HeldoutPair:
    pair_id: str
    slice: str
    p_chosen: float
    logp_policy_chosen: float
    logp_policy_rejected: float
    logp_reference_chosen: float
    logp_reference_rejected: float
    logp_base_chosen: float = math.nan
    logp_base_rejected: float = math.nan

    def to_row(self) -> dict:
        return asdict(self)


def write_eval(rdir: str | Path, *, samples: list[EvalSample] = (),
               comparisons: list[EvalComparison] = (), heldout: list[HeldoutPair] = ()) -> None:
    """Write the non-empty tables under `rdir/eval/` (each file atomically)."""
    from alignloop.artifacts import write_parquet

    rdir = Path(rdir)
    for name, rows in ((SAMPLES, samples), (COMPARISONS, comparisons), (HELDOUT_PAIRS, heldout)):
        if rows:
            write_parquet(rdir / name, [r.to_row() for r in rows])


def _check(path: Path, rows: list[dict], required: tuple[str, ...]) -> list[dict]:
    missing = [c for c in required if rows and c not in rows[0]]
    if missing:
        raise EvalSchemaError(f"{path}: missing columns {missing} (see alignloop.evaluation)")
    return rows


def read_samples(rdir: str | Path) -> list[dict] | None:
    """Rows of `rdir/eval/samples.parquet`, or None when the file does not exist."""
    from alignloop.artifacts import read_parquet

    path = Path(rdir) / SAMPLES
    if not path.exists():
        return None
    rows = _check(path, read_parquet(path), SAMPLE_COLUMNS)
    for n, r in enumerate(rows, start=1):
        if r["model"] not in MODELS:
            raise EvalSchemaError(f"{path} row {n}: model must be one of {MODELS}, got {r['model']!r}")
    return rows


def read_comparisons(rdir: str | Path) -> list[dict] | None:
    from alignloop.artifacts import read_parquet

    path = Path(rdir) / COMPARISONS
    if not path.exists():
        return None
    rows = _check(path, read_parquet(path), COMPARISON_COLUMNS)
    for n, r in enumerate(rows, start=1):
        if r["b_model"] not in OPPONENTS:
            raise EvalSchemaError(f"{path} row {n}: b_model must be one of {OPPONENTS}, "
                                  f"got {r['b_model']!r}")
    return rows


def read_heldout_pairs(rdir: str | Path) -> list[dict] | None:
    from alignloop.artifacts import read_parquet

    path = Path(rdir) / HELDOUT_PAIRS
    if not path.exists():
        return None
    return _check(path, read_parquet(path), HELDOUT_PAIR_COLUMNS)
