"""Every process of a vLLM engine ends with it (`alignloop.generation.vllm_process`).

On its own: the step limit reaches the engine's environment and the config checks it; a
stopped engine refuses further calls. With the real engine (markers `vllm` and `slow`, SmolLM2, eager
float32): a step over `generation.vllm_step_timeout_s` (1 s, its worker stopped with
SIGSTOP: one stuck in a step, on any machine) fails at once with an error naming the field
and the limit, and no process of the engine survives it. (The orphan `VLLM::Worker` was
met with the code before this module, closing the engine seconds after a step over the
limit; vLLM's own shutdown often reaps the worker too, so this test passes without the
group kill as well: it guards the outcome, not the mechanism.) A run killed by SIGTERM in
the middle of a call takes its engine with it (slow). Processes are read from /proc.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from alignloop.config import ConfigError, GenerationConfig, config_from_dict
from alignloop.generation import GenerationError, PromptItem, SamplingParams, generator_for
from alignloop.generation import vllm_process as P

SMOL = "builtin:smollm2-135m-instruct"
ROOT = Path(__file__).resolve().parents[1]
ENGINE = {"dtype": "float32", "enforce_eager": True, "kv_cache_gib": 0.5, "progress": False}


def _stat(pid: int) -> tuple[str, int, int, str] | None:
    """(state, ppid, pgid, name) of a process from /proc, or None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
        # the title vLLM sets (comm would cut "VLLM::EngineCore" to 15 characters)
        name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[2]), name


