"""Sequence slots for the `hf` backend's continuous batching: a KV cache whose rows
are independent sequences, and the vectorised draw of one token per row.

The cache holds up to `slots` sequences. Each row is LEFT-aligned: a sequence's
tokens sit in columns 0..len-1 of its row, so its next token's position id is its
own length and is written at that column; rows of different lengths need no
padding and no shared write column, which is what lets a finished row be replaced
by a new prompt at any step:

    row 0   [p p p p p g g g g . . . .]   len 9: writes column 9, position id 9
    row 1   [p p p g g g g g g g g . .]   len 11
    row 2   [p p p p p p p . . . . . .]   refilled this step: a prompt's KV, len 7
            <-------- span ---------->    decode attends to columns < max(len) + 1,
                                          each row masked to its own columns <= len

Active rows are always 0..rows-1: a finished row is filled by moving the last
active row into it (`move`, one row's KV), so a decode step computes only live
sequences.

With `chunk` set, the cache holds only as many columns as the longest live row needs,
rounded up to a multiple of `chunk` (never more than `max_len`): it grows when a row
outgrows it and shrinks once two chunks sit unused (live rows copied; at most one resize
per `chunk` steps while rows grow). Then `window(layer)`, every live row over all held
columns, is one contiguous block, the shape `LlamaStep`'s matmul attention wants: a
span-sliced view is strided, and a bf16 batched matmul copies it first.

transformers' attention calls `update(key, value, layer_idx)` on any object passed as
the cache; with a ready 4D mask and explicit position ids the
model asks nothing else of it (transformers 5.x; `StaticCache` instead writes
every row at one shared column, so a row could not restart at its own position).
"""

from __future__ import annotations

import torch

CANDIDATES = 256
"""Top-p without top-k first looks for the nucleus among this many most likely tokens
(exact whenever their mass reaches top_p in every row, else a full sort)."""


