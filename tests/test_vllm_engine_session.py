"""One vLLM engine per run (`generation.vllm.engine_session`): the session's choices (reload
or restart) on their own; the backend and dtype the loop records per round and `status`
shows; and (marker `vllm`) the real engine on SmolLM2 (the test run's shared engine,
tests/vllm_engine.py): a reload changes the samples and reloading the base gives them back
byte for byte, and the engine exits cleanly on close; slow: samples after a reload are
byte-identical to a fresh engine's on those weights, and a killed parent takes no engine
with it."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from alignloop.config import GenerationConfig, load_config
from alignloop.generation import (
    PromptItem,
    SamplingParams,
    backend_record,
    generator_for,
    make_generator,
    sampling_dtype,
)
from alignloop.generation import vllm as V
from alignloop.generation import vllm_session as S
from alignloop.placement import Placement
from alignloop.rounds import Loop
from alignloop.rounds.loop import stage_names
from alignloop.rounds.state import status_table

from tests.vllm_engine import ENGINE, serving

SMOL = "builtin:smollm2-135m-instruct"
ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [PromptItem("hi", [{"role": "user", "content": "Hi"}]),
           PromptItem("haiku", "Write a haiku about the sea."),
           PromptItem("sum", "What is 2+2?")]
SEEDED = SamplingParams(n=2, temperature=1.0, max_new_tokens=20, seed=3)


# --------------------------------------------------------------------------- dtype and state


@pytest.mark.parametrize("precision,dtype,want", [
    ("fp32", "auto", "float32"), ("bf16-mixed", "auto", "bfloat16"), ("bf16", "auto", "bfloat16"),
    ("bf16-mixed", "float32", "float32"), ("fp32", "bfloat16", "bfloat16")])
def test_vllm_dtype_follows_placement_unless_set(precision, dtype, want):
    cfg = GenerationConfig(backend="vllm", dtype=dtype)
    placement = Placement("cpu", precision)
    assert sampling_dtype("vllm", cfg, placement) == want
    gen = generator_for(cfg, SMOL, placement=placement)          # builds, starts nothing
    assert gen.name == "vllm" and gen.engine["dtype"] == want
    # hf samples in the placement's dtype whatever generation.dtype says
    assert sampling_dtype("hf", cfg, placement) == ("float32" if precision == "fp32" else "bfloat16")


def test_backend_record_says_what_auto_chose(monkeypatch):
    monkeypatch.setattr(V, "installed_build", lambda: None)
    rec = backend_record(GenerationConfig(), SMOL, Placement("cpu", "fp32"))
    assert rec == {"requested": "auto", "backend": "hf", "dtype": "float32"}
    monkeypatch.setattr(V, "installed_build", lambda: "cpu")
    rec = backend_record(GenerationConfig(), SMOL, Placement("cpu", "bf16-mixed"))
    assert rec == {"requested": "auto", "backend": "hf", "dtype": "bfloat16"}
    monkeypatch.setattr(V, "installed_build", lambda: "gpu")
    rec = backend_record(GenerationConfig(), SMOL, Placement("cuda", "bf16-mixed"))
    assert rec["backend"] == "vllm" and rec["dtype"] == "bfloat16"


def test_loop_records_backend_and_placement_and_status_shows_them(tmp_path):
    """A real round 0 of the tiny loop with `backend: auto` (its head size has no vLLM-CPU
    kernel: hf), recorded in state.json and shown by `alignloop status`."""
    fast = ["generation.backend=auto", "loop.rounds=1", "loop.eval_prompts=4",
            "generation.max_new_tokens=6", "train.max_steps=1", "labeling.human.budget=0"]
    cfg = load_config(ROOT / "configs" / "tiny.yaml", fast)
    Loop(cfg, tmp_path).run()
    rs = json.loads((tmp_path / "state.json").read_text())["rounds"]["0"]
    # the sampling dtype follows the placement `auto` resolved on this machine (bf16 where
    # the CPU's bf16 matmuls probe faster, as on an AMX Xeon; float32 elsewhere)
    dtype = "float32" if rs["placement"]["precision"] == "fp32" else "bfloat16"
    assert rs["generation"] == {"requested": "auto", "backend": "hf", "dtype": dtype}
    assert rs["placement"]["device"] == "cpu"
    table = status_table(tmp_path, stage_names)
    assert f"placement cpu {rs['placement']['precision']}, generation hf {dtype} (auto)" in table


# --------------------------------------------------------------------------- the session's choices


class RecordingEngine:
    """Stands in for `EngineProcess` (our own boundary): records starts, loads and closes."""

    log: list = []

    def __init__(self, model_path, engine, env, progress):
        self.weights, self.alive = model_path, True
        self.proc = self
        self.log.append(("start", model_path))

    def is_alive(self):
        return self.alive

    def load(self, weights):
        if weights != self.weights:
            self.log.append(("load", weights))
            self.weights = weights

    def close(self):
        self.alive = False
        self.log.append(("close", self.weights))


def _model_dir(path: Path, hidden: int) -> str:
    path.mkdir()
    (path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "num_attention_heads": 2, "num_hidden_layers": 1, "vocab_size": 32,
        "_name_or_path": str(path)}))
    return str(path)


def test_session_reloads_compatible_weights_and_restarts_otherwise(monkeypatch, tmp_path):
    monkeypatch.setattr(V, "EngineProcess", RecordingEngine)
    RecordingEngine.log = []
    a, b = _model_dir(tmp_path / "a", 64), _model_dir(tmp_path / "b", 64)
    other = _model_dir(tmp_path / "c", 128)             # another shape: cannot be reloaded
    with S.engine_session() as s:
        for path in (a, b, b, a):
            s.engine_for(path, {"dtype": "float32"}, {}, False)
        with S.engine_session() as inner:               # nested: the same session
            assert inner is s
        s.engine_for(other, {"dtype": "float32"}, {}, False)
        s.process.alive = False                         # the engine died: start again
        s.engine_for(other, {"dtype": "float32"}, {}, False)
        s.engine_for(other, {"dtype": "bfloat16"}, {}, False)   # other settings: restart
        assert s.starts == 4
    assert RecordingEngine.log == [
        ("start", a), ("load", b), ("load", a), ("close", a), ("start", other),
        ("close", other), ("start", other), ("close", other), ("start", other), ("close", other)]
    assert S._SESSION is None


def test_session_closes_its_engine_on_error(monkeypatch, tmp_path):
    monkeypatch.setattr(V, "EngineProcess", RecordingEngine)
    RecordingEngine.log = []
    a = _model_dir(tmp_path / "a", 64)
    with pytest.raises(KeyboardInterrupt), S.engine_session() as s:
        s.engine_for(a, {}, {}, False)
        raise KeyboardInterrupt
    assert RecordingEngine.log[-1] == ("close", a) and S._SESSION is None


# --------------------------------------------------------------------------- the real engine


@pytest.fixture(scope="module")
def perturbed(tmp_path_factory):
    """SmolLM2 with every weight moved a little (tied embedding included): a round's policy."""
    import torch
    from alignloop.models import load_model, load_tokenizer

    out = tmp_path_factory.mktemp("policy")
    model, g = load_model(SMOL), torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02 * p.std())
    model.save_pretrained(out)
    load_tokenizer(SMOL).save_pretrained(out)
    return str(out)


