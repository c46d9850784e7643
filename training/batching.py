"""Tokenisation and prefix-shared batching of preference pairs.

A pair is packed into ONE sequence `prompt + chosen + rejected`:

    tokens     p0 p1 .. pP-1 | c0 .. cC-1 | r0 .. rR-1
    positions  0  1  .. P-1  | P  .. P+C-1| P  .. P+R-1    (restart after the prompt)
    attention  causal, except that rejected tokens never see chosen tokens

so the prompt is run through the model once for both responses. The first
token of each response is predicted from the last prompt position; the rest
from the previous token of the same response. Pairs of similar length share a
micro-batch (right padding, pad rows attend only to themselves), and only the
response positions go through the output projection (see `logps.py`).
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections import Counter
from dataclasses import dataclass

import torch
from alignloop.errors import AlignloopError
from alignloop.progress import tqdm
from alignloop.records import Pair

log = logging.getLogger("alignloop.training")


class TokenizationError(AlignloopError, ValueError):
    """A pair that cannot be trained on after tokenisation; names its file and row."""


@dataclass(frozen=True)
class EncodedPair:
    index: int
    """Position of the pair in the list given to `encode_pairs`."""
    pair_id: str
    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...]
    p_chosen: float
    weight: float

    @property
    def length(self) -> int:
        """Tokens in the packed sequence (the prompt counted once)."""
        return len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)

    @property
    def ids_hash(self) -> str:
        """Hash of the exact token ids: a cached log-prob is valid only for the same ids."""
        blob = repr((self.prompt_ids, self.chosen_ids, self.rejected_ids)).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def skip_reason(message: str) -> str:
    """The short reason an `encode_pair` message is counted under when rows are skipped."""
    if message.startswith("prompt has "):
        return "prompt over max_prompt_length"
    if "is longer than max_length" in message:
        return "over max_length"
    if message.startswith("chosen and rejected have identical tokens"):
        return "identical tokens"
    return message.split(" (")[0]


def encode_pair(pair: Pair, tokenizer, *, max_length: int, max_prompt_length: int,
                truncation: str, cut: list[int] | None = None) -> tuple[tuple[int, ...], ...] | str:
    """Token ids (prompt, chosen, rejected), or the reason the pair is invalid. A prompt
    cut to its last `max_prompt_length` tokens adds its full length to `cut`.

    The ids are `prompt_token_ids` / `response_token_ids` (alignloop.models), the
    same ones generation and log-prob scoring use."""
    from alignloop.chat import prompt_token_ids, response_token_ids

    try:
        prompt = tuple(prompt_token_ids(tokenizer, pair.prompt))
        chosen = tuple(response_token_ids(tokenizer, pair.prompt, pair.chosen))
        rejected = tuple(response_token_ids(tokenizer, pair.prompt, pair.rejected))
    except ValueError as e:  # no chat template, a response the template cannot separate, ...
        return str(e)
    if len(prompt) > max_prompt_length:
        if truncation == "error":
            return f"prompt has {len(prompt)} tokens, over max_prompt_length={max_prompt_length}"
        if cut is not None:
            cut.append(len(prompt))
        prompt = prompt[-max_prompt_length:]  # keep_end: the latest turns matter most
    longest = max(len(chosen), len(rejected))
    if len(prompt) + longest > max_length:
        which = "chosen" if len(chosen) >= len(rejected) else "rejected"
        return (f"prompt ({len(prompt)} tokens) + {which} ({longest} tokens) is longer than "
                f"max_length={max_length} after truncation")
    if chosen == rejected:
        return "chosen and rejected have identical tokens"
    return prompt, chosen, rejected


def _invalid(pair: Pair, i: int, reason: str) -> TokenizationError:
    where = pair.origin or f"pair {i} (id {pair.pair_id})"
    return TokenizationError(f"{where}: {reason} (set data.on_invalid=skip to drop such rows)")


def check_encodable(pairs: list[Pair], tokenizer, *, max_length: int, max_prompt_length: int,
                    truncation: str = "keep_end") -> None:
    """Raise for the first pair `encode_pairs` would refuse under on_invalid=error, with the
    same message, and say nothing else (a check before the run: the stage that encodes
    them later gives the warnings)."""
    for i, pair in enumerate(pairs):
        result = encode_pair(pair, tokenizer, max_length=max_length,
                             max_prompt_length=max_prompt_length, truncation=truncation)
        if isinstance(result, str):
            raise _invalid(pair, i, result)


def encode_pairs(pairs: list[Pair], tokenizer, *, max_length: int, max_prompt_length: int,
                 truncation: str = "keep_end", on_invalid: str = "error",
                 progress: bool = True) -> tuple[list[EncodedPair], dict[str, int]]:
    """Tokenise every pair; invalid ones raise (naming file and row) or are skipped and counted."""
    encoded, skipped, cut = [], Counter(), []
    for i, pair in enumerate(tqdm(pairs, desc="tokenize", disable=not progress or len(pairs) < 500)):
        result = encode_pair(pair, tokenizer, max_length=max_length,
                             max_prompt_length=max_prompt_length, truncation=truncation, cut=cut)
        if isinstance(result, str):
            if on_invalid == "error":
                raise _invalid(pair, i, result)
            skipped[skip_reason(result)] += 1
            continue
        prompt, chosen, rejected = result
        encoded.append(EncodedPair(i, pair.pair_id, prompt, chosen, rejected,
                                   float(pair.p_chosen), float(pair.weight)))
    if skipped:
        log.warning("skipped %d pairs at tokenisation: %s", sum(skipped.values()), dict(skipped))
    if cut:      # kept, as data.truncation asks, but a prompt that lost most of itself is said
        log.warning("%d of %d prompts were longer than data.max_prompt_length (%d tokens) and "
                    "keep only their last %d tokens (the longest had %d; data.truncation: "
                    "error refuses them instead)", len(cut), len(pairs), max_prompt_length,
                    max_prompt_length, max(cut))
    if not encoded:
        raise TokenizationError("no pair is left to train on after tokenisation")
    return encoded, dict(skipped)


@dataclass
class PackedBatch:
    """A micro-batch of packed pairs. B pairs, L the longest packed length, N response tokens."""

    input_ids: torch.Tensor       # (B, L)
    position_ids: torch.Tensor    # (B, L)
    attention_mask: torch.Tensor  # (B, 1, L, L) bool, True = may attend
    gather_index: torch.Tensor    # (N,) flat index into B*L of the position predicting each response token
    targets: torch.Tensor         # (N,) the response tokens
    segment: torch.Tensor         # (N,) 2*b for pair b's chosen tokens, 2*b+1 for its rejected tokens
    n_chosen: torch.Tensor        # (B,) response lengths in tokens
    n_rejected: torch.Tensor      # (B,)
    p_chosen: torch.Tensor        # (B,)
    weight: torch.Tensor          # (B,)
    pair_ids: list[str]
    n_tokens: int                 # real (unpadded) tokens in the batch

    def to(self, device) -> PackedBatch:
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))
        return self


def collate(pairs: list[EncodedPair], pad_id: int) -> PackedBatch:
    """Pack pairs into one right-padded micro-batch with the prefix-sharing mask."""
    B = len(pairs)
    L = max(p.length for p in pairs)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    position_ids = torch.zeros((B, L), dtype=torch.long)
    mask = torch.zeros((B, 1, L, L), dtype=torch.bool)
    causal = torch.ones((L, L), dtype=torch.bool).tril()
    gather, targets, segment = [], [], []
    for b, p in enumerate(pairs):
        P, C, R = len(p.prompt_ids), len(p.chosen_ids), len(p.rejected_ids)
        n = P + C + R
        input_ids[b, :n] = torch.tensor(p.prompt_ids + p.chosen_ids + p.rejected_ids)
        position_ids[b, :P + C] = torch.arange(P + C)
        position_ids[b, P + C:n] = torch.arange(P, P + R)
        position_ids[b, n:] = torch.arange(L - n)  # padding: any valid positions
        mask[b, 0, :n, :n] = causal[:n, :n]
        mask[b, 0, P + C:n, P:P + C] = False       # rejected never sees chosen
        idx = torch.arange(n, L)
        mask[b, 0, idx, idx] = True                # pad rows see themselves (no empty softmax)
        base = b * L
        # predictor positions: last prompt token, then each response token but the last
        gather.append(base + torch.tensor([P - 1] + list(range(P, P + C - 1))))
        gather.append(base + torch.tensor([P - 1] + list(range(P + C, n - 1))))
        targets += [torch.tensor(p.chosen_ids), torch.tensor(p.rejected_ids)]
        segment += [torch.full((C,), 2 * b), torch.full((R,), 2 * b + 1)]
    return PackedBatch(
        input_ids=input_ids, position_ids=position_ids, attention_mask=mask,
        gather_index=torch.cat(gather), targets=torch.cat(targets), segment=torch.cat(segment),
        n_chosen=torch.tensor([len(p.chosen_ids) for p in pairs]),
        n_rejected=torch.tensor([len(p.rejected_ids) for p in pairs]),
        p_chosen=torch.tensor([p.p_chosen for p in pairs], dtype=torch.float32),
        weight=torch.tensor([p.weight for p in pairs], dtype=torch.float32),
        pair_ids=[p.pair_id for p in pairs],
        n_tokens=sum(p.length for p in pairs),
    )


def plan_steps(lengths: list[int], *, batch_size: int, grad_accum: int, world_size: int = 1,
               epochs: int = 1, seed: int = 0, group_by_length: bool = True) -> list[list[list[int]]]:
    """The whole run's data order: steps -> micro-batches (all processes) -> pair indices.

    Pure function of its arguments, so a resumed run replays the same order. Each
    step holds batch_size * grad_accum * world_size pairs; with `group_by_length`
    pairs of similar length are grouped (within windows of 16 steps, so the order
    stays random at a coarse scale), and inside a step the micro-batches are cut
    from length-sorted pairs so each pads little. Micro-batch j of a step goes to
    process j % world_size. A trailing partial step is kept on one process and
    dropped with several (every process must take the same number of steps).
    """
    per_step = batch_size * grad_accum * world_size
    steps: list[list[list[int]]] = []
    for epoch in range(epochs):
        order = list(range(len(lengths)))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        if group_by_length:
            window = per_step * 16
            order = [i for w in range(0, len(order), window)
                     for i in sorted(order[w:w + window], key=lambda i: -lengths[i])]
        chunks = [order[s:s + per_step] for s in range(0, len(order), per_step)]
        if group_by_length:
            random.Random(seed * 1_000_003 + epoch + 7).shuffle(chunks)
        for chunk in chunks:
            if len(chunk) < per_step and world_size > 1:
                log.warning("dropping a partial step of %d pairs (needs %d with %d processes)",
                            len(chunk), per_step, world_size)
                continue
            chunk = sorted(chunk, key=lambda i: -lengths[i])
            steps.append([chunk[m:m + batch_size] for m in range(0, len(chunk), batch_size)])
    return steps
