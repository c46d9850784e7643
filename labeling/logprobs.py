"""Sequence log-probs of responses under a model, for the `apl` selection strategy
(implicit reward beta * log pi/pi_ref needs the same tokens scored by both models).

Responses are tokenised exactly as the trainer tokenises them
(`alignloop.models.prompt_token_ids` / `response_token_ids`: chat template turn,
end-of-turn token included), so policy and reference log-probs are comparable
with each other and with the DPO objective. Both sides are scored here: neither
is mixed with a sample's own `Completion.logprob_sum`, which covers the sampled
tokens (end token included, but not the "\\n" a chat template writes after it).
Models run as the placement says (`alignloop.placement`: scoring weights, its
autocast); the log-softmax over the vocabulary is float32 in every precision.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from alignloop.records import Prompt


def sequence_logprobs(model_ref: str, prompts: Sequence[Prompt], responses: Sequence[str], *,
                      batch_size: int = 8, progress: bool = True, chat_template: str = "auto",
                      placement=None) -> np.ndarray:
    """(N,) summed log-probs of each response given its prompt under `model_ref`
    (plain-text prompts rendered as `chat_template` says: `data.chat_template`), placed as
    `placement` says (None: CPU, fp32)."""
    from alignloop.models import load_model, load_tokenizer, prompt_token_ids, response_token_ids
    from alignloop.placement import Placement

    placement = placement or Placement()
    tokenizer = load_tokenizer(model_ref, chat_template)
    seqs = [(prompt_token_ids(tokenizer, prompt), response_token_ids(tokenizer, prompt, response))
            for prompt, response in zip(prompts, responses, strict=True)]
    model = load_model(model_ref, dtype=placement.weights_dtype, device=placement.device)
    return score_token_sequences(model, seqs, pad_id=tokenizer.pad_token_id,
                                 batch_size=batch_size, progress=progress,
                                 desc=f"log-probs {model_ref}", placement=placement)


def score_token_sequences(model, seqs: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                          pad_id: int, batch_size: int = 8, progress: bool = True,
                          desc: str = "log-probs", placement=None) -> np.ndarray:
    """(N,) summed log-probs of each (prompt ids, response ids) pair's response tokens,
    the forward under `placement.autocast()` (None: none)."""
    import contextlib

    import torch
    from alignloop.attention import scoring_attention
    from alignloop.progress import tqdm
    from alignloop.token_logps import token_logps

    autocast = placement.autocast if placement is not None else contextlib.nullcontext
    out = np.zeros(len(seqs))
    order = sorted(range(len(seqs)), key=lambda n: -(len(seqs[n][0]) + len(seqs[n][1])))
    with torch.inference_mode():
        for s in tqdm(range(0, len(order), batch_size), desc=desc,
                      disable=not progress or len(order) < 4 * batch_size):
            idx = order[s:s + batch_size]
            width = max(len(seqs[n][0]) + len(seqs[n][1]) for n in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            predicts = torch.zeros((len(idx), width), dtype=torch.bool)  # position -> next token
            for row, n in enumerate(idx):
                full = list(seqs[n][0]) + list(seqs[n][1])
                ids[row, :len(full)] = torch.tensor(full)
                mask[row, :len(full)] = 1
                predicts[row, len(seqs[n][0]) - 1:len(full) - 1] = True
            # The decoder runs over whole sequences; the output projection (a 49k-wide
            # matmul for SmolLM2) only over the positions that predict response tokens,
            # all rows of the batch in one matmul.
            with autocast(), scoring_attention(model):
                hidden = model.get_decoder()(input_ids=ids.to(model.device),
                                             attention_mask=mask.to(model.device),
                                             use_cache=False).last_hidden_state      # (B, T, H)
                logits = model.get_output_embeddings()(hidden[predicts.to(model.device)])  # (R, V)
            targets = ids[:, 1:][predicts[:, :-1]].to(model.device)                     # (R,)
            lp = token_logps(logits, targets).cpu().double()    # float32 log-softmax
            rows = torch.arange(len(idx))[:, None].expand_as(predicts)[predicts]
            sums = torch.zeros(len(idx), dtype=torch.float64).index_add_(0, rows, lp)
            out[idx] = sums.numpy()
    return out


def with_logprobs(groups: list, *, policy: str, reference: str, chat_template: str = "auto",
                  placement=None) -> list:
    """Candidate groups with each response's sequence log-prob under `policy` and
    `reference` (what the `apl` selection strategy's implicit reward needs), both placed
    as `placement` says (None: CPU, fp32)."""
    import dataclasses
    import logging

    if policy == reference:
        logging.getLogger(__name__).warning(
            "apl: policy and reference are the same model (%s): every implicit reward is 0", policy)
    prompts = [g.prompt for g in groups for _ in g.responses]
    responses = [r for g in groups for r in g.responses]
    lp = {m: sequence_logprobs(m, prompts, responses, chat_template=chat_template,
                               placement=placement)
          for m in {policy, reference}}
    out, at = [], 0
    for g in groups:
        k = len(g.responses)
        out.append(dataclasses.replace(g, policy_logps=tuple(lp[policy][at:at + k]),
                                       reference_logps=tuple(lp[reference][at:at + k])))
        at += k
    return out
