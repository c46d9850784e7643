"""A decode step written out for Llama-architecture models, used by the `hf` backend's
continuous batching (`generation.hf`) instead of the transformers forward when the model
is a plain Llama (SmolLM2 is one); any other architecture keeps the transformers forward.

One step feeds every live row of the `SlotCache` its last token and returns the next
logits (rows, V). It computes what `LlamaForCausalLM.forward` computes for one new token
per row, with fewer and larger kernels:

    h = embed[tokens]                                 (B, D)
    cos, sin = table[lengths]                         (B, hd) once per step, not per layer
    per layer:
      x = rms_norm(h)                                 one fused kernel (fp32)
      qkv = x @ W_qkv^T                               one matmul for q, k and v  (B, (H+2KV) hd)
      q, k = rotary(q, k) on (B, H+KV, hd) at once    roll + mul + addcmul
      K, V = cache.update(k, v)                       k, v written at each row's own column
      a = attend(q as (B, KV, H/KV, hd), K, V)        grouped heads, no repeated KV
      h += a @ W_o^T
      x = rms_norm(h)
      g, u = x @ W_gu^T                               one matmul for gate and up  (B, 2I)
      h += (silu(g) * u) @ W_down^T
    logits = lm_head(rms_norm(h))

The prompts of new samples go through `LlamaStep.prefill`, the same layers over all their
tokens packed into one sequence (T, D) (no padding in matmuls, norms, rotary); attention
alone runs right-padded (N, H, P, hd) under a causal mask. Each prompt's K/V come back
left-aligned for `SlotCache.put`, and only its last position reaches the LM head. It
replaced the transformers forward for refills, 22-26% of a sample call's time before
(benchmarks/hf_decode_profile.py --compare-prefill measures the two side by side).

Attention over the cache: in float32 (and on GPUs) `scaled_dot_product_attention` over each
row's span under a boolean mask. In bfloat16 on a CPU the flash kernel gained nothing
from keys half the size (1.7 ms a layer at 64 rows x 330 columns, as fp32's 1.8, on an
AVX512-BF16 EPYC), so there the step computes what transformers' eager attention does:
scores q K^T in bf16, softmax in float32, probabilities cast to bf16, times V; over
the cache's contiguous window (`SlotCache.window`, all held columns, masked by an
additive bias) because a bf16 batched matmul copies a strided span view first. At 64
rows, 1.9-2.0x the flash kernel a layer and 1.4x whole sample calls, side by side
(benchmarks/hf_decode_profile.py --compare-attention). Only bfloat16: float16 scores
could overflow where bf16's range is float32's, and float32 gains nothing from it.

Matmuls run through oneDNN with weights packed once (`linear`: 1.2-2.4x MKL's `F.linear`
at these shapes here in float32, 1.15-1.25x in bfloat16). The fused weights (q|k|v and
gate|up concatenated) are built from the model's own modules (`LlamaStep(model, max_len)`);
the `hf` backend keeps a step across calls only while the model's weights are unchanged
(`HFGenerator._llama_step`), so a model whose weights changed since the last call (a
test's edit) is used as it is now; the rotary table comes from the model's own rotary
module for positions 0..max_len-1, so its values are the model's exactly. The LM head is
called as the model's module (a head with a bias works).

Results equal the transformers forward up to float rounding (fused matmuls and norm may
round differently): tests/test_generation_hf_decode.py checks logits within 1e-5 and greedy
tokens equal, tests/test_generation_hf_prefill.py the prefill's K/V and logits. The step's
cost, profiled, is in benchmarks/hf_decode_profile.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SUPPORTED = ("llama",)
"""`config.model_type`s whose forward `LlamaStep` reproduces (others: transformers' forward)."""


def supports(model) -> bool:
    """Whether `LlamaStep` computes this model's forward: a Llama with SiLU MLP, no biases in
    attention or MLP, a rotary embedding independent of the sequence length, no sliding window."""
    cfg = model.config
    rope = (getattr(cfg, "rope_parameters", None) or {}).get("rope_type", "default")
    return (getattr(cfg, "model_type", "") in SUPPORTED and getattr(cfg, "hidden_act", "") == "silu"
            and not getattr(cfg, "attention_bias", False) and not getattr(cfg, "mlp_bias", False)
            and getattr(cfg, "pretraining_tp", 1) == 1 and "dynamic" not in rope
            and rope != "longrope" and not getattr(cfg, "sliding_window", None))


def linear(weight: torch.Tensor, bias: torch.Tensor | None = None):
    """`x -> x @ weight^T + bias`. On CPU in float32, and in bfloat16 where oneDNN has bf16
    kernels, by oneDNN with the weight packed once per call: at 64 rows it ran these layers'
    shapes 1.2-2.4x faster than `F.linear` (MKL) in float32 and 1.15-1.25x in bfloat16 (equal
    results) side by side here, and a row's result does not depend on the other rows.
    Elsewhere `F.linear`."""
    mkldnn = torch.ops.mkldnn
    if (weight.device.type == "cpu" and _packable(weight.dtype)
            and torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_reorder_linear_weight")):
        packed = mkldnn._reorder_linear_weight(weight, 64)
        return lambda x: mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return lambda x: F.linear(x, weight, bias)


def _packable(dtype: torch.dtype) -> bool:
    """float32, or bfloat16 where torch's own probe says oneDNN has bf16 kernels here."""
    return dtype == torch.float32 or (
        dtype == torch.bfloat16 and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm: weight * x / sqrt(mean(x^2) + eps), normalised in float32. In float32
    one fused `torch.rms_norm`; otherwise the model's own order (upcast, normalise, cast back,
    scale) so low-precision rounding is the model's."""
    if x.dtype == torch.float32:
        return torch.rms_norm(x, weight.shape, weight, eps)
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


class _Layer:
    """One decoder layer's weights, with q|k|v and gate|up concatenated."""

    def __init__(self, layer):
        att, mlp = layer.self_attn, layer.mlp
        self.qkv = linear(torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]))
        self.o = linear(att.o_proj.weight)
        self.gate_up = linear(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]))
        self.down = linear(mlp.down_proj.weight)
        self.norm_in = (layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
        self.norm_post = (layer.post_attention_layernorm.weight,
                          layer.post_attention_layernorm.variance_epsilon)


class LlamaStep:
    """The decode step of a Llama model over a `SlotCache` of at most `max_len` columns:
    `step(cache, tokens (rows,))` -> next logits (rows, V) float32; and the prompts' forward
    that fills it, `prefill(prompts)`."""

    def __init__(self, model, max_len: int):
        cfg, base = model.config, model.model
        self.max_len = max_len
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.embed = base.embed_tokens.weight
        self.layers = [_Layer(lay) for lay in base.layers[:cfg.num_hidden_layers]]
        self.norm = (base.norm.weight, base.norm.variance_epsilon)
        head = model.lm_head
        plain = type(head) is torch.nn.Linear
        self.head = linear(head.weight, head.bias) if plain else head
        positions = torch.arange(max_len, device=self.embed.device)[None]
        cos, sin = base.rotary_emb(self.embed[:1][None], position_ids=positions)   # (1, L, hd)
        half = self.head_dim // 2
        self.cos = cos[0]
        # rotate_half(x) * sin == roll(x, half) * [-sin_1, sin_2]: one roll, no negation of x
        self.sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], -1)
        self.scale = self.head_dim ** -0.5
        # bf16 on a CPU: matmul attention over the cache's window (see the module doc)
        self.window_attention = (self.embed.device.type == "cpu"
                                 and self.embed.dtype == torch.bfloat16)

    def __call__(self, cache, tokens: torch.Tensor) -> torch.Tensor:
        positions, mask = cache.begin_step()                     # (B, 1), (B, 1, 1, span)
        B, H, KV, hd = tokens.shape[0], self.heads, self.kv_heads, self.head_dim
        cos, sin = self.cos[positions[:, 0]][:, None], self.sin[positions[:, 0]][:, None]
        h = F.embedding(tokens, self.embed)                      # (B, D)
        for i, lay in enumerate(self.layers):
            qk, v = self._qk_v(lay, h, cos, sin)                 # (B, H + KV, hd), (B, KV, hd)
            keys, values = cache.update(qk[:, H:, None], v[:, :, None], i)  # (B, KV, span, hd)
            q = qk[:, :H].reshape(B, KV, H // KV, hd)           # heads sharing a KV head
            if self.window_attention:
                a = self._window_attention(q, cache, i)
            else:
                a = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
            h = self._mlp(lay, h + lay.o(a.reshape(B, H * hd)))
        cache.end_step()
        return self.head(rms_norm(h, *self.norm)).float()

    def _window_attention(self, q: torch.Tensor, cache, layer: int) -> torch.Tensor:
        """softmax(q K^T * scale + bias) V over every held column of the cache, q (B, KV,
        H/KV, hd): scores in the weights' dtype, softmax in float32 (transformers' eager
        attention rounds the same way); columns past a row's length get -inf."""
        keys, values = cache.window(layer)                       # (B, KV, C, hd), contiguous
        scores = torch.matmul(q, keys.transpose(-1, -2)).float()  # (B, KV, H/KV, C)
        scores = scores.mul_(self.scale).add_(cache.window_bias())
        return torch.matmul(scores.softmax(-1).to(q.dtype), values)

    def _qk_v(self, lay: _Layer, h: torch.Tensor, cos, sin):
        """One layer's rotated queries|keys (rows, H + KV, hd) and values (rows, KV, hd)
        from the residual stream h (rows, D): one matmul for q, k and v, one rotary pass."""
        H, KV, hd = self.heads, self.kv_heads, self.head_dim
        qkv = lay.qkv(rms_norm(h, *lay.norm_in))                 # (rows, (H + 2 KV) hd)
        qk = qkv[:, :(H + KV) * hd].view(-1, H + KV, hd)
        qk = torch.addcmul(qk * cos, qk.roll(hd // 2, -1), sin)
        return qk, qkv[:, (H + KV) * hd:].view(-1, KV, hd)

    @staticmethod
    def _mlp(lay: _Layer, h: torch.Tensor) -> torch.Tensor:
        """h + the layer's MLP on it: gate and up as one matmul."""
        g, u = lay.gate_up(rms_norm(h, *lay.norm_post)).chunk(2, -1)   # (rows, I) each
        return h + lay.down(F.silu(g) * u)

    def prefill(self, prompts: list[list[int]]) -> tuple[torch.Tensor, list[list[tuple]]]:
        """The forward of prompts of different lengths at once: the next-token logits after
        each prompt (N, V) float32, and each prompt's keys and values per layer, (KV, len, hd)
        each, left-aligned (what `SlotCache.put` takes).

        The prompts' T tokens are packed into one sequence for everything position-wise
        (matmuls, norms, rotary: no padding computed); only attention sees them right-padded
        to the longest, (N, heads, P, hd), where a plain causal mask is exact: a prompt's
        token t attends to columns <= t, all its own, and the padding after a prompt is seen
        only by padding queries, which are dropped. Only each prompt's last position goes
        through the final norm and the LM head."""
        lengths = [len(p) for p in prompts]
        N, P = len(prompts), max(lengths)
        H, hd = self.heads, self.head_dim
        dev = self.embed.device
        slot = torch.cat([torch.arange(n) + b * P for b, n in enumerate(lengths)]).to(dev)  # (T,)
        positions = slot % P
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]          # (T, 1, hd)

        def padded(x):                                    # (T, heads, hd) -> (N, heads, P, hd)
            out = x.new_zeros((N * P, *x.shape[1:])).index_copy_(0, slot, x)
            return out.view(N, P, *x.shape[1:]).transpose(1, 2)

        h = F.embedding(torch.tensor([t for p in prompts for t in p], device=dev), self.embed)
        kv = []
        for lay in self.layers:
            qk, v = self._qk_v(lay, h, cos, sin)                 # (T, H + KV, hd), (T, KV, hd)
            keys, values = padded(qk[:, H:]), padded(v)
            kv.append((keys, values))                             # (N, KV, P, hd) each
            a = F.scaled_dot_product_attention(padded(qk[:, :H]), keys, values,
                                               is_causal=True, enable_gqa=True)  # (N, H, P, hd)
            h = self._mlp(lay, h + lay.o(a.transpose(1, 2).reshape(N * P, H * hd)[slot]))
        last = torch.tensor(lengths, device=dev).cumsum(0) - 1
        logits = self.head(rms_norm(h[last], *self.norm)).float()
        return logits, [[(k[b, :, :n], v[b, :, :n]) for k, v in kv] for b, n in enumerate(lengths)]
