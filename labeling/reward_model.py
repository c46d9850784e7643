"""The `reward_model` judge: Hugging Face sequence-classification reward models, pointwise.

A reward model maps (prompt, response) to one scalar r. Under Bradley-Terry the
probability that `a` beats `b` is sigmoid(r(a) - r(b)), so a model scores each
response once and every pair is read off the scores. Selection sends all
k(k-1)/2 pairs of a prompt's k samples; scoring the k unique responses instead
of 2 * k(k-1)/2 texts is what makes this judge cheap.

Several models form an ensemble: each is one member, and their spread is the
judge's epistemic uncertainty. No temperature is applied here; the ensemble of
all judges applies each judge's temperature (or its calibrated one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from alignloop.labeling import Comparison, Judgement, LabelingError, prompt_text, sigmoid
from alignloop.progress import tqdm
from alignloop.records import Prompt

if TYPE_CHECKING:
    from alignloop.config.labeling import JudgeSpec

PROGRESS_MIN_TEXTS = 50
"""Fewer texts than this are scored without a progress bar (it would only flicker)."""


@dataclass
class RewardModel:
    """One loaded reward model: `ref` as the user wrote it, the model, its tokenizer."""

    ref: str
    model: Any
    tokenizer: Any


def load_reward_model(ref: str, placement=None) -> RewardModel:
    """A reward model in eval mode where `placement` says, in its sampling dtype (None:
    CPU, float32), or a LabelingError naming `ref`.

    The config is read first, so a model that is not a one-output sequence
    classifier (a causal LM, a 2-class classifier) is refused before transformers
    would bolt a randomly initialised head onto it.
    """
    from alignloop.models import load_tokenizer, resolve_model_path
    from alignloop.placement import Placement
    from transformers import AutoConfig, AutoModelForSequenceClassification

    placement = placement or Placement()

    source = resolve_model_path(ref)
    local = not isinstance(source, str)
    try:
        config = AutoConfig.from_pretrained(str(source), local_files_only=local)
    except (OSError, ValueError) as e:
        raise LabelingError(f"reward model {ref!r}: cannot read its config ({e})") from None
    archs = list(getattr(config, "architectures", None) or [])
    if archs and not any(a.endswith("ForSequenceClassification") for a in archs):
        raise LabelingError(
            f"reward model {ref!r} is not a sequence-classification model (architectures: "
            f"{', '.join(archs)}); a reward model needs AutoModelForSequenceClassification "
            "with num_labels=1")
    if config.num_labels != 1:
        raise LabelingError(f"reward model {ref!r} has {config.num_labels} outputs "
                            "(num_labels); a reward model needs exactly one")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(source), dtype=placement.sampling_dtype, local_files_only=local)
    except (OSError, ValueError) as e:
        raise LabelingError(f"reward model {ref!r}: cannot load it ({e})") from None
    tokenizer = load_tokenizer(ref)  # gets a pad token (its EOS) if it had none
    # The classifier pools at the last token that is not `pad_token_id`, and
    # refuses batches without one, so the model must know the pad id we pad with.
    text_config = model.config.get_text_config()
    if text_config.pad_token_id is None:
        text_config.pad_token_id = tokenizer.pad_token_id
        model.config.pad_token_id = tokenizer.pad_token_id
    return RewardModel(ref, model.to(placement.device).eval(), tokenizer)


def render_text(tokenizer, prompt: Prompt, response: str) -> str:
    """The text a reward model reads: the conversation with `response` as the final
    assistant turn, through the tokenizer's chat template when it has one;
    otherwise the prompt as plain text, a newline, the response."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        messages.append({"role": "assistant", "content": response})
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return prompt_text(prompt) + "\n" + response


def score_texts(rm: RewardModel, texts: Sequence[str], *, batch_size: int, max_length: int,
                progress: bool = True) -> list[float]:
    """The reward of each text under `rm`, batched (longest first), right-padded;
    a text longer than `max_length` tokens keeps its end (the response)."""
    import torch

    tok = rm.tokenizer
    # A chat template writes its own special tokens; plain text gets the tokenizer's.
    special = not getattr(tok, "chat_template", None)
    encoded = [tok(t, add_special_tokens=special)["input_ids"][-max_length:] for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
    pad = rm.model.config.get_text_config().pad_token_id
    scores = [0.0] * len(texts)
    bar = tqdm(total=len(texts), desc=f"reward {rm.ref}", unit="text",
               disable=not progress or len(texts) < PROGRESS_MIN_TEXTS)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        T = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), T), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), T), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, :len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, :len(encoded[i])] = 1
        with torch.inference_mode():
            out = rm.model(input_ids=ids.to(rm.model.device),
                           attention_mask=mask.to(rm.model.device)).logits.float().cpu()  # (B, 1)
        for row, i in enumerate(idx):
            scores[i] = float(out[row, 0])
        bar.update(len(idx))
    bar.close()
    return scores


class RewardModelJudge:
    """P(a preferred) = sigmoid(r_m(a) - r_m(b)) for each reward model m (one member each)."""

    learns = False

    def __init__(self, models: Sequence[RewardModel], *, name: str = "reward_model",
                 batch_size: int = 8, max_length: int = 1024, progress: bool = True):
        if not models:
            raise LabelingError("a reward_model judge needs at least one model")
        self.models = list(models)
        self.name = name
        self.n_members = len(self.models)
        self.batch_size = batch_size
        self.max_length = max_length
        self.progress = progress

    @classmethod
    def from_spec(cls, spec: JudgeSpec, placement=None) -> RewardModelJudge:
        return cls([load_reward_model(ref, placement) for ref in spec.models], name=spec.label,
                   batch_size=spec.batch_size, max_length=spec.max_length)

    def rewards(self, items: Sequence[Comparison]) -> list[list[tuple[float, float]]]:
        """Per model, per comparison: (r(a), r(b)). Each unique text is scored once."""
        per_model = []
        for rm in self.models:
            texts = [render_text(rm.tokenizer, c.prompt, r) for c in items for r in (c.a, c.b)]
            unique = list(dict.fromkeys(texts))
            scored = dict(zip(unique, score_texts(rm, unique, batch_size=self.batch_size,
                                                  max_length=self.max_length,
                                                  progress=self.progress), strict=True))
            per_model.append([(scored[texts[2 * i]], scored[texts[2 * i + 1]])
                              for i in range(len(items))])
        return per_model

    def score(self, prompts: Sequence, responses: Sequence[str]) -> list[float]:
        """Pointwise utility of each response: the mean reward over the models."""
        per_model = []
        for rm in self.models:
            texts = [render_text(rm.tokenizer, p, r) for p, r in zip(prompts, responses, strict=True)]
            per_model.append(score_texts(rm, texts, batch_size=self.batch_size,
                                         max_length=self.max_length, progress=self.progress))
        return [sum(m[i] for m in per_model) / len(per_model) for i in range(len(responses))]

    def judge(self, items: Sequence[Comparison]) -> list[Judgement]:
        if not items:
            return []
        per_model = self.rewards(items)
        return [Judgement.from_members([sigmoid(ra - rb) for ra, rb in (m[i] for m in per_model)])
                for i in range(len(items))]
