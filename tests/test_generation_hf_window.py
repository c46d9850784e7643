"""Matmul attention over the slot cache's window (issue 15): the `hf` backend's bf16 decode
step on a CPU attends over every held column of a cache that tracks the live rows' needs,
instead of the flash kernel over each row's span.

Checked: the cache keeps every live row's keys/values through growth, shrinkage, row moves
and refills, and masks exactly the columns past each row's length; the window attention
computes what the flash kernel does (float32: within 1e-5, whole sample calls token for
token); in bf16 its logits are as close to a float32 forward as the flash kernel's, on the
tiny model and the real SmolLM2; and which precision takes which path."""

import pytest
import torch
from alignloop.generation import PromptItem, SamplingParams, make_generator
from alignloop.generation.hf_decode import LlamaStep
from alignloop.generation.hf_slots import SlotCache
from alignloop.models import prompt_token_ids

from tests.tiny_hf import spread_generator

PROMPTS = [PromptItem("a", [{"role": "user", "content": "Hello there, how are you today?"}]),
           PromptItem("b", "Write one word:"),
           PromptItem("c", [{"role": "user", "content": "My parcel is late again."}]),
           PromptItem("d", "Tell me about the weather in spring, briefly."),
           PromptItem("e", [{"role": "user", "content": "Thanks!"}])]


def _kv(gen: torch.Generator, layers: int, length: int):
    return [(torch.randn(2, length, 4, generator=gen), torch.randn(2, length, 4, generator=gen))
            for _ in range(layers)]


def _live_rows_equal(a: SlotCache, b: SlotCache) -> None:
    assert a.rows == b.rows and a.lengths[:a.rows] == b.lengths[:b.rows]
    for layer in range(a.n_layers):
        for r in range(a.rows):
            n = a.lengths[r]
            assert torch.equal(a.keys[layer][r, :, :n], b.keys[layer][r, :, :n])
            assert torch.equal(a.values[layer][r, :, :n], b.values[layer][r, :, :n])


def test_window_cache_keeps_live_rows_through_growth_shrinkage_and_moves():
    g = torch.Generator().manual_seed(0)
    layers, chunk = 2, 8
    window, full = SlotCache(layers, 4, 60, "cpu", chunk=chunk), SlotCache(layers, 4, 60, "cpu")
    for row, length in enumerate((5, 30, 3)):
        kv = _kv(g, layers, length)
        for c in (window, full):
            c.put(row, kv, length)
    for c in (window, full):
        c.rows = 3
    assert window.columns == 32 and full.columns == 60        # 30 rounded up to 8s
    sizes = set()
    for step in range(24):
        if step == 6:            # the long row ends: the last row moves into it
            for c in (window, full):
                c.move(2, 1)
                c.rows = 2
        if step == 12:           # a refill with a longer prompt
            kv = _kv(g, layers, 40)
            for c in (window, full):
                c.put(2, kv, 40)
                c.rows = 3
        for c in (window, full):
            c.begin_step()
        span = max(window.lengths[:window.rows]) + 1
        assert span <= window.columns < span + 2 * chunk and window.columns % chunk == 0
        sizes.add(window.columns)
        new = [(torch.randn(window.rows, 2, 1, 4, generator=g),
                torch.randn(window.rows, 2, 1, 4, generator=g)) for _ in range(layers)]
        for layer, (k, v) in enumerate(new):
            for c in (window, full):
                c.update(k, v, layer)
        keys, values = window.window(1)
        assert keys.is_contiguous() and keys.shape == (window.rows, 2, window.columns, 4)
        bias = window.window_bias()[:, 0, 0]                   # (rows, columns)
        for r in range(window.rows):
            attended = torch.arange(window.columns) <= window.lengths[r]
            assert torch.equal(bias[r] == 0, attended) and bool(torch.isinf(bias[r][~attended]).all())
        for c in (window, full):
            c.end_step()
        _live_rows_equal(window, full)
    assert min(sizes) == 16 and max(sizes) == 56      # shrank after the move, grew on refill


