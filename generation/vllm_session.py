"""One vLLM engine per run: `with engine_session():` makes every `vllm` generator built
inside share one engine process, which reloads each policy's weights in place instead of
starting again (20-70 s on CPU), or serves a LoRA policy as an adapter on the weights it
holds (`alignloop.generation.vllm_lora`). The loop opens one around its rounds
(`alignloop.rounds.loop`); the engine's process itself is `alignloop.generation.vllm`'s.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

# Config keys that differ between checkpoints of one model without changing its shapes.
_VOLATILE_KEYS = frozenset({"_name_or_path", "torch_dtype", "dtype", "transformers_version",
                            "architectures_version", "use_cache"})
# Engine settings for LoRA adapters: an engine with them serves plain requests too.
_LORA_KEYS = ("enable_lora", "max_lora_rank", "max_loras")


def compatibility_key(model_path: str, engine: dict[str, Any], env: dict[str, str]) -> str:
    """What an engine must share with `model_path` to serve it by a weight reload: the
    engine settings and the model's config without its name and dtype (same architecture,
    shapes and vocabulary: the checkpoints of one run)."""
    from transformers import AutoConfig

    config = {k: v for k, v in AutoConfig.from_pretrained(model_path).to_dict().items()
              if k not in _VOLATILE_KEYS}
    engine = {k: v for k, v in engine.items() if k not in _LORA_KEYS}
    return json.dumps([config, engine, env], sort_keys=True, default=str)


class EngineSession:
    """Keeps one vLLM engine alive across the `vllm` generators made while it is open (every
    generate and eval stage of every round of a run): a generator whose model fits the
    engine (`compatibility_key`) reloads its weights into it instead of starting another;
    one that does not replaces it (one engine at a time: its memory stays bounded). A
    generator that serves an adapter needs an engine with LoRA enabled and a large enough
    `max_lora_rank`: the first one restarts an engine without (once per run; it then serves
    full weights as well). An engine that died or was stopped (a call failed or was
    interrupted: `alignloop.generation.vllm_process`) is replaced by a new one at the next
    call. Closed, with its engine, when the `with engine_session():` block ends, by
    exception or Ctrl-C too; if the run is killed, the engine's process group is killed
    with it (`vllm_process`)."""

    def __init__(self) -> None:
        self.key = ""
        self.process = None   # an `alignloop.generation.vllm.EngineProcess`
        self.starts = 0
        self.lora_rank = 0    # the engine's max_lora_rank; 0: LoRA not enabled

    def engine_for(self, model_path: str, engine: dict[str, Any], env: dict[str, str],
                   progress: bool):
        """The session's engine, holding `model_path`'s weights: reloaded, or started."""
        from alignloop.generation import vllm as V

        key = compatibility_key(model_path, engine, env)
        rank = engine.get("max_lora_rank", 0)
        if self.process is not None and (key != self.key or rank > self.lora_rank
                                         or not self.process.is_alive()):
            self.close()
        if self.process is None:
            self.process = V.EngineProcess(model_path, engine, env, progress)
            self.key, self.starts, self.lora_rank = key, self.starts + 1, rank
        else:
            self.process.load(model_path)
        return self.process

    def close(self) -> None:
        if self.process is not None:
            process, self.process, self.key, self.lora_rank = self.process, None, "", 0
            process.close()


_SESSION: EngineSession | None = None


def current() -> EngineSession | None:
    """The open session, or None."""
    return _SESSION


@contextlib.contextmanager
def engine_session():
    """`with engine_session() as session:` every `vllm` generator built inside shares one
    engine (`EngineSession`); nested blocks share the outer one."""
    global _SESSION
    if _SESSION is not None:
        yield _SESSION
        return
    _SESSION = EngineSession()
    try:
        yield _SESSION
    finally:
        session, _SESSION = _SESSION, None
        session.close()
