"""Building a `Config` from YAML plus `--set a.b=value` overrides, and writing it back.

Unknown keys, wrong types and impossible values raise `ConfigError` naming the
dotted key; `dump_config` writes the resolved config with every default spelled out."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from alignloop.config.base import ConfigError, require
from alignloop.config.schema import Config

log = logging.getLogger("alignloop.config")

def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if tp is bool:
        return "true/false"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it in the schema's type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if value is None:          # a section left empty in YAML (`train:`): its defaults
            value = {}
        require(isinstance(value, dict), key, f"expected a mapping, got {type(value).__name__}")
        return _build(tp, value, key)
    if origin is Literal:
        require(value in args, key, f"must be one of {list(args)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        require(isinstance(value, (list, tuple)), key, f"expected a list, got {type(value).__name__}")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        require(isinstance(value, dict), key, f"expected a mapping, got {type(value).__name__}")
        return {_coerce(k, args[0], key): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        require(isinstance(value, bool), key, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        require(isinstance(value, int) and not isinstance(value, bool), key,
                 f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT.match(value.strip()):
            value = float(value)     # YAML 1.1 reads `5e-7` (no dot) as a string
        require(isinstance(value, (int, float)) and not isinstance(value, bool), key,
                 f"expected a number, got {value!r}")
        require(math.isfinite(value), key, f"expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        require(isinstance(value, str), key, f"expected a string, got {value!r}")
        return value
    raise ConfigError(key, f"unsupported schema type {tp!r}")  # pragma: no cover


def _build(cls: type, raw: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            full = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(full, f"unknown key; valid keys here: {sorted(names)}")
    kwargs = {}
    for name, value in raw.items():
        full = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], full)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        # Field checks in __post_init__ name only the leaf; add the section path.
        raise ConfigError(f"{prefix}.{e.key}" if prefix else e.key,
                          str(e).split(": ", 1)[1]) from None


RENAMED = {
    "loop.gate.kl_budget": "loop.gate.max_kl_to_base",
    "loop.gate.slice_regression": "loop.gate.max_slice_drop",
    "report.kl_budget": "report.alert_kl_to_reference",
    "report.slice_regression": "report.alert_slice_drop",
    "model.dtype": "model.precision",
}
"""Keys renamed since alignloop 0.1.0 (old -> new): both were called `kl_budget` and
`slice_regression` while meaning different things (a gate on KL to the base vs an alert
on KL to the reference); `model.dtype` became `model.precision` (with `model.device`, one
placement for every stage). Old names are read with a warning; giving both is an error."""

RENAMED_VALUES = {"model.dtype": {"auto": "auto", "float32": "fp32", "bfloat16": "bf16-mixed"}}
"""Values of a renamed key in its old spelling (old key -> {old value: new value}).
`model.dtype: bfloat16` trained float32 weights under bf16 autocast, which is bf16-mixed."""

_NO_SUCCESSOR = {("model.dtype", "float16"): (
    "float16 is no longer offered (fp16 training needs loss scaling, which the trainer does "
    "not do); use model.precision: bf16-mixed on hardware with bf16, or fp32")}


def _renamed_value(old_key: str, value: Any) -> Any:
    """`value` of the renamed key `old_key` in the new key's spelling; ConfigError for an
    old value that has no successor."""
    if old_key not in RENAMED_VALUES:
        return value
    if (old_key, value) in _NO_SUCCESSOR:
        raise ConfigError(old_key, _NO_SUCCESSOR[old_key, value])
    values = RENAMED_VALUES[old_key]
    require(value in values, old_key, f"must be one of {list(values)}, got {value!r}")
    return values[value]

MOVED_VALUES = {"alignloop.demo_judge:heuristic_score": "alignloop.demo.judge:heuristic_score"}
"""Values that name code which moved (python judge functions)."""


def migrate(raw: dict[str, Any]) -> dict[str, Any]:
    """A raw config mapping with renamed keys and moved values brought up to date (a new
    dict), with a warning per renamed key."""
    out = _deepcopy(raw)
    for old, new in RENAMED.items():
        *head, leaf = old.split(".")
        node = out
        for part in head:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        new_leaf = new.rsplit(".", 1)[1]
        if new_leaf in node:
            raise ConfigError(old, f"renamed to {new}; give only the new key")
        node[new_leaf] = _renamed_value(old, node.pop(leaf))
        log.warning("config key '%s' is now called '%s'; please update the config", old, new)
    for judge in (out.get("labeling") or {}).get("judges") or []:
        if isinstance(judge, dict) and judge.get("function") in MOVED_VALUES:
            judge["function"] = MOVED_VALUES[judge["function"]]
    return out


def migrate_flat(flat: dict[str, Any]) -> dict[str, Any]:
    """`migrate` for a flat {dotted key: value} config (what a run directory records)."""
    def moved(v: Any) -> Any:
        if isinstance(v, str):
            return MOVED_VALUES.get(v, v)
        if isinstance(v, list):
            return [moved(x) for x in v]
        return {k: moved(x) for k, x in v.items()} if isinstance(v, dict) else v

    def renamed(k: str, v: Any) -> Any:  # an old value without a successor stays: it differs
        return RENAMED_VALUES.get(k, {}).get(v, v) if isinstance(v, str) else v

    return {RENAMED.get(k, k): moved(renamed(k, v)) for k, v in flat.items()}


_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def yaml_problem(e: yaml.YAMLError) -> str:
    """One line for a YAML error: where it is and what is wrong, without the echoed text."""
    mark = getattr(e, "problem_mark", None)
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {what}" if mark else what


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value); the value is parsed as YAML (`1e-5`, `true`, `[a, b]`)."""
    if "=" not in item:
        raise ConfigError(item, "an override must look like key.sub=value")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(item, "an override needs a key before '='")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(key, f"value {text!r} is not valid YAML ({yaml_problem(e)})") from None
    # YAML 1.1 reads `1e-5` as a string; accept it as a number.
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        value = float(value)
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides to a raw config mapping (a new dict; `raw` is untouched)."""
    out = _deepcopy(raw)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if child is None:           # a section left empty in YAML (`train:`)
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(".".join(path[: i + 1]), "is not a section; cannot set a sub-key")
            node = child
        node[path[-1]] = value
    return out


def _renamed_override(item: str) -> str:
    key, sep, value = item.partition("=")
    if key.strip() not in RENAMED:
        return item
    new = RENAMED[key.strip()]
    log.warning("config key '%s' is now called '%s'; please update the command", key.strip(), new)
    if key.strip() in RENAMED_VALUES:
        value = str(_renamed_value(key.strip(), parse_override(item)[1]))
    return new + sep + value


def _deepcopy(d: Any) -> Any:
    return {k: _deepcopy(v) for k, v in d.items()} if isinstance(d, dict) else d


def _check_overrides(overrides) -> None:
    """Overrides are a list of "key.sub=value" strings (as the CLI's --set gives them): a
    lone string or a dict would otherwise be read character by character or key by key."""
    if isinstance(overrides, str | bytes | dict) or not all(isinstance(o, str) for o in overrides):
        raise TypeError('overrides must be a list of "key.sub=value" strings, e.g. '
                        f'["train.beta=0.2"], got {overrides!r}'[:300])


def config_from_dict(raw: dict[str, Any] | None, overrides: list[str] = ()) -> Config:
    """Build a `Config` from a mapping plus overrides; errors name the key."""
    if raw is not None and not isinstance(raw, dict):
        raise TypeError(f"config_from_dict takes a mapping, got {type(raw).__name__}")
    _check_overrides(overrides)
    raw = apply_overrides(migrate(raw or {}), [_renamed_override(o) for o in overrides])
    return _build(Config, raw)


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the
    last silently: `beta: 0.1` then `beta: 0.5` would train with 0.5 unseen)."""

    def construct_mapping(self, node, deep=False):
        lines: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if isinstance(key, str) and key in lines:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (lines {lines[key]} and {line})",
                    key_node.start_mark)
            lines[key] = line
        return super().construct_mapping(node, deep)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config file (or only defaults when `path` is None) and apply overrides."""
    if path is not None and not isinstance(path, str | os.PathLike):
        hint = "; for a mapping use config_from_dict" if isinstance(path, dict) else ""
        raise TypeError(f"load_config takes the path of a YAML file, got "
                        f"{type(path).__name__}{hint}")
    _check_overrides(overrides)
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeys) or {}
        except yaml.YAMLError as e:
            raise ConfigError("<root>", f"{path} is not valid YAML ({yaml_problem(e)})") from None
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise ConfigError("<root>", f"{path} cannot be read as a UTF-8 text file ({reason})") from None
        if not isinstance(raw, dict):
            raise ConfigError("<root>", f"{path} must hold a mapping at the top level")
    return config_from_dict(raw, overrides)


def to_dict(cfg: Any) -> Any:
    """Plain data (dicts, lists, scalars) with every field, for YAML/JSON."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, tuple):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def dump_config(cfg: Config, path: str | Path, header: str = "") -> Path:
    """Write the resolved config (every default written out) atomically, `header` as a
    comment above it."""
    from alignloop.artifacts import atomic_write_text

    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return atomic_write_text(Path(path), comment + yaml.safe_dump(to_dict(cfg), sort_keys=False))