def test_the_window_cache_refuses_to_outgrow_max_len():
    c = SlotCache(1, 1, 10, "cpu", chunk=8)
    c.put(0, _kv(torch.Generator().manual_seed(1), 1, 10), 10)
    c.rows = 1
    assert c.columns == 10                                     # capped at max_len, not 16
    with pytest.raises(RuntimeError, match="overflow"):
        c.begin_step()


def _ending(gen, params):
    """`gen` whose samples under `params` end at different steps (tokens two of them pick
    become end tokens), so rows are refilled mid-call and the window grows and shrinks."""
    import copy

    free = gen.sample(PROMPTS, params)
    other = copy.copy(gen)
    other.max_batch_sequences = 4
    other.stop_ids = gen.stop_ids | {free[0].token_ids[2], free[6].token_ids[7]}
    return other


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_window_attention_computes_what_the_flash_kernel_does_in_float32(temperature):
    g = spread_generator(norms=True)
    assert not g._llama_step(64).window_attention              # float32 keeps the flash kernel
    p = SamplingParams(n=2, temperature=temperature, max_new_tokens=12, seed=5)
    g = _ending(g, p)
    flash = g.sample(PROMPTS, p)
    g._llama_step(g.context).window_attention = True           # the kept step, and its cache
    window = g.sample(PROMPTS, p)
    assert len({c.token_ids for c in window}) > 4 and len({len(c.token_ids) for c in window}) > 2
    assert [c.token_ids for c in window] == [c.token_ids for c in flash]
    for a, b in zip(window, flash, strict=True):
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-5)


def _step_errors(g32, g16, steps: int) -> dict[str, float]:
    """Largest |logit - float32 logit| over `steps` decode steps of the same token stream,
    for the bf16 step with the flash kernel and with the window attention."""
    enc = [prompt_token_ids(g32.tokenizer, p.prompt) for p in PROMPTS]
    new = [(i, k) for i in range(len(PROMPTS)) for k in range(2)]
    runs = {}
    with torch.inference_mode():
        for name, g in (("fp32", g32), ("flash", g16), ("window", g16)):
            cache = SlotCache(g.model.config.num_hidden_layers, len(new),
                              max(map(len, enc)) + steps + 32,       # room left at the end
                              "cpu", chunk=8 if name == "window" else None)
            step = LlamaStep(g.model, cache.max_len)
            step.window_attention = name == "window"
            runs[name] = (step, cache, g._admit(cache, [enc[i] for i, _ in new], step.prefill))
        tokens = runs["fp32"][2].argmax(-1)
        err = {"flash": 0.0, "window": 0.0}
        for _ in range(steps):
            out = {name: step(cache, tokens) for name, (step, cache, _) in runs.items()}
            for name in err:
                err[name] = max(err[name], (out[name] - out["fp32"]).abs().max().item())
            tokens = out["fp32"].argmax(-1)
    assert runs["window"][1].columns < runs["flash"][1].columns   # the window did track the rows
    return err


@pytest.mark.parametrize("model", ["tiny", "smollm2"])
def test_bf16_window_attention_is_as_close_to_float32_as_the_flash_kernel(model):
    if model == "tiny":
        g32 = spread_generator(norms=True)
        g16 = make_generator("hf", "builtin:tiny-random", progress=False, dtype=torch.bfloat16)
        g16.model.load_state_dict(g32.model.state_dict())
    else:
        ref = "builtin:smollm2-135m-instruct"
        g32 = make_generator("hf", ref, progress=False)
        g16 = make_generator("hf", ref, progress=False, dtype=torch.bfloat16)
    assert LlamaStep(g16.model, 8).window_attention                # bf16 on a CPU takes it
    err = _step_errors(g32, g16, steps=12)
    assert 0 < err["window"] <= 1.5 * err["flash"] + 0.02, err


def test_only_bf16_on_a_cpu_takes_the_window():
    """float32 keeps the flash kernel (no faster by matmul), and so does float16, whose
    scores could overflow to inf where a -inf mask would then make NaN."""
    for dtype, window in ((torch.float32, False), (torch.float16, False), (torch.bfloat16, True)):
        g = make_generator("hf", "builtin:tiny-random", progress=False, dtype=dtype)
        assert LlamaStep(g.model, 8).window_attention is window, dtype
