"""Per-pair response log-probs from one prefix-shared forward pass.

`PairScorer` wraps a causal LM so that the whole computation — decoder over the
packed sequences, output projection on response positions only, token
log-probs, per-response sums — is one `nn.Module.forward`. That keeps it
correct under DDP/FSDP wrappers (which only hook `forward`) and lets the same
module serve the reference pass under `torch.inference_mode`.

Only response positions need the output projection: with a 49k vocabulary it
is a large share of a step, and prompts (usually longer than responses in
dialogue data) would otherwise pay for it for nothing.
"""

from __future__ import annotations

import torch
from alignloop.attention import decoder_mask, scoring_attention
from alignloop.token_logps import token_logps
from alignloop.training.batching import PackedBatch
from torch import nn


class PairScorer(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        # FSDP auto-wrap reads this from the root module.
        self._no_split_modules = getattr(model, "_no_split_modules", None)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                attention_mask: torch.Tensor, gather_index: torch.Tensor,
                targets: torch.Tensor, segment: torch.Tensor, n_segments: int) -> torch.Tensor:
        """Summed log-probs per response, shape (n_segments,) = (2B,): [c0, r0, c1, r1, ...]."""
        decoder = self.model.get_decoder()
        with scoring_attention(self.model):
            hidden = decoder(input_ids=input_ids, position_ids=position_ids,
                             attention_mask=decoder_mask(self.model, attention_mask,
                                                         position_ids, position_ids),
                             use_cache=False).last_hidden_state                             # (B, L, H)
        hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, gather_index)       # (N, H)
        logits = self.model.get_output_embeddings()(hidden)                                # (N, V)
        # The log-softmax over the vocabulary and the sums in float32, whatever the precision.
        with torch.autocast(logits.device.type, enabled=False):
            logps = token_logps(logits, targets)                                           # (N,)
            sums = torch.zeros(n_segments, dtype=torch.float32, device=logps.device)
            return sums.index_add(0, segment, logps)


def score_batch(scorer: nn.Module, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen_logps, rejected_logps), each (B,), summed over response tokens."""
    B = batch.input_ids.shape[0]
    sums = scorer(batch.input_ids, batch.position_ids, batch.attention_mask,
                  batch.gather_index, batch.targets, batch.segment, 2 * B)
    sums = sums.view(B, 2)
    return sums[:, 0], sums[:, 1]
