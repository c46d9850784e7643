"""The `vllm` backend: our request building and output mapping on CPU; a real engine only on a GPU."""

import sys
from types import SimpleNamespace

import pytest
import torch
from alignloop.generation import GenerationError, PromptItem, SamplingParams, make_generator
from alignloop.generation.vllm import build_requests, completion_from_output

TINY = "builtin:tiny-random"
ITEMS = [PromptItem("a", [{"role": "user", "content": "Hi"}]), PromptItem("b", "Plain prompt")]


def test_requests_one_per_sample_with_own_seed():
    params = SamplingParams(n=3, temperature=0.7, top_p=0.9, top_k=0, max_new_tokens=16,
                            stop=("\n\n",), seed=4)
    reqs = build_requests(ITEMS, [[1, 2, 3], [4, 5]], params)
    assert [(r["prompt_id"], r["index"]) for r in reqs] == [("a", 0), ("a", 1), ("a", 2),
                                                           ("b", 0), ("b", 1), ("b", 2)]
    assert reqs[0]["prompt_token_ids"] == [1, 2, 3]
    s = reqs[0]["sampling"]
    assert s == {**s, "n": 1, "temperature": 0.7, "top_p": 0.9, "top_k": -1, "max_tokens": 16,
                 "stop": ["\n\n"], "logprobs": 0}
    seeds = [r["sampling"]["seed"] for r in reqs]
    assert len(set(seeds)) == 6
    # the same (seed, prompt, index) gives the same sample seed as the hf backend uses
    from alignloop.generation import sample_seed
    assert seeds[1] == sample_seed(4, "a", 1)


def _output(tokens, logps, reason="stop", text="hello"):
    steps = [{t: SimpleNamespace(logprob=lp, rank=1, decoded_token="x")} for t, lp in zip(tokens, logps, strict=True)]
    return SimpleNamespace(index=0, text=text, token_ids=tokens, cumulative_logprob=sum(logps),
                           logprobs=steps, finish_reason=reason)


def test_output_mapping():
    req = build_requests(ITEMS[:1], [[1, 2]], SamplingParams(n=1, seed=1))[0]
    c = completion_from_output(req, _output([7, 8, 9], [-0.5, -1.0, -2.0], reason="length"))
    assert c.prompt_id == "a" and c.sample_index == 0 and c.token_ids == (7, 8, 9)
    assert c.token_logprobs == (-0.5, -1.0, -2.0) and c.logprob_sum == pytest.approx(-3.5)
    assert c.finish_reason == "length" and c.seed == req["sampling"]["seed"]
    assert completion_from_output(req, _output([7], [-0.1])).finish_reason == "stop"
    missing = SimpleNamespace(**{**vars(_output([7], [-0.1])), "logprobs": None})
    with pytest.raises(GenerationError, match="log-probs"):
        completion_from_output(req, missing)


def test_backend_builds_without_importing_vllm():
    gen = make_generator("vllm", TINY)
    assert gen.name == "vllm" and gen.engine["enable_prefix_caching"] is True
    assert len(gen.encode(ITEMS, SamplingParams(n=1))) == 2
    assert "vllm" not in sys.modules
    with pytest.raises(GenerationError, match="no prompts"):
        gen.sample([], SamplingParams())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="vLLM needs a CUDA GPU")
def test_real_vllm_greedy_parity_with_hf():
    pytest.importorskip("vllm")
    params = SamplingParams(n=1, temperature=0, max_new_tokens=16)
    ours = make_generator("hf", "builtin:smollm2-135m-instruct", device="cuda", progress=False)
    theirs = make_generator("vllm", "builtin:smollm2-135m-instruct", dtype="float32")
    a, b = ours.sample(ITEMS, params), theirs.sample(ITEMS, params)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    for x, y in zip(a, b, strict=True):
        assert list(x.token_logprobs) == pytest.approx(list(y.token_logprobs), abs=1e-2)