class SlotCache:
    """KV of up to `slots` left-aligned sequences of at most `max_len` tokens each; with
    `chunk`, only the columns the live rows need (rounded up to a multiple of `chunk`)."""

    def __init__(self, n_layers: int, slots: int, max_len: int, device, chunk: int | None = None):
        self.n_layers, self.slots, self.max_len, self.device = n_layers, slots, max_len, device
        self.chunk = chunk
        self.keys: list[torch.Tensor] = []      # per layer (slots, kv_heads, columns, head_dim)
        self.values: list[torch.Tensor] = []
        self.columns = 0                         # columns held (max_len without `chunk`)
        self.lengths = [0] * slots               # tokens held per row (host copy: no syncs)
        self.rows = 0
        self._step: tuple[torch.Tensor, torch.Tensor, int] | None = None
        self._bias: torch.Tensor | None = None

    def _fit(self, need: int, like: torch.Tensor | None = None, rows: int | None = None) -> None:
        """Hold at least `need` columns: `max_len` without `chunk`; with it, `need` rounded up
        to a chunk when it grows, and fewer than `need` + 2 chunks (it shrinks back). A
        resize keeps rows 0..rows-1 (default: the live rows). Allocated as zeros: a column
        no row has written is finite, so a masked score over it stays masked."""
        if self.chunk is None:
            want = self.max_len
        elif need > self.columns or need + 2 * self.chunk <= self.columns:
            want = min(self.max_len, -(-need // self.chunk) * self.chunk)
        else:
            return
        if want == self.columns:
            return
        like = like if like is not None else self.keys[0]
        shape = (self.slots, like.shape[1 if like.dim() == 4 else 0], want, like.shape[-1])
        keep, rows = min(self.columns, want), self.rows if rows is None else rows
        for store in (self.keys, self.values):
            old = list(store) or [None] * self.n_layers
            store.clear()
            for t in old:
                new = torch.zeros(shape, dtype=like.dtype, device=self.device)
                if t is not None:
                    new[:rows, :, :keep] = t[:rows, :, :keep]
                store.append(new)
        self.columns = want

    def put(self, row: int, prompt_kv: list[tuple[torch.Tensor, torch.Tensor]], length: int) -> None:
        """Row `row` holds a prompt: per layer its keys and values (kv_heads, length, head_dim)."""
        held = max(self.rows, row)         # rows below `row` hold sequences: a resize keeps them
        self._fit(max([length, *self.lengths[:held]]), prompt_kv[0][0], rows=held)
        for layer, (k, v) in enumerate(prompt_kv):
            self.keys[layer][row, :, :length] = k
            self.values[layer][row, :, :length] = v
        self.lengths[row] = length

    def move(self, src: int, dst: int) -> None:
        """Row `dst` takes row `src`'s sequence (only its `length` columns are copied)."""
        n = self.lengths[src]
        for k, v in zip(self.keys, self.values, strict=True):
            k[dst, :, :n] = k[src, :, :n]
            v[dst, :, :n] = v[src, :, :n]
        self.lengths[dst] = n

    def begin_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Position ids (rows, 1) and the boolean attention mask (rows, 1, 1, span) of a
        decode step over the active rows; each row's new token goes to column len."""
        lengths = torch.tensor(self.lengths[:self.rows], device=self.device)
        span = max(self.lengths[:self.rows]) + 1
        if span > self.max_len:
            raise RuntimeError(f"slot cache overflow: {span} > {self.max_len} columns")
        self._fit(span)
        mask = torch.arange(span, device=self.device)[None, :] <= lengths[:, None]
        rows = torch.arange(self.rows, device=self.device)
        self._step = (rows, lengths, span)
        return lengths[:, None], mask[:, None, None, :]

    def window(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """During a step (after `update`): keys and values of every live row over all held
        columns, (rows, kv_heads, columns, head_dim) each, contiguous."""
        return self.keys[layer][:self.rows], self.values[layer][:self.rows]

    def window_bias(self) -> torch.Tensor:
        """The step's additive float32 mask over the held columns (rows, 1, 1, columns): 0
        where a row attends (its columns <= its length), -inf elsewhere; built once a step."""
        if self._bias is None:
            _, lengths, _ = self._step
            cols = torch.arange(self.columns, device=self.device)
            self._bias = torch.zeros((len(lengths), 1, 1, self.columns), device=self.device)
            self._bias.masked_fill_(cols > lengths[:, None, None, None], float("-inf"))
        return self._bias

    def end_step(self) -> None:
        for r in range(self.rows):
            self.lengths[r] += 1
        self._step = self._bias = None

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        """transformers' per-layer call in a decode step: key/value (rows, kv_heads, 1, head_dim)."""
        rows, lengths, span = self._step
        k, v = self.keys[layer_idx], self.values[layer_idx]
        k[rows, :, lengths] = key_states[:, :, 0]
        v[rows, :, lengths] = value_states[:, :, 0]
        return k[:self.rows, :, :span], v[:self.rows, :, :span]


def draw_tokens(logits: torch.Tensor, u: torch.Tensor, temperature: float, top_k: int,
                top_p: float, lse: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row (B,) from fp32 `logits` (B, V) by inverse CDF: row b takes the
    first candidate whose cumulative probability exceeds u[b] (uniform in [0, 1), drawn from
    that sample's own generator, so a token depends on its row's logits and its own seed).

    The distribution is the usual one: logits / temperature, then the top_k most likely,
    then the smallest most-likely set whose mass reaches top_p (renormalised). Top-p alone
    works on the `CANDIDATES` most likely tokens when they hold the nucleus in every row
    (exact), else on the fully sorted vocabulary; with neither filter, on the vocabulary in
    id order (no sort). `lse`, the logsumexp of `logits` (B, 1) if the caller has it, saves
    two passes over the vocabulary at temperature 1."""
    scaled = logits if temperature == 1 else logits / temperature  # x / 1 == x exactly
    V = scaled.shape[-1]
    if top_k and top_k < V:
        vals, idx = torch.topk(scaled, top_k)                       # (B, k), descending
        norm = torch.logsumexp(vals, -1, keepdim=True)
    else:
        reuse = lse is not None and temperature == 1
        norm = lse if reuse else torch.logsumexp(scaled, -1, keepdim=True)
        vals, idx = scaled, None
    if idx is None and top_p < 1.0:
        vals, idx = torch.topk(scaled, min(V, CANDIDATES))
        if bool(((vals - norm).exp().sum(-1) < top_p).any()):
            vals, idx = torch.sort(scaled, descending=True)
    probs = (vals - norm).exp_()                                    # (B, K) float32
    if top_p < 1.0:
        probs = probs.double()
        before = probs.cumsum(-1) - probs
        probs = probs.masked_fill(before >= top_p, 0.0)             # keep the smallest set reaching top_p
    if idx is not None:
        # invert the CDF in token-id order: sorting by probability would let a float-rounding
        # swap of two near-equal tokens move whole stretches of u to another token
        idx, order = idx.sort(-1)
        probs = probs.gather(1, order)
    cdf = probs.cumsum(-1, dtype=torch.float64)                     # the fp32 probs, summed in fp64
    j = torch.searchsorted(cdf, (u.double() * cdf[:, -1])[:, None], right=True)
    j = j.clamp(max=cdf.shape[-1] - 1)
    return (j if idx is None else idx.gather(1, j))[:, 0]