def descendants(root: int) -> dict[int, str]:
    """pid -> name of every living process under `root` (zombies left out)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (st := _stat(int(d.name))) is not None:
            children.setdefault(st[1], []).append(int(d.name))
    out, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        st = _stat(pid)
        if st is not None and st[0] != "Z":
            out[pid] = st[3]
        todo.extend(children.get(pid, []))
    return out


def survivors(pids, seconds: float = 10.0) -> dict[int, str]:
    """The processes of `pids` still alive (not zombies) after up to `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        left = {p: st[3] for p in pids if (st := _stat(p)) is not None and st[0] != "Z"}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def test_step_limit_reaches_the_engine_and_is_checked():
    gen = generator_for(GenerationConfig(backend="vllm", vllm_step_timeout_s=7), SMOL)
    assert gen.env[P.STEP_LIMIT_ENV] == "7"
    assert GenerationConfig().vllm_step_timeout_s == P.VLLM_STEP_LIMIT_S == 300   # vLLM's
    with pytest.raises(ConfigError, match="vllm_step_timeout_s"):
        config_from_dict({"generation": {"vllm_step_timeout_s": 0}})


@pytest.fixture
def engine_dead_on_arrival():
    """An EngineProcess stopped before it served: no engine started (our own boundary)."""
    proc = P.EngineProcess.__new__(P.EngineProcess)
    proc.stopped, proc.step_limit = True, 300
    return proc


def test_a_stopped_engine_refuses_calls(engine_dead_on_arrival):
    with pytest.raises(GenerationError, match="stopped after an earlier failure"):
        engine_dead_on_arrival.generate([])
    with pytest.raises(GenerationError, match="stopped after an earlier failure"):
        engine_dead_on_arrival.load("elsewhere")
    assert not engine_dead_on_arrival.is_alive()


def test_the_error_names_the_limit(engine_dead_on_arrival):
    over = engine_dead_on_arrival._dead("vLLM generation failed", "EngineDeadError: x", 301.0)
    assert "ran past generation.vllm_step_timeout_s = 300 s" in over
    assert "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS" in over and "were stopped" in over
    within = engine_dead_on_arrival._dead("vLLM generation failed", "EngineDeadError: x", 12.0)
    assert "died after 12 s, within generation.vllm_step_timeout_s = 300 s" in within


# --------------------------------------------------------------------------- the process group

STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"


def _engine_like(conn) -> None:
    """A spawned child shaped like the engine's: its own group (`vllm_process`'s set-up),
    a grandchild that ignores SIGTERM (a stuck `VLLM::Worker`), then it waits."""
    P._own_group_watching_parent()
    conn.send(subprocess.Popen([sys.executable, "-c", STUBBORN]).pid)
    time.sleep(600)


def _start_engine_like():
    import multiprocessing as mp

    from alignloop.generation.vllm_lora import AdapterStore

    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=_engine_like, args=(theirs,))
    proc.start()
    engine = P.EngineProcess.__new__(P.EngineProcess)
    engine.proc, engine.conn, engine.adapters, engine.stopped = proc, ours, AdapterStore(), False
    return engine, ours.recv()


def test_stop_kills_the_whole_group():
    """`stop` (every end of an engine goes through it) takes the grandchild that ignores
    SIGTERM with it; the child alone would leave it to init."""
    engine, grandchild = _start_engine_like()
    assert _stat(grandchild)[2] == engine.proc.pid and engine.is_alive()
    engine.stop()
    assert survivors([engine.proc.pid, grandchild]) == {} and not engine.is_alive()
    engine.stop()                                       # again: nothing to do


def test_a_dead_parent_takes_the_group_with_it(tmp_path):
    """The child's watch on its parent: a parent gone by os._exit (no cleanup at all)."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import os
        from tests.test_vllm_timeout import _start_engine_like
        if __name__ == "__main__":
            engine, grandchild = _start_engine_like()
            print(engine.proc.pid, grandchild, flush=True)
            os._exit(3)
    """))
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("w") as o, err.open("w") as e:   # files, not pipes the group would hold
        r = subprocess.run([sys.executable, str(script)], stdout=o, stderr=e, timeout=120,
                           cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 3, err.read_text()[-2000:]
    pids = [int(p) for p in out.read_text().split()]
    left = survivors(pids, seconds=20)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == {}


# --------------------------------------------------------------------------- the real engine


@pytest.fixture
def skip_without_vllm():
    from tests.vllm_engine import skip_reason

    if reason := skip_reason():
        pytest.skip(reason)


@pytest.mark.vllm
@pytest.mark.slow   # an engine start of its own (~1-2 min); the default run keeps the mechanism tests
def test_step_over_the_limit_leaves_no_process(skip_without_vllm):
    cfg = GenerationConfig(backend="vllm", vllm_step_timeout_s=1, dtype="float32",
                           kv_cache_gib=0.5)
    gen = generator_for(cfg, SMOL)
    gen.progress = False
    with gen:
        child = gen._process.proc.pid
        tree = descendants(child)
        # the engine core runs in the child; the model in a worker (`generation.vllm`)
        assert "VLLM::Worker" in tree.values() and "VLLM::EngineCore" not in tree.values(), tree
        assert all(_stat(p)[2] == child for p in tree)    # one process group: the child's
        # a worker stuck in its step: it answers nothing, not even SIGTERM (as a worker
        # deep in a minutes-long LoRA prefill did); the 1 s step limit passes
        (worker,) = [p for p, name in tree.items() if name == "VLLM::Worker"]
        os.kill(worker, signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(GenerationError) as e:
            gen.sample([PromptItem("hi", "Hi")], SamplingParams(n=1, max_new_tokens=4))
        assert "vLLM generation failed" in str(e.value)
        assert "ran past generation.vllm_step_timeout_s = 1 s" in str(e.value), str(e.value)
        assert survivors([child, *tree]) == {}
        assert time.monotonic() - t0 < 120
        with pytest.raises(GenerationError, match="stopped after an earlier failure"):
            gen.sample([PromptItem("hi", "Hi")], SamplingParams(n=1, max_new_tokens=2))


@pytest.mark.vllm
@pytest.mark.slow
def test_a_terminated_run_takes_its_engine_with_it(tmp_path, skip_without_vllm):
    """SIGTERM to a run in the middle of a long call (no cleanup runs in it): the child's
    watch on its parent kills the engine's whole process group."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import os
        from alignloop.generation import make_generator, PromptItem, SamplingParams
        if __name__ == "__main__":
            gen = make_generator("vllm", {SMOL!r}, **{ENGINE!r}).start()
            print("ENGINE", gen._process.proc.pid, flush=True)
            gen.sample([PromptItem(str(i), "word " * 3000) for i in range(8)],
                       SamplingParams(n=1, max_new_tokens=64))
    """))
    out = tmp_path / "out.txt"
    with out.open("w") as o:             # a file: vLLM logs to stdout too, and a pipe fills
        run = subprocess.Popen([sys.executable, str(script)], stdout=o,
                               stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 600
        while not (said := [line.split()[1] for line in out.read_text().splitlines()
                            if line.startswith("ENGINE ")]):
            assert run.poll() is None and time.monotonic() < deadline, out.read_text()[-2000:]
            time.sleep(1)
        child = int(said[0])
        time.sleep(3)                                  # into the call
        tree = descendants(child)
        assert "VLLM::Worker" in tree.values(), tree
        run.send_signal(signal.SIGTERM)
        assert run.wait(60) == -signal.SIGTERM
        left = survivors([child, *tree], seconds=30)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert left == {}
    finally:
        if run.poll() is None:
            run.kill()


@pytest.mark.vllm
@pytest.mark.slow
def test_a_killed_worker_fails_the_call_instead_of_hanging(skip_without_vllm):
    """vLLM's worker killed outright in the middle of a call (the OOM killer, or by hand):
    `LLM.generate` in the child would wait for it until the step limit (300 s). The
    child's watch on vLLM's processes kills the group after its grace period, so the call
    fails."""
    import threading

    cfg = GenerationConfig(backend="vllm", dtype="float32", kv_cache_gib=0.5)
    gen = generator_for(cfg, SMOL)
    gen.progress = False
    with gen:
        gen.sample([PromptItem("hi", "Hi")], SamplingParams(n=1, max_new_tokens=2))  # started
        child = gen._process.proc.pid
        tree = descendants(child)
        (worker,) = [p for p, name in tree.items() if name == "VLLM::Worker"]
        raised: list[BaseException] = []

        def call():
            try:
                gen.sample([PromptItem(str(i), "word " * 1500) for i in range(8)],
                           SamplingParams(n=1, max_new_tokens=64))
            except BaseException as e:  # noqa: BLE001 - the test reads it
                raised.append(e)

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        time.sleep(2)                                   # into the call
        os.kill(worker, signal.SIGKILL)
        caller.join(P.ENGINE_DEATH_GRACE_S + 60)
        assert not caller.is_alive(), "the call still waits on a dead worker"
        assert raised and isinstance(raised[0], GenerationError), raised
        # the engine reports it (vLLM's executor cancels the call) or the watch kills it
        assert re.search(r"VLLM::Worker \(pid \d+\) died|process died", str(raised[0])), str(raised[0])
        assert survivors([child, *tree]) == {}
