"""A run directory and its `state.json`: which stage of which round is done.

Every stage writes its outputs under temporary names and renames them when
complete (see `artifacts`), then `Run.stage` marks it done with the time it took
and the size and hash of each output. A rerun skips done stages and redoes one
that was interrupted (status `running`). Nothing is appended in place.

The resolved config is written to RUN_DIR/config.yaml; its hash (without
`loop.rounds`, so a run can be extended, and without the checkpoint cadence, which
changes when state is saved but not what is computed) is recorded per round. Rerunning a
finished round with a different config is refused, naming the keys that
changed, unless the user asks to redo from a named stage (`redo_from`).

Fault injection for resume tests: `ALIGNLOOP_FAIL_AT=<stage>` (any round) or
`<round>:<stage>` makes the process exit with status 3 inside that stage, after
its work and before it is marked done.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alignloop.artifacts import RUN_STATE, atomic_write_json, file_sha256, round_dir
from alignloop.config import Config, config_from_dict, dump_config, to_dict
from alignloop.errors import AlignloopError, Paused, RoundEnded
from alignloop.logs import visible
from alignloop.rounds.disk import disk_use
from alignloop.rounds.disk import human_bytes as _human

StageNames = Callable[[int], "tuple[str, ...]"]
"""Round number -> its stage names in order (the driver's table, `rounds.loop.stage_names`)."""

FAIL_AT_ENV = "ALIGNLOOP_FAIL_AT"
STATE_VERSION = 1


class RunError(AlignloopError, RuntimeError):
    """A run directory that cannot be used as asked (config changed, unknown stage, ...)."""


def read_state(path: str | Path) -> dict[str, Any]:
    """A run's state.json, checked to be one (a mapping with a `rounds` mapping). The loop
    writes it atomically, so only a hand edit or another program's file fails here: with a
    RunError naming the file, before anything is written."""
    try:
        state = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RunError(f"{path} is not a readable run state ({e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("rounds"), dict):
        raise RunError(f"{path} is not a run state (no 'rounds' mapping)")
    return state


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


# Keys a finished round does not depend on: how many rounds the run has, how often
# training saves a resumable checkpoint, and where the run is tracked.
NOT_FINGERPRINTED = frozenset({"loop.rounds", "train.save_every", "train.save_every_s",
                               "tracking.report_to", "tracking.project", "tracking.run_name",
                               "tracking.dir", "tracking.mlflow_tracking_uri",
                               # how the loop waits for people, not what it computes: a run
                               # paused with `wait: exit` may go on with `wait: block`
                               "labeling.human.wait", "labeling.human.wait_timeout_s",
                               "labeling.human.lease_minutes"})
# Keys that only the online rounds' stages read (slices, generate, judge, label, assemble):
# a change to them does not make round 0 a different round. (`labeling.human.budget` is
# not among them: round 0's report states it.)
ONLINE_ONLY = ("labeling.selection.", "labeling.routing.", "labeling.aggregation.",
               "labeling.calibrate", "labeling.human.votes_required", "labeling.human.max_votes",
               "labeling.human.db", "labeling.human.gold_rate",
               "labeling.human.min_labels", "loop.slices.", "loop.prompts_per_round",
               "loop.replay_share", "loop.simulate_labels")


def read_by_round(k: int, key: str) -> bool:
    """Whether a config key can change what round k computes."""
    return k > 0 or not key.startswith(ONLINE_ONLY)


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys whose value differs between a recorded flat config and the current one, after
    bringing the recorded one up to date (`config.load.migrate`): renamed keys take their
    new names, moved code its new path, and a key that a newer alignloop added counts as
    unchanged while it holds its default."""
    from alignloop.config.load import migrate_flat

    old = {k: _with_item_defaults(k, v) for k, v in migrate_flat(old).items()}
    defaults = _flat(to_dict(config_from_dict({})))
    return [key for key in sorted(set(old) | set(new)) if key not in NOT_FINGERPRINTED
            and (old[key] if key in old else defaults.get(key)) != new.get(key)]


def _with_item_defaults(key: str, value: Any) -> Any:
    """A recorded list of judges with the fields a newer alignloop added filled in at their
    defaults (a list is one flat key, so a new judge field would otherwise count as a change)."""
    if key != "labeling.judges" or not isinstance(value, list):
        return value
    import dataclasses

    from alignloop.config.labeling import JudgeSpec

    defaults = {f.name: to_dict(f.default) if f.default is not dataclasses.MISSING
                else to_dict(f.default_factory()) for f in dataclasses.fields(JudgeSpec)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    return [{**defaults, **item} if isinstance(item, dict) else item for item in value]


def config_fingerprint(cfg: Config) -> tuple[str, dict[str, Any]]:
    """(hash, flat dict) of the config without the keys in `NOT_FINGERPRINTED`."""
    flat = {k: v for k, v in _flat(to_dict(cfg)).items() if k not in NOT_FINGERPRINTED}
    blob = json.dumps(flat, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16], flat


def start_round(rounds: dict[str, Any], k: int) -> int | None:
    """The round whose policy round k starts from, given state.json's `rounds`: k - 1,
    stepping back over every round whose gate tripped with action "rollback" (such a round
    hands on its own start). None: round k starts from the base model."""
    j = k - 1
    while j >= 0 and (rounds.get(str(j), {}).get("gate") or {}).get("tripped") \
            and rounds[str(j)]["gate"].get("action") == "rollback":
        j -= 1
    return j if j >= 0 else None


def _output_info(path: Path) -> dict[str, Any]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        h = hashlib.sha256()
        for p in files:
            h.update(str(p.relative_to(path)).encode())
            h.update(file_sha256(p).encode())
        return {"bytes": sum(p.stat().st_size for p in files), "sha256": h.hexdigest()[:16]}
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)[:16]}


class Run:
    """RUN_DIR and its state. `stage(k, name, fn, outputs)` runs `fn()` unless done."""

    def __init__(self, run_dir: str | Path, cfg: Config, *, stage_names: StageNames):
        self.dir = Path(run_dir)
        self.cfg = cfg
        self.stage_names = stage_names
        self.state_path = self.dir / RUN_STATE
        self.state: dict[str, Any] = (read_state(self.state_path)
                                      if self.state_path.exists() else
                                      {"version": STATE_VERSION, "rounds": {}})
        self.config_hash, self._flat = config_fingerprint(cfg)

    # ------------------------------------------------------------------ state

    def save(self) -> None:
        atomic_write_json(self.state_path, self.state)

    def reload(self) -> None:
        """Read state.json again (under the run's lock: another process may have written
        it since this object was made)."""
        if self.state_path.exists():
            self.state = read_state(self.state_path)

    def round_state(self, k: int) -> dict[str, Any]:
        return self.state["rounds"].setdefault(str(k), {"stages": {}})

    def round_dir(self, k: int) -> Path:
        return round_dir(self.dir, k)

    def is_done(self, k: int, name: str) -> bool:
        return self.round_state(k)["stages"].get(name, {}).get("status") == "done"

    def round_done(self, k: int) -> bool:
        return all(self.is_done(k, s) for s in self.stage_names(k))

    def end_round(self, k: int, why: str) -> str:
        """Record that round k cannot go on (the loop stops there, also when rerun)."""
        self.round_state(k)["ended"] = why
        self.save()
        return why

    # ------------------------------------------------------------------ config

    def plan_redo(self, spec: str) -> tuple[int, str]:
        """Parse and check `--redo-from ROUND:STAGE` against this run; writes nothing."""
        k_text, sep, stage = spec.partition(":")
        if not sep or not k_text.strip().isdigit():
            raise RunError(f"--redo-from {spec!r}: expected ROUND:STAGE, e.g. 1:train")
        k = int(k_text)
        started = sorted(int(r) for r, rs in self.state["rounds"].items() if rs["stages"])
        if k not in started:
            raise RunError(f"--redo-from {spec}: round {k} has not started in {self.dir} "
                           f"(started rounds: {', '.join(map(str, started)) or 'none'})")
        order = self.stage_names(k)
        if stage not in order:
            raise RunError(f"--redo-from {spec}: round {k} has no stage {stage!r}; its stages: "
                           f"{', '.join(order)}")
        return k, stage

    def check_config(self, *, redo: tuple[int, str] | None = None) -> None:
        """Refuse a config that differs from the one a started round ran with (rounds from
        the `redo` round on are redone and not checked). Writes nothing."""
        flat_path = self.dir / ".config_flat.json"
        old = json.loads(flat_path.read_text()) if flat_path.exists() else None
        for k, rs in sorted(self.state["rounds"].items(), key=lambda t: int(t[0])):
            if redo is not None and int(k) >= redo[0]:
                break
            recorded = rs.get("config_hash")
            if recorded and recorded != self.config_hash and rs["stages"]:
                changed = ([c for c in changed_keys(old, self._flat) if read_by_round(int(k), c)]
                           if old is not None else [])
                if old is not None and not changed:
                    # the same config as far as this round goes (recorded by an older
                    # alignloop, or changed only in keys this round never reads)
                    continue
                shown = ", ".join(changed[:8]) + (" ..." if len(changed) > 8 else "")
                raise RunError(
                    f"{self.dir}: round {k} ran with a different config (changed: "
                    f"{shown or 'unknown'}); rerun with --redo-from {k}:STAGE to redo from a "
                    f"stage with the new config, or use a new run directory")

    def check_new_dir(self) -> None:
        """A folder that is not a run yet must not hold a config.yaml: the run writes its
        resolved config there, and would replace the user's own file (often the very
        config the run was started with). Writes nothing."""
        own = self.dir / "config.yaml"
        if not self.state_path.exists() and own.exists():
            raise RunError(f"{own} exists, and {self.dir} is not a run yet: the run writes its "
                           "resolved config there; move your config.yaml out of the folder, "
                           "or give another --run-dir")

    def check_outputs(self, *, redo: tuple[int, str] | None = None) -> None:
        """Refuse to go on from files that changed since their stage wrote them: a done
        stage's file outputs must still have the size and hash recorded in state.json
        (later stages read them; the redone stages and everything after them are not
        checked, nor the reports, which `alignloop report` renders again, nor folders such
        as a policy, which later stages add to). A missing output is no error: its stage
        runs again. Writes nothing."""
        stop = (redo[0], self.stage_names(redo[0]).index(redo[1])) if redo else None
        for k, rs in sorted(self.state["rounds"].items(), key=lambda t: int(t[0])):
            for i, name in enumerate(self.stage_names(int(k))):
                if stop is not None and (int(k), i) >= stop:
                    return
                info = rs["stages"].get(name, {})
                if info.get("status") != "done" or name == "report":
                    continue
                for out, want in info.get("outputs", {}).items():
                    path = self.round_dir(int(k)) / out
                    if not path.is_file() or _output_info(path) == want:
                        continue
                    raise RunError(
                        f"{path} changed since round {k}'s stage {name} wrote it (recorded "
                        f"{want['bytes']} bytes, sha256 {want['sha256']}...; now "
                        f"{path.stat().st_size} bytes); put the file back, or rerun with "
                        f"--redo-from {k}:{name} to compute it and what follows again")

    def begin(self, redo: tuple[int, str] | None = None) -> None:
        """After `check_config` (and `plan_redo`) passed: forget the redone stage of its round
        and everything after it (later rounds too), stamp the config on the rounds it matches,
        and write state.json, the flat config and config.yaml."""
        if redo is not None:
            k, stage = redo
            order = self.stage_names(k)
            rs = self.round_state(k)
            for s in order[order.index(stage):]:
                rs["stages"].pop(s, None)
            rs.pop("gate", None)
            rs.pop("ended", None)        # a round that ended is run again from there
            for later in [r for r in self.state["rounds"] if int(r) > k]:
                del self.state["rounds"][later]
        for rs in self.state["rounds"].values():
            if rs["stages"]:
                rs["config_hash"] = self.config_hash
        self.dir.mkdir(parents=True, exist_ok=True)    # not before: a refused run makes none
        self.save()
        atomic_write_json(self.dir / ".config_flat.json", self._flat)
        dump_config(self.cfg, self.dir / "config.yaml")

    # ------------------------------------------------------------------ stages

    def stage(self, k: int, name: str, fn: Callable[[], Any], outputs: list[str]) -> bool:
        """Run `fn` unless the stage is done (and its outputs exist); True if it ran."""
        rs = self.round_state(k)
        rdir = self.round_dir(k)
        info = rs["stages"].get(name, {})
        if info.get("status") == "done" and all((rdir / o).exists() for o in outputs):
            return False
        rs["config_hash"] = self.config_hash
        rs["stages"][name] = {"status": "running", "started": time.time()}
        self.save()
        rdir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        try:
            fn()
        except BaseException as e:
            if isinstance(e, (AlignloopError, KeyboardInterrupt)):
                # the CLI's one-line error then says where it stopped ("round 1, stage generate")
                e.where = getattr(e, "where", None) or f"round {k}, stage {name}"
            # `status` then says it failed and why, not "running" (a killed process cannot
            # say so: its stage stays "running"); a rerun retries it as before
            status = ("stopped" if isinstance(e, KeyboardInterrupt) else
                      "waiting" if isinstance(e, Paused) else
                      "ended" if isinstance(e, RoundEnded) else "failed")
            rs["stages"][name] = {"status": status, "started": rs["stages"][name]["started"],
                                  "error": _one_line(e)}
            self.save()
            raise
        _maybe_fail(k, name)
        rs["stages"][name] = {
            "status": "done", "started": rs["stages"][name]["started"], "finished": time.time(),
            "seconds": round(time.perf_counter() - t0, 3),
            "outputs": {o: _output_info(rdir / o) for o in outputs if (rdir / o).exists()},
        }
        self.save()
        return True


def _one_line(e: BaseException) -> str:
    """What a stage failed with, on one line of at most 300 characters."""
    text = " ".join(str(e).split())
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _maybe_fail(k: int, name: str) -> None:
    target = os.environ.get(FAIL_AT_ENV, "")
    if target and target in (name, f"{k}:{name}"):
        sys.stderr.write(f"fault injection: {FAIL_AT_ENV}={target}: exiting inside stage "
                         f"{name} of round {k}\n")
        sys.stderr.flush()
        os._exit(3)


def _round_setup(rs: dict[str, Any], run_dir: Path) -> str:
    """"placement cpu fp32, generation vllm float32 (auto), policy round_000/policy as merged
    weights" for a round's status line: where it ran, the backend `generation.backend`
    resolved to, and the policy it started from (sampled from) and how vLLM served it
    (`generation.policy_weights`: full, merged or adapter)."""
    parts = []
    if place := rs.get("placement"):
        parts.append(f"placement {place.get('device')} {place.get('precision')}")
    gen = rs.get("generation") or {}
    if gen:
        asked = " (auto)" if gen.get("requested") == "auto" else ""
        parts.append(f"generation {gen.get('backend')} {gen.get('dtype') or ''}".rstrip() + asked)
    if start := rs.get("start"):
        path, top = Path(start).resolve(), run_dir.resolve()
        policy = f"policy {path.relative_to(top) if path.is_relative_to(top) else start}"
        weights = _SERVED.get(gen.get("policy_weights", ""), "")
        parts.append(policy + (f" as {weights}" if weights else ""))
    return ", ".join(parts)


_SERVED = {"full": "full weights", "merged": "merged weights", "adapter": "a LoRA adapter"}


@contextmanager
def run_lock(run_dir: Path):
    """Hold an exclusive lock on `run_dir` (an existing folder) while the block runs, or
    raise RunError when another process holds it: two processes in one run would both
    compute every stage and write over each other. The lock is the kernel's (flock on the
    folder itself): nothing is written, and a killed process leaves none behind."""
    import fcntl

    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"{run_dir}: another alignloop process is using this run directory; "
                           "wait for it to end (or stop it), then try again") from None
        yield
    finally:
        os.close(fd)              # closing the folder's descriptor releases the lock


def in_use(run_dir: Path) -> bool:
    """True while a process holds `run_lock` on `run_dir`."""
    try:
        with run_lock(run_dir):
            return False
    except RunError:
        return True


def status_table(run_dir: str | Path, stage_names: StageNames) -> str:
    """Per round, each stage's state, time and output size (for `alignloop status`)."""
    path = Path(run_dir) / RUN_STATE
    if not path.exists():
        raise FileNotFoundError(f"no run here: {path} not found")
    state = read_state(path)
    # a stage marked running with no process in the run was stopped (killed, or the
    # machine went down): a rerun redoes it
    alive = in_use(Path(run_dir))
    lines = [f"{'round':>5}  {'stage':10} {'status':8} {'seconds':>8} {'output':>10}"]
    for k, rs in sorted(state["rounds"].items(), key=lambda t: int(t[0])):
        for name in stage_names(int(k)):
            info = rs["stages"].get(name)
            if info is None:
                lines.append(f"{k:>5}  {name:10} {'pending':8}")
                continue
            size = sum(o["bytes"] for o in info.get("outputs", {}).values())
            secs = f"{info['seconds']:.1f}" if "seconds" in info else "-"
            dead = info["status"] == "running" and not alive
            shown = "stopped" if dead else info["status"]
            lines.append(f"{k:>5}  {name:10} {shown:8} {secs:>8} {_human(size):>10}")
            if dead:
                lines.append(f"{k:>5}  {name} stopped: no process is running it (killed?); "
                             "rerun the command to resume")
            elif info.get("error"):
                when = (" (counted when the run paused; `alignloop queue status` counts "
                        "the labels since)" if info["status"] == "waiting" else "")
                lines.append(f"{k:>5}  {name} {info['status']}: {visible(info['error'])}{when}")
        if rs.get("placement") or rs.get("generation") or rs.get("start"):
            lines.append(f"{k:>5}  {_round_setup(rs, Path(run_dir))}")
        gate = rs.get("gate")
        if gate and gate.get("tripped"):
            lines.append(f"{k:>5}  gate tripped: {visible(str(gate.get('reason')))} -> "
                         f"{gate.get('action')}")
        if gate and gate.get("held"):
            lines.append(f"{k:>5}  gate held (not significant): {visible(str(gate['held']))}")
    use = disk_use(run_dir)
    line = f"run directory: {_human(use.total)} on disk"
    if use.caches:
        line += (f", of which {_human(use.cache_bytes)} in {len(use.caches)} merged-weight "
                 "cache(s) that `alignloop prune` removes")
    return "\n".join([*lines, line])
