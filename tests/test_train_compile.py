"""`train.compile`: the policy's decoder layers compiled by torch.compile for training
(alignloop.training.compile). The compiled run is held against the eager one on the tiny
model (a real inductor compile with the machine's C++ compiler), and a machine that
cannot compile is refused before anything is written."""

import pytest
import torch
from alignloop.config import config_from_dict
from alignloop.config.base import ConfigError
from alignloop.training import compile as compile_mod
from alignloop.training.compile import CompileUnavailable, compile_layers
from torch._dynamo.utils import counters

from tests.test_trainer import TINY, _assert_same_weights, _train, _weights, pairs  # noqa: F401


def _cfg(compiled: bool, lora: bool = False):
    return config_from_dict({
        "model": {"name": TINY, "precision": "fp32", "lora": {"enabled": lora, "r": 4}},
        "train": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-2, "seed": 0,
                  "lr_schedule": "constant", "compile": compiled}})


@pytest.mark.parametrize("lora", [False, True])
def test_a_compiled_run_trains_what_the_eager_one_trains(pairs, tmp_path, monkeypatch, lora):  # noqa: F811
    compiled = []
    original = compile_mod.compile_layers

    def spy(model):
        n = original(model)
        compiled.append([type(m).__name__ for m in model.modules()
                         if getattr(m, "_compiled_call_impl", None) is not None])
        return n

    monkeypatch.setattr("alignloop.training.trainer.compile_layers", spy)
    eager = _train(pairs[:8], tmp_path / "eager", _cfg(False, lora))
    assert compiled == []
    counters.clear()
    fused = _train(pairs[:8], tmp_path / "compiled", _cfg(True, lora))
    assert compiled == [["LlamaDecoderLayer"] * 2]          # the tiny model's two layers
    # one graph serves every layer and every batch length: with LoRA's frozen embedding the
    # first layer's input needs grad too, or it compiles a second graph (18 s of a cold
    # 58 s first step for SmolLM2 on 2 cores)
    assert counters["stats"]["unique_graphs"] == 1
    assert fused.metrics["loss"] == pytest.approx(eager.metrics["loss"], rel=1e-4, abs=1e-5)
    assert fused.metrics["grad_norm"] == pytest.approx(eager.metrics["grad_norm"], rel=1e-3)
    # AdamW moves every weight by about the learning rate (1e-2) a step: a tenth of that
    # bounds fused kernels' rounding (1.1e-4 seen), not a step in another direction
    _assert_same_weights(_weights(fused), _weights(eager), atol=1e-3)


def test_a_machine_without_a_compiler_is_refused_before_anything_is_written(pairs, tmp_path,  # noqa: F811
                                                                             monkeypatch):
    _no_compiler(monkeypatch)
    with pytest.raises(CompileUnavailable, match="'train.compile'.*C\\+\\+ compiler.*g\\+\\+"):
        _train(pairs[:4], tmp_path / "out", _cfg(True))
    assert not (tmp_path / "out").exists()
    compile_mod.check_compile(False, "cpu")            # off: nothing to check
    compile_mod.check_compile(True, "cuda:0")          # inductor's GPU path needs no g++


def test_a_model_without_named_layers_is_refused():
    with pytest.raises(CompileUnavailable, match="no decoder layer.*Sequential"):
        compile_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_compile_must_be_a_boolean():
    with pytest.raises(ConfigError, match="'train.compile': expected true/false or 'auto', got 'maybe'"):
        config_from_dict({"train": {"compile": "maybe"}})
    assert config_from_dict({}).train.compile is False


def _no_compiler(monkeypatch):
    from torch._inductor import cpp_builder

    def missing():
        raise RuntimeError("no working C++ compiler found")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)


@pytest.mark.parametrize("device,precision,compiler,want", [
    ("cpu", "bf16-mixed", True, True),       # where it was measured to pay
    ("cpu", "bf16-mixed", False, False),     # no g++: eager, not refused
    ("cpu", "fp32", True, False),
    ("cuda:0", "bf16-mixed", True, False),
])
def test_auto_compiles_only_bf16_mixed_on_a_cpu_with_a_compiler(monkeypatch, caplog, device,
                                                                precision, compiler, want):
    from alignloop.placement import Placement
    from alignloop.training.compile import resolve_compile

    if not compiler:
        _no_compiler(monkeypatch)
    with caplog.at_level("INFO", logger="alignloop.training"):
        assert resolve_compile("auto", Placement(device, precision)) is want
    assert "train.compile auto: " + ("compiling" if want else "eager") in caplog.text
    assert resolve_compile(False, Placement(device, precision)) is False


def test_auto_without_a_compiler_trains_eager_and_true_is_refused(pairs, tmp_path, monkeypatch):  # noqa: F811
    _no_compiler(monkeypatch)
    cfg = config_from_dict({"model": {"name": TINY, "precision": "bf16-mixed"},
                            "train": {"max_steps": 1, "batch_size": 4, "compile": "auto"}})
    monkeypatch.setattr("alignloop.training.trainer.compile_layers",
                        lambda m: pytest.fail("compiled without a compiler"))
    assert _train(pairs[:4], tmp_path / "auto", cfg).steps == 1
    assert config_from_dict({"train": {"compile": "auto"}}).train.compile == "auto"


def test_whether_a_run_compiles_is_part_of_its_checkpoint_fingerprint(pairs):  # noqa: F811
    from alignloop.models import load_tokenizer
    from alignloop.training.batching import encode_pairs
    from alignloop.training.trainer import run_fingerprint

    encoded, _ = encode_pairs(pairs[:4], load_tokenizer(TINY), max_length=256,
                              max_prompt_length=128, progress=False)
    eager, fused = _cfg(False), _cfg(True)
    a = run_fingerprint(encoded, eager.train, eager.model, "h", "bf16-mixed")
    assert run_fingerprint(encoded, fused.train, fused.model, "h", "bf16-mixed") == a   # the setting
    assert run_fingerprint(encoded, eager.train, eager.model, "h", "bf16-mixed", True) != a  # the fact
