"""The `llm_pairwise` judge: a generative model asked "A or B?" in both orders.

The verdict is read from the next-token distribution after the question, not
from sampled text: q = P(tok_A) / (P(tok_A) + P(tok_B)), the first tokens of the
two verdicts. Generative judges favour a position, so each comparison is asked
twice, as (a, b) and as (b, a):

    member 1 = q(a, b)          P(a wins) with a in the first slot
    member 2 = 1 - q(b, a)      P(a wins) with a in the second slot
    p_a      = (member 1 + member 2) / 2

A pure position bias q(x, y) = c for all x, y gives p_a = 1/2 exactly, with
uncertainty |c - 1/2| and the two orders disagreeing. When the two verdicts
hold less than `min_verdict_mass` of the next-token probability in either order,
the model did not answer the question: the judgement is invalid, never a guess.

The model sits behind `VerdictModel`, a two-method protocol, so tests can script
verdicts; `HFVerdictModel` is the transformers implementation and
`served.ServedVerdictModel` asks an OpenAI-compatible server (the judge's `base_url`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from alignloop.config.labeling import DEFAULT_PAIRWISE_TEMPLATE
from alignloop.labeling import Comparison, Judgement, LabelingError, prompt_text
from alignloop.progress import tqdm
from alignloop.records import Prompt

if TYPE_CHECKING:
    from alignloop.config.labeling import JudgeSpec

PROGRESS_MIN_QUESTIONS = 50
"""Fewer questions than this are asked without a progress bar."""

_SLOT = re.compile(r"\{(prompt|a|b)\}")


class VerdictModel(Protocol):
    """The judge's view of a generative model."""

    def verdict_token_ids(self, verdicts: tuple[str, ...]) -> tuple[int, ...]:
        """The first token id of each verdict."""
        ...

    def first_token_probs(self, questions: list[str], token_ids: tuple[int, ...]) -> np.ndarray:
        """(N, len(token_ids)): the raw next-token probabilities of `token_ids` after each
        question (the question asked as a user turn); not renormalised over them."""
        ...


def fill_template(template: str, prompt: Prompt, first: str, second: str) -> str:
    """`template` with `{prompt}`, `{a}`, `{b}` filled in one pass (a response that
    contains `{b}` or a brace is left as written, unlike with str.format)."""
    values = {"prompt": prompt_text(prompt), "a": first, "b": second}
    return _SLOT.sub(lambda m: values[m.group(1)], template)


def read_verdict(first: Sequence[float], second: Sequence[float], min_mass: float) -> Judgement:
    """The judgement from the verdict probabilities (P(tok_A), P(tok_B)) asked as
    (a, b) (`first`) and as (b, a) (`second`); invalid when either order's mass
    P(tok_A) + P(tok_B) is below `min_mass` (or not a positive number)."""
    mass1, mass2 = float(first[0] + first[1]), float(second[0] + second[1])
    masses = f"verdict mass {mass1:.3g} as (a, b), {mass2:.3g} as (b, a)"
    if not all(m > 0 and m >= min_mass for m in (mass1, mass2)):
        return Judgement.invalid(2, f"unparsable: {masses}; min_verdict_mass is {min_mass:g}")
    q1 = float(first[0]) / mass1   # P(first slot) with a first: P(a)
    q2 = float(second[0]) / mass2  # P(first slot) with b first: P(b)
    members = (q1, 1.0 - q2)
    consistent = all(m > 0.5 for m in members) or all(m < 0.5 for m in members)
    return Judgement.from_members(members, order_consistent=consistent, detail=masses)


class VerdictModelJudge:
    """What a judge that reads a `VerdictModel` (its `model`) shares: a served model's
    answer cache and usage counts."""

    model: VerdictModel

    def use_cache(self, path) -> None:
        """Keep a served model's answers in `path` (a local model has no cache)."""
        if hasattr(self.model, "use_cache"):
            self.model.use_cache(path)

    @property
    def usage(self) -> dict | None:
        """A served model's request and token counts since `use_cache` (None: local)."""
        return getattr(self.model, "usage", None)


