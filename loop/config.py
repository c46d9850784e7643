"""The configuration schema: frozen dataclasses, the only place defaults live.

A run is a YAML file plus `--set a.b=value` overrides. `load_config` builds the
dataclasses with type checks; unknown keys, wrong types and impossible values
raise `ConfigError` naming the dotted key. `dump_config` writes the resolved
config with every default spelled out.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from alignloop.config_base import ConfigError, _require  # noqa: F401 (re-exported)
from alignloop.config_labeling import LabelingConfig
from alignloop.config_loop import LoopConfig
from alignloop.config_report import ReportConfig

# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class LoraConfig:
    enabled: bool = False
    """Train LoRA adapters (peft) instead of all weights; a merged copy is saved for generation."""
    r: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA input; 0 keeps training deterministic."""
    target_modules: tuple[str, ...] = (
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    )
    """Names of the linear layers that get adapters."""

    def __post_init__(self) -> None:
        _require(self.r >= 1, "r", "must be >= 1")
        _require(self.alpha > 0, "alpha", "must be > 0")
        _require(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        _require(len(self.target_modules) > 0, "target_modules", "must name at least one module")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "builtin:smollm2-135m-instruct"
    """Starting policy: a Hugging Face id, a local directory, or a built-in
    (`builtin:smollm2-135m-instruct`, `builtin:tiny-random`)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights and compute dtype. `auto`: float32 on CPU (bf16 is ~500x slower on
    CPUs without bf16 units), bfloat16 on a GPU that supports it."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Parameter-efficient training; see LoraConfig."""


@dataclass(frozen=True)
class ReferenceConfig:
    model: str = ""
    """Reference model for the DPO log-ratio. Empty: the starting policy (`model.name`).
    In a loop this is round 0's reference; later rounds follow `mode`."""
    mode: Literal["previous", "base", "ema"] = "previous"
    """Reference of round k >= 1: round k-1's policy (`previous`), always the starting model
    (`base`), or an exponential moving average of the policies so far (`ema`)."""
    ema_weight: float = 0.5
    """`ema`: reference_k = ema_weight * reference_(k-1) + (1 - ema_weight) * policy_(k-1)."""

    def __post_init__(self) -> None:
        _require(0 <= self.ema_weight < 1, "ema_weight", "must be in [0, 1)")


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DataConfig:
    path: str = ""
    """Pairs source: `builtin:demo-pairs` (bundled), a .jsonl/.json or .parquet file, or `hf:NAME` for any
    `datasets.load_dataset` source (a hub id, or a local dataset directory)."""
    format: Literal["auto", "plain", "conversational", "hh"] = "auto"
    """Row format: `plain` prompt/chosen/rejected strings; `conversational`
    lists of {role, content} messages (TRL's format); `hh` Anthropic-HH
    transcripts in `chosen`/`rejected` with no prompt column; `auto` detects per row."""
    columns: dict[str, str] = field(default_factory=dict)
    """Column mapping {our_field: source_column}, e.g. {prompt: question}. Our
    fields: prompt, chosen, rejected, p_chosen, weight, pair_id, slice."""
    split: str = "train"
    """Split for `hf:` sources."""
    subset: str = ""
    """Dataset configuration name for `hf:` sources (empty: the default)."""
    limit: int = 0
    """Use only the first N valid pairs (0: all)."""
    on_invalid: Literal["error", "skip"] = "error"
    """Invalid rows: `error` stops naming file, row and reason; `skip` drops
    them and logs how many were dropped and why."""
    max_length: int = 512
    """Most tokens of prompt + one response after prompt truncation."""
    max_prompt_length: int = 384
    """Prompts longer than this (in tokens) are handled by `truncation`."""
    truncation: Literal["keep_end", "error"] = "keep_end"
    """Long prompts: `keep_end` drops their first tokens (the end of a dialogue
    matters most); `error` treats the row as invalid. Responses are never cut."""

    def __post_init__(self) -> None:
        _require(self.limit >= 0, "limit", "must be >= 0")
        _require(self.max_length >= 2, "max_length", "must be >= 2")
        _require(self.max_prompt_length >= 1, "max_prompt_length", "must be >= 1")
        _require(self.max_prompt_length < self.max_length, "max_prompt_length",
                 f"must be < data.max_length ({self.max_length})")
        known = {"prompt", "chosen", "rejected", "p_chosen", "weight", "pair_id", "slice"}
        for ours in self.columns:
            _require(ours in known, f"columns.{ours}", f"unknown field; expected one of {sorted(known)}")


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainConfig:
    loss: Literal["sigmoid", "ipo", "hinge", "soft", "rdpo"] = "sigmoid"
    """Preference objective (see alignloop.training.losses): `sigmoid` DPO,
    `ipo`, `hinge` (SLiC), `soft` (cross-entropy against p_chosen), `rdpo`
    (robust DPO under label flips)."""
    beta: float = 0.1
    """KL strength: the implicit reward is beta * log(pi / pi_ref)."""
    flip_rate: float = 0.1
    """`rdpo`: assumed label flip rate epsilon in [0, 0.5)."""
    flip_rate_per_pair: bool = False
    """`rdpo`: use 1 - p_chosen of each pair as its flip rate instead of `flip_rate`."""
    rpo_alpha: float = 0.0
    """Weight of an added NLL term on the chosen response (RPO); 0 disables it."""
    learning_rate: float = 5e-6
    """Peak learning rate (AdamW)."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "linear"
    """Decay after warmup: constant, linear to 0, or cosine to 0."""
    warmup_steps: int = 0
    """Linear warmup steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables clipping)."""
    batch_size: int = 8
    """Pairs per forward pass per process (micro-batch)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step. Pairs per step = batch_size * grad_accum * processes."""
    epochs: int = 1
    """Passes over the pairs."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0: run all epochs)."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass: a fraction of
    the activation memory for about a third more compute. Off: speed first."""
    group_by_length: bool = True
    """Put pairs of similar length in the same step to cut padding (order stays seeded)."""
    seed: int = 0
    """Seed for data order and initialisation of new weights (LoRA)."""
    log_every: int = 1
    """Write a train_log.jsonl line every N optimizer steps."""
    save_every: int = 0
    """Save a resumable checkpoint every N optimizer steps (0: never mid-run)."""

    def __post_init__(self) -> None:
        _require(self.beta > 0, "beta", "must be > 0")
        _require(0.0 <= self.flip_rate < 0.5, "flip_rate", "must be in [0, 0.5)")
        _require(self.rpo_alpha >= 0, "rpo_alpha", "must be >= 0")
        _require(self.learning_rate > 0, "learning_rate", "must be > 0")
        _require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        _require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        _require(self.max_grad_norm >= 0, "max_grad_norm", "must be >= 0")
        _require(self.batch_size >= 1, "batch_size", "must be >= 1")
        _require(self.grad_accum >= 1, "grad_accum", "must be >= 1")
        _require(self.epochs >= 1, "epochs", "must be >= 1")
        _require(self.max_steps >= 0, "max_steps", "must be >= 0")
        _require(self.log_every >= 1, "log_every", "must be >= 1")
        _require(self.save_every >= 0, "save_every", "must be >= 0")


# --------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class GenerationConfig:
    backend: Literal["hf", "vllm", "openai"] = "hf"
    """Backend: `hf` (transformers, CPU or GPU), `vllm` (offline engine in a child
    process; GPU), `openai` (an OpenAI-compatible server such as `vllm serve`)."""
    n: int = 4
    """Samples per prompt."""
    temperature: float = 1.0
    """Softmax temperature (0: greedy)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1: off)."""
    top_k: int = 0
    """Keep only the k most likely tokens (0: off)."""
    max_new_tokens: int = 64
    """Most new tokens per sample."""
    stop: tuple[str, ...] = ()
    """Strings that end a sample."""
    seed: int = 0
    """Base seed; each sample's seed derives from it, its prompt id and its index."""
    max_batch_sequences: int = 64
    """`hf`: most sequences decoded together (prompts per batch = this // n)."""
    truncation: Literal["error", "keep_end"] = "error"
    """Prompts that leave no room for max_new_tokens in the context: error, or keep their end."""
    tensor_parallel_size: int = 1
    """`vllm`: GPUs per engine (tensor parallel)."""
    gpu_memory_utilization: float = 0.85
    """`vllm`: share of GPU memory the engine may take."""
    base_url: str = ""
    """`openai`: the server's API root, e.g. http://127.0.0.1:8000/v1."""
    served_model: str = ""
    """`openai`: the model name the server knows (empty: model.name)."""
    concurrency: int = 8
    """`openai`: requests in flight."""
    timeout_s: float = 60.0
    """`openai`: seconds per request before it counts as failed."""
    retries: int = 4
    """`openai`: retries (exponential backoff) after a 5xx, connection error or timeout."""

    def __post_init__(self) -> None:
        _require(self.n >= 1, "n", "must be >= 1")
        _require(self.temperature >= 0, "temperature", "must be >= 0")
        _require(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        _require(self.top_k >= 0, "top_k", "must be >= 0")
        _require(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")
        _require(self.max_batch_sequences >= 1, "max_batch_sequences", "must be >= 1")
        _require(self.tensor_parallel_size >= 1, "tensor_parallel_size", "must be >= 1")
        _require(0 < self.gpu_memory_utilization <= 1, "gpu_memory_utilization", "must be in (0, 1]")
        _require(self.concurrency >= 1, "concurrency", "must be >= 1")
        _require(self.timeout_s > 0, "timeout_s", "must be > 0")
        _require(self.retries >= 0, "retries", "must be >= 0")
        _require(self.backend != "openai" or bool(self.base_url), "base_url",
                 "the openai backend needs the server's URL")


# --------------------------------------------------------------------------- top level


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The starting policy."""
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    """The DPO reference."""
    data: DataConfig = field(default_factory=DataConfig)
    """Static preference pairs and tokenisation limits."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The DPO trainer."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    """Sampling candidates from a policy."""
    labeling: LabelingConfig = field(default_factory=LabelingConfig)
    """Judges, pair selection, routing to people, soft labels."""
    loop: LoopConfig = field(default_factory=LoopConfig)
    """Rounds, prompts, failure slices, replay, evaluation, gates."""
    report: ReportConfig = field(default_factory=ReportConfig)
    """Drift reports: alert thresholds, bootstrap size, examples shown."""


# --------------------------------------------------------------------------- building


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it in the schema's type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        _require(isinstance(value, dict), key, f"expected a mapping, got {type(value).__name__}")
        return _build(tp, value, key)
    if origin is Literal:
        _require(value in args, key, f"must be one of {list(args)}, got {value!r}")
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
        _require(isinstance(value, (list, tuple)), key, f"expected a list, got {type(value).__name__}")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        _require(isinstance(value, dict), key, f"expected a mapping, got {type(value).__name__}")
        return {_coerce(k, args[0], key): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        _require(isinstance(value, bool), key, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        _require(isinstance(value, int) and not isinstance(value, bool), key,
                 f"expected an integer, got {value!r}")
        return value
    if tp is float:
        _require(isinstance(value, (int, float)) and not isinstance(value, bool), key,
                 f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        _require(isinstance(value, str), key, f"expected a string, got {value!r}")
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


_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value); the value is parsed as YAML (`1e-5`, `true`, `[a, b]`)."""
    if "=" not in item:
        raise ConfigError(item, "an override must look like key.sub=value")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(item, "an override needs a key before '='")
    value = yaml.safe_load(text) if text.strip() else ""
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
            if not isinstance(child, dict):
                raise ConfigError(".".join(path[: i + 1]), "is not a section; cannot set a sub-key")
            node = child
        node[path[-1]] = value
    return out


def _deepcopy(d: Any) -> Any:
    return {k: _deepcopy(v) for k, v in d.items()} if isinstance(d, dict) else d


def config_from_dict(raw: dict[str, Any] | None, overrides: list[str] = ()) -> Config:
    """Build a `Config` from a mapping plus overrides; errors name the key."""
    raw = apply_overrides(raw or {}, list(overrides))
    return _build(Config, raw)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config file (or only defaults when `path` is None) and apply overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"config file not found: {path}")
        raw = yaml.safe_load(path.read_text()) or {}
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


def dump_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config (every default written out) atomically."""
    from alignloop.artifacts import atomic_write_text

    return atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))


def field_docs(cls: type = Config) -> dict[str, str]:
    """{dotted key: docstring} for every field, read from the attribute docstrings above."""
    import ast
    import inspect

    out: dict[str, str] = {}

    def visit(c: type, prefix: str) -> None:
        tree = ast.parse(inspect.getsource(c))
        body = tree.body[0].body  # type: ignore[attr-defined]
        hints = typing.get_type_hints(c)
        for node, nxt in zip(body, body[1:] + [None], strict=True):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                name = node.target.id
                doc = ""
                if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                    doc = " ".join(str(nxt.value.value).split())
                out[prefix + name] = doc
                if dataclasses.is_dataclass(hints[name]):
                    visit(hints[name], f"{prefix}{name}.")
                args = typing.get_args(hints[name])
                if typing.get_origin(hints[name]) is tuple and args and dataclasses.is_dataclass(args[0]):
                    visit(args[0], f"{prefix}{name}[].")  # a list of sections, e.g. judges

    visit(cls, "")
    return out
