"""Attention for packed pair batches: training, the reference pass and evaluation's log-probs
(`training.logps`, `labeling.logprobs`), so it lives in the core both import.

A packed batch carries its own boolean mask (prefix sharing, see `training/batching.py`), so
PyTorch's fused attention on a CPU takes its masked path. Under bf16 autocast that path
runs in float32 (the rotary embedding hands it float32 queries, keys and values): on a
2-core AMD EPYC with `avx512_bf16`, 30 layers of it took 1.15 s of a 4.97 s bf16-mixed
step (8 pairs, 151 tokens a row), no faster than in fp32. Written as two bf16 batched
matmuls around a bf16 softmax (the CPU kernel sums in float32), the same attention runs
on the bf16 units; its cost is memory: the (B, H, L, S) bf16 probabilities are kept for
the backward pass, 2 bytes an element.

So `packed_attention` takes the matmul path on a CPU, under bf16, while one layer's score
matrix has at most `MATMUL_SCORES` elements (a 30-layer model then keeps at most
30 x 2 x 8M bytes = 480 MB of them for the backward pass), and PyTorch's fused kernel
otherwise: on a GPU, in float32, and for long batches. `benchmarks/dpo_throughput.py`
measures training either way, side by side (its `alignloop-bf16-fused` rows).

A packed batch's mask reaches the decoder additive (`additive_mask`: 0 where a position may
attend, -inf where not, in the dtype the scores are computed in), not boolean, for two
reasons. Speed: adding it costs the backward pass nothing, where a boolean fill's backward
fills the gradient again; under `train.compile` on the 2-core AMX Xeon, 30 layers of this
attention (8 rows of 151 tokens, forward and backward) took about 0.14-0.17 s with the
additive mask against 0.22-0.31 s with the boolean one, in one process, alternating.
Correctness: a model that keeps its own attention (`eager`, which adds the mask to its
scores) would read a boolean mask as 0 and 1 and attend everywhere.

`scoring_attention(model)` switches a Hugging Face model to it for the duration of one
forward pass; the model's config is restored after, so a saved checkpoint never names it.
"""

from __future__ import annotations

import contextlib

import torch

NAME = "alignloop_packed"
UNSUPPORTED = ("softcap", "s_aux", "position_bias", "head_mask")
"""Attention arguments some architectures pass (Gemma 2's logit soft-capping, gpt-oss's
sinks, ...) that the matmul path does not compute: a call with any of them set goes to
the fused path, which applies or refuses them."""
MATMUL_SCORES = 8 * 2**20   # elements of one layer's (B, H, L, L) scores
_registered = False