class LLMPairwiseJudge(VerdictModelJudge):
    """A generative model as a pairwise judge; its two members are the two orders."""

    n_members = 2
    learns = False

    def __init__(self, model: VerdictModel, *, name: str = "llm_pairwise",
                 template: str = DEFAULT_PAIRWISE_TEMPLATE, verdicts: Sequence[str] = ("A", "B"),
                 min_verdict_mass: float = 0.05, model_ref: str = ""):
        self.model = model
        self.name = name
        self.template = template
        self.verdicts = (verdicts[0], verdicts[1])
        self.min_verdict_mass = min_verdict_mass
        self.token_ids = model.verdict_token_ids(self.verdicts)
        if self.token_ids[0] == self.token_ids[1]:
            where = f" of {model_ref!r}" if model_ref else ""
            raise LabelingError(
                f"judge {name!r}: verdicts {self.verdicts[0]!r} and {self.verdicts[1]!r} start "
                f"with the same token (id {self.token_ids[0]}) in the tokenizer{where}, so "
                "the next token cannot tell them apart; choose verdicts with different first tokens")

    @classmethod
    def from_spec(cls, spec: JudgeSpec, placement=None) -> LLMPairwiseJudge:
        ref = spec.models[0]
        return cls(verdict_model_for(spec, placement), name=spec.label, template=spec.template,
                   verdicts=spec.verdicts, min_verdict_mass=spec.min_verdict_mass, model_ref=ref)

    def judge(self, items: Sequence[Comparison]) -> list[Judgement]:
        if not items:
            return []
        n = len(items)
        questions = ([fill_template(self.template, c.prompt, c.a, c.b) for c in items]
                     + [fill_template(self.template, c.prompt, c.b, c.a) for c in items])
        probs = np.asarray(self.model.first_token_probs(questions, self.token_ids), dtype=float)
        if probs.shape != (2 * n, 2):
            raise LabelingError(f"judge {self.name!r}: the verdict model returned shape "
                                f"{probs.shape} for {2 * n} questions; expected ({2 * n}, 2)")
        return [read_verdict(probs[i], probs[n + i], self.min_verdict_mass) for i in range(n)]


def verdict_model_for(spec: JudgeSpec, placement=None) -> VerdictModel:
    """The judge's model: served at `spec.base_url`, else loaded here as `placement` says."""
    if spec.base_url:
        from alignloop.labeling.served import ServedVerdictModel

        return ServedVerdictModel.from_spec(spec)
    return HFVerdictModel.load(spec.models[0], placement=placement, batch_size=spec.batch_size,
                               max_length=spec.max_length)


class HFVerdictModel:
    """A transformers causal LM asked one user turn per question, in eval mode; placed by
    `load` as the placement says (its sampling dtype: bf16 under bf16-mixed), with the
    softmax over the vocabulary in float64.

    Questions are batched longest first with left padding, explicit position ids
    and an attention mask, so a question's probabilities do not depend on its
    batch-mates. A question longer than `max_length` tokens keeps its end: the
    instruction and the assistant header that the verdict follows.
    """

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 8,
                 max_length: int = 1024, progress: bool = True):
        import inspect

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.progress = progress
        # Only the last position's logits are needed; the (B, T, V) tensor is the big one.
        params = inspect.signature(model.forward).parameters
        self._keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    @classmethod
    def load(cls, ref: str, *, placement=None, **kwargs: Any) -> HFVerdictModel:
        """`ref` loaded where `placement` says (None: CPU, float32)."""
        from alignloop.models import load_model, load_tokenizer
        from alignloop.placement import Placement

        placement = placement or Placement()
        model = load_model(ref, dtype=placement.sampling_dtype, device=placement.device)
        return cls(model, load_tokenizer(ref), **kwargs)

    def encode(self, question: str) -> list[int]:
        """Token ids of `question` as one user turn followed by the assistant header
        (chat template), or of `question + "\\nAnswer:"` for a model without one."""
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template([{"role": "user", "content": question}],
                                           add_generation_prompt=True, tokenize=False)
            ids = tok(text, add_special_tokens=False)["input_ids"]  # the template has them
        else:
            ids = tok(question + "\nAnswer:")["input_ids"]
        return ids[-self.max_length:]

    def verdict_token_ids(self, verdicts: tuple[str, ...]) -> tuple[int, ...]:
        ids = []
        for v in verdicts:
            toks = self.tokenizer(v, add_special_tokens=False)["input_ids"]
            if not toks:
                raise LabelingError(f"verdict {v!r} tokenizes to nothing")
            ids.append(toks[0])
        return tuple(ids)

    def first_token_probs(self, questions: list[str], token_ids: tuple[int, ...]) -> np.ndarray:
        encoded = [self.encode(q) for q in questions]
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        out = np.zeros((len(questions), len(token_ids)))
        bar = tqdm(total=len(questions), desc="llm judge", unit="question",
                   disable=not self.progress or len(questions) < PROGRESS_MIN_QUESTIONS)
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            probs = self._next_token_probs([encoded[i] for i in idx])  # (B, V)
            out[idx] = probs[:, list(token_ids)].numpy()
            bar.update(len(idx))
        bar.close()
        return out

    def _next_token_probs(self, batch: list[list[int]]):
        """(B, V) float32 next-token probabilities after each (left-padded) sequence."""
        import torch

        B, T = len(batch), max(len(e) for e in batch)
        ids = torch.full((B, T), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.long)
        for b, e in enumerate(batch):
            ids[b, T - len(e):] = torch.tensor(e)
            mask[b, T - len(e):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                position_ids=positions.to(device), **self._keep).logits
        # float64 for the (B, V) softmax: torch's vectorised float32 exp on some CPUs is off
        # by ~2e-4 relative over a 49k vocabulary (0.7679 for an exact 0.7681)
        return logits[:, -1].double().softmax(-1).float().cpu()
