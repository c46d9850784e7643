"""The config schema: errors name the key, overrides parse, the resolved config round-trips."""

import sys
from pathlib import Path

import pytest
import yaml
from alignloop.config import Config, ConfigError, dump_config, field_docs, load_config, to_dict

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_bundled_configs_load(name):
    cfg = load_config(ROOT / "configs" / name)
    assert isinstance(cfg, Config)


def test_overrides_parse_types():
    cfg = load_config(ROOT / "configs/tiny.yaml", ["train.beta=0.25", "train.learning_rate=1e-5",
                                                    "model.lora.enabled=true",
                                                    "model.lora.target_modules=[q_proj, v_proj]",
                                                    "data.columns={prompt: question}"])
    assert cfg.train.beta == 0.25
    assert cfg.train.learning_rate == 1e-5
    assert cfg.model.lora.enabled is True
    assert cfg.model.lora.target_modules == ("q_proj", "v_proj")
    assert cfg.data.columns == {"prompt": "question"}
    assert cfg.model.name == "builtin:tiny-random"  # from the file, untouched


@pytest.mark.parametrize("override, key, fragment", [
    ("train.bogus=1", "train.bogus", "unknown key"),
    ("bogus.x=1", "bogus", "unknown key"),
    ("train.beta=-1", "train.beta", "> 0"),
    ("train.batch_size=two", "train.batch_size", "integer"),
    ("train.batch_size=2.5", "train.batch_size", "integer"),
    ("train.loss=dpo", "train.loss", "one of"),
    ("model.lora.enabled=maybe", "model.lora.enabled", "true/false"),
    ("model.lora.r=0", "model.lora.r", ">= 1"),
    ("data.max_prompt_length=600", "data.max_prompt_length", "max_length"),
    ("data.columns={answer: x}", "data.columns.answer", "unknown field"),
    ("train.flip_rate=0.5", "train.flip_rate", "[0, 0.5)"),
    ("train=3", "train", "mapping"),
])
def test_errors_name_the_key(override, key, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert err.value.key == key
    assert fragment in str(err.value)
    assert f"'{key}'" in str(err.value)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["train.beta"])


def test_yaml_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 0\n")
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("content, fragment", [
    (b"model: [1, 2\n", r"broken.yaml is not valid YAML \(line 2, column 1: expected ','"),
    (b"train:\n  beta: 0.1\n\tseed: 1\n", r"broken.yaml is not valid YAML \(line 3, column 1"),
    (b"\xff\xfe\x00", r"broken.yaml cannot be read as a UTF-8 text file"),
])
def test_a_config_file_that_is_not_yaml_is_refused_by_file_and_line(tmp_path, content, fragment):
    path = tmp_path / "broken.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=fragment):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot be read as a UTF-8 text file"):
        load_config(tmp_path)                         # a directory


def test_an_override_value_that_is_not_yaml_names_its_key():
    with pytest.raises(ConfigError, match=r"'train.beta': value '\[1,' is not valid YAML \(line 1"):
        load_config(None, ["train.beta=[1,"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(ROOT / "configs/demo.yaml", ["train.beta=0.3"])
    path = dump_config(cfg, tmp_path / "config.yaml")
    written = yaml.safe_load(path.read_text())
    assert written["train"]["warmup_steps"] == cfg.train.warmup_steps   # defaults written out
    assert "max_grad_norm" in written["train"]
    assert load_config(path) == cfg


def test_every_field_is_documented():
    docs = field_docs()
    flat = set()

    def walk(d, prefix=""):
        for k, v in d.items():
            flat.add(prefix + k)
            if isinstance(v, dict) and k != "columns":
                walk(v, prefix + k + ".")

    walk(to_dict(Config()))
    assert flat <= set(docs)
    missing = [k for k in flat if not docs[k]]
    assert not missing, f"fields without documentation: {missing}"


def test_import_alignloop_does_not_import_torch():
    import subprocess

    code = "import alignloop, alignloop.config, alignloop.cli, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_renamed_keys_are_read_with_a_warning_and_both_names_are_refused(caplog):
    from alignloop.config import config_from_dict

    cfg = config_from_dict({"loop": {"gate": {"kl_budget": 3.0}}, "report": {"kl_budget": 1.0}},
                           ["loop.gate.slice_regression=0.2"])
    assert (cfg.loop.gate.max_kl_to_base, cfg.loop.gate.max_slice_drop) == (3.0, 0.2)
    assert cfg.report.alert_kl_to_reference == 1.0
    assert "'loop.gate.kl_budget' is now called 'loop.gate.max_kl_to_base'" in caplog.text
    with pytest.raises(ConfigError, match="loop.gate.kl_budget.*give only the new key"):
        config_from_dict({"loop": {"gate": {"kl_budget": 3.0, "max_kl_to_base": 2.0}}})


@pytest.mark.parametrize("old, new", [("auto", "auto"), ("float32", "fp32"),
                                      ("bfloat16", "bf16-mixed")])
def test_model_dtype_is_read_as_model_precision(old, new, caplog):
    from alignloop.config import config_from_dict

    assert config_from_dict({"model": {"dtype": old}}).model.precision == new
    assert config_from_dict({}, [f"model.dtype={old}"]).model.precision == new
    assert "'model.dtype' is now called 'model.precision'" in caplog.text


def test_model_dtype_float16_and_bad_devices_are_refused():
    from alignloop.config import config_from_dict

    for raw, sets in (({"model": {"dtype": "float16"}}, []), ({}, ["model.dtype=float16"])):
        with pytest.raises(ConfigError, match="'model.dtype': float16 is no longer offered.*bf16-mixed"):
            config_from_dict(raw, sets)
    with pytest.raises(ConfigError, match="give only the new key"):
        config_from_dict({"model": {"dtype": "float32", "precision": "fp32"}})
    for device in ("gpu", "cuda:", "cuda:x", "CPU"):
        with pytest.raises(ConfigError, match="'model.device': must be auto, cpu, cuda or cuda:N"):
            config_from_dict({"model": {"device": device}})
    assert config_from_dict({"model": {"device": "cuda:3"}}).model.device == "cuda:3"


def test_a_key_given_twice_is_refused_and_an_empty_section_is_its_defaults(tmp_path):
    from alignloop.config import ConfigError, TrainConfig, load_config

    dup = tmp_path / "dup.yaml"
    dup.write_text("train:\n  beta: 0.1\n  beta: 0.5\n")
    with pytest.raises(ConfigError, match=r"key 'beta' is given twice \(lines 2 and 3\)"):
        load_config(dup)
    empty = tmp_path / "empty.yaml"
    empty.write_text("train:\nmodel:\n  name: builtin:tiny-random\n")
    assert load_config(empty).train == TrainConfig()
    assert load_config(empty, ["train.max_steps=1"]).train.max_steps == 1