def _matmul_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      mask: torch.Tensor, scaling: float) -> torch.Tensor:
    """Attention by batched matmuls. query (B, H, L, D); key, value (B, KV, S, D), each of
    the KV heads shared by H / KV query heads (grouped-query attention, no copies of K or V);
    mask (B, 1, L, S) additive (`additive_mask`) or bool (True = may attend), no row all
    masked. Returns (B, L, H, D)."""
    B, H, L, D = query.shape
    KV, S = key.shape[1], key.shape[2]
    query, key, value = (t.to(torch.bfloat16) for t in (query, key, value))
    q = (query * scaling).reshape(B, KV, (H // KV) * L, D)
    scores = torch.matmul(q, key.transpose(-1, -2)).view(B, KV, H // KV, L, S)
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask.unsqueeze(2), float("-inf"))
    else:
        scores = scores + mask.to(torch.bfloat16).unsqueeze(2)
    probs = torch.softmax(scores, dim=-1)   # bf16 in and out; the CPU kernel sums in float32
    out = torch.matmul(probs.view(B, KV, (H // KV) * L, S), value)   # (B, KV, G*L, D)
    return out.view(B, H, L, D).transpose(1, 2)


def _bf16(query: torch.Tensor) -> bool:
    """bf16 weights, or bf16 autocast (where the rotary embedding hands attention float32
    queries, keys and values, and PyTorch's fused kernel then runs in float32)."""
    return query.dtype == torch.bfloat16 or (
        torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)


def uses_matmul_path(query: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Whether `packed_attention` computes this call by matmuls (see the module docstring)."""
    B, H, L, _ = query.shape
    return (query.device.type == "cpu" and _bf16(query)
            and mask is not None and (mask.dtype == torch.bool or mask.is_floating_point())
            and mask.dim() == 4
            and B * H * L * mask.shape[-1] <= MATMUL_SCORES)


def packed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """A Hugging Face attention function (`AttentionInterface`): the matmul path where it is
    faster, PyTorch's fused attention (transformers' own `sdpa` function) elsewhere."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if (uses_matmul_path(query, attention_mask) and not (dropout and module.training)
            and all(kwargs.get(k) is None for k in UNSUPPORTED)):
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        return _matmul_attention(query, key, value, attention_mask, scale), None
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.to(query.dtype)   # PyTorch's kernel wants the queries' dtype
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                  scaling=scaling, **kwargs)


def additive_mask(model, mask: torch.Tensor) -> torch.Tensor:
    """A packed batch's bool mask (B, 1, L, S), True = may attend, as the decoder of `model`
    should get it: 0 where a position may attend and -inf where not, in bf16 where the scores
    are (bf16 weights, or bf16 autocast on the model's device) and in the model's dtype
    elsewhere. Every attention a model may use reads it right: `packed_attention`, PyTorch's
    fused kernel, and a model's own `eager` attention, which adds the mask to its scores."""
    param = next(model.parameters())
    kind = param.device.type
    bf16 = param.dtype == torch.bfloat16 or (
        torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind) == torch.bfloat16)
    dtype = torch.bfloat16 if bf16 else param.dtype
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def sliding_window(model) -> int | None:
    """The window, in tokens, of `model`'s sliding-window attention layers (a query sees the
    keys less than that many positions behind it), or None when no layer has one."""
    cfg = getattr(model, "config", None)
    window = getattr(cfg, "sliding_window", None)
    if not window:
        return None
    types = getattr(cfg, "layer_types", None)
    if types is not None:
        return window if "sliding_attention" in types else None
    return None if getattr(cfg, "use_sliding_window", True) is False else window


def decoder_mask(model, mask: torch.Tensor, query_positions: torch.Tensor,
                 key_positions: torch.Tensor):
    """What a decoder should get as `attention_mask` for a batch with its own mask (B, 1, L, S)
    bool, True = may attend: the additive mask (`additive_mask`). For a model with
    sliding-window layers, when the batch reaches past the window, those layers get the mask
    cut to the window as well (query position - key position < window, from the positions,
    (B, L) and (B, S), so a packed batch's rejected response is measured from its own
    prompt): a model with layer types gets a dict by type, {"full_attention": ...,
    "sliding_attention": ...}, which transformers passes to each layer as it is; one without
    (every layer slides) gets the windowed mask. A custom mask is otherwise handed to every
    layer unchanged, and a sliding layer would see past its window."""
    window = sliding_window(model)
    if window is None or int(query_positions.max() - key_positions.min()) < window:
        return additive_mask(model, mask)
    near = (query_positions[:, None, :, None] - key_positions[:, None, None, :]) < window
    windowed = additive_mask(model, mask & near)
    if getattr(model.config, "layer_types", None) is not None:
        return {"full_attention": additive_mask(model, mask), "sliding_attention": windowed}
    return windowed      # every layer slides: the full mask would go unused


def _register() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

        AttentionInterface.register(NAME, packed_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
        _registered = True


@contextlib.contextmanager
def scoring_attention(model):
    """Run `model`'s attention through `packed_attention` inside the block. Models that do
    not read `config._attn_implementation` keep their own attention."""
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    if before not in ("sdpa", NAME):   # eager, flash or a custom choice of the user: theirs
        yield
        return
    _register()
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before