def _sample(model: str) -> list:
    return make_generator("vllm", model, **ENGINE).sample(PROMPTS, SEEDED)


@pytest.fixture(scope="module")
def reloaded(vllm_engine, perturbed):
    """Base, then a policy reloaded into the same engine, then the base again: each call's
    (samples, the engine process that served it)."""
    with serving(vllm_engine):
        return [(_sample(model), vllm_engine.process) for model in (SMOL, perturbed, SMOL)]


@pytest.mark.vllm
def test_reload_changes_the_weights_and_back(reloaded):
    """One engine serves three calls; the reloaded policy samples otherwise, and the base
    reloaded again samples exactly as before (token ids, text, every log-prob float)."""
    (base, engine), (policy, engine_1), (base_again, engine_2) = reloaded
    assert engine is engine_1 is engine_2                                  # no restart
    assert [c.token_ids for c in policy] != [c.token_ids for c in base]   # the weights changed
    assert base_again == base


@pytest.mark.vllm
@pytest.mark.slow
def test_reloaded_engine_samples_as_a_fresh_one(perturbed, reloaded):
    """The reloaded policy's samples equal a fresh engine's on those weights (slow tier: a
    second engine start; the default tier keeps the reload test above)."""
    fresh = _sample(perturbed)               # outside a session: an engine for this call only
    assert fresh == reloaded[1][0]


@pytest.mark.vllm
@pytest.mark.slow
def test_killed_run_leaves_no_engine(tmp_path):
    """A run killed mid-session (os._exit, as the loop's fault injection does) takes its
    engine's processes down with it (the engine's child watches its parent: see also
    tests/test_vllm_timeout.py, which checks every process of the tree)."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        from alignloop.generation import make_generator, PromptItem, SamplingParams
        from alignloop.generation import vllm_session as S
        if __name__ == "__main__":
            with S.engine_session() as s:
                make_generator("vllm", {SMOL!r}, **{ENGINE!r}).sample(
                    [PromptItem("a", "Hi")], SamplingParams(n=1, max_new_tokens=4))
                print(s.process.proc.pid, flush=True)
                os._exit(3)
    """))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=900, cwd=ROOT)
    assert r.returncode == 3, r.stderr[-2000:]
    pid = int(r.stdout.split()[-1])
    import time

    for _ in range(120):
        if not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]:
            break
        time.sleep(1)
    else:
        os.kill(pid, 9)
        pytest.fail(f"the engine process {pid} outlived its killed parent")


@pytest.mark.vllm
def test_the_engine_exits_on_close(vllm_engine, reloaded):
    """The engine's process exits by itself on close (it used to hang at exit for good).
    Last in the file: this module is the shared engine's last user in the run, and closing
    it here also frees its memory for the rest of the run."""
    proc = vllm_engine.process.proc
    vllm_engine.close()
    assert not proc.is_alive() and proc.exitcode == 0
