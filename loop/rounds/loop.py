"""The round driver: `Loop(config, run_dir).run()` runs or resumes the hybrid loop.

A round is the stages of one table, run in order; `state.Run.stage` skips a stage that
is done and redoes one that was interrupted:

    round 0:  assemble -> reference -> train -> eval -> report
    round k:  slices -> generate -> judge -> label -> assemble -> reference -> train
              -> eval -> report

Each table row names the stage, the `Loop` method that runs it and the artifacts it
writes (`alignloop.artifacts`); the method hands the stage function (`alignloop.stages`)
the config sections and artifacts it needs. Round k starts from the policy of record
after round k-1 and trains against the reference chosen by `reference.mode`. Every stage
that runs a model runs it where one placement says (`Loop.placement`, recorded per round
in state.json, with the generation backend `auto` resolved to); a run that samples with
vLLM keeps one engine for all its rounds (`generation.vllm.engine_session`), reloading
each round's policy weights into it. After the report, the gates (`loop.gate`) may flag the round, stop the
loop, or roll it back: the next round then starts from, and refers to, the last policy
that passed. The report stage also writes the policy's model card (`alignloop.cards`);
with `tracking.report_to`, every training step and each round's numbers go to the
experiment trackers (`alignloop.tracking`).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from alignloop import artifacts as A
from alignloop.config import Config
from alignloop.errors import RoundEnded
from alignloop.rounds.state import Run, RunError, run_lock, start_round

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Loop, int], object]
    outputs: tuple[str, ...]


class Loop:
    """`Loop(cfg, run_dir).run()`; `queue` replaces the SQL queue (RUN_DIR/queue.db or
    `labeling.human.db`) with any `alignloop.labeling.handoff.LabelQueue`."""

    def __init__(self, cfg: Config, run_dir: str | Path, *, queue=None):
        import os

        if not isinstance(cfg, Config):
            raise TypeError(f"Loop takes a Config, got {type(cfg).__name__}: build one with "
                            "alignloop.config.load_config(path) or config_from_dict(mapping)")
        if not isinstance(run_dir, str | os.PathLike):
            raise TypeError(f"Loop takes the run directory as a path, got {type(run_dir).__name__}")
        for d in (Path(run_dir), *Path(run_dir).parents):
            if d.exists() and not d.is_dir():   # checked first: mkdir would raise a traceback
                raise RunError(f"run directory {run_dir}: {d} is a file, not a directory")
        self.cfg = cfg
        self.state = Run(run_dir, cfg, stage_names=stage_names)
        self.dir = self.state.dir
        self._pool = self._panel = None
        self._static = None        # the static pairs as preflight read them
        self._queue = queue
        self._ensembles: dict[int, tuple] = {}
        self._tracker = None

    # ------------------------------------------------------------------ running

    def run(self, rounds: int | None = None, *, redo_from: str | None = None,
            verbosity: int | None = 0) -> dict:
        """Run (or resume) rounds 0..rounds-1; returns a summary. `verbosity` is that of the
        libraries underneath (`alignloop.logs.quiet_libraries`): 0 keeps them quiet, as the
        command does without -v; None leaves their logging as it is."""
        if rounds is not None and (isinstance(rounds, bool) or not isinstance(rounds, int)
                                   or rounds < 1):
            raise RunError(f"rounds must be a whole number >= 1 (as loop.rounds), got {rounds!r}")
        if verbosity is not None:
            from alignloop.logs import quiet_libraries

            quiet_libraries(verbosity)
        with ExitStack() as held:
            # one process per run directory, from the first read of its state to the end;
            # a new directory is locked once it exists (`begin` makes it)
            if self.dir.is_dir():
                held.enter_context(run_lock(self.dir))
                self.state.reload()
            summary = self._run_locked(rounds, redo_from, held)
            from alignloop.report import write_run_report

            summary["report"] = str(write_run_report(self.dir))
        return summary

    def _run_locked(self, rounds: int | None, redo_from: str | None, held: ExitStack) -> dict:
        n = rounds if rounds is not None else self.cfg.loop.rounds
        redo = self.state.plan_redo(redo_from) if redo_from else None
        self.state.check_new_dir()               # every check before any write
        self.state.check_config(redo=redo)
        self.state.check_outputs(redo=redo)
        fresh = not self.dir.is_dir()
        try:
            self.preflight(n, static_pairs=redo is not None and redo[0] == 0
                           or not self.state.is_done(0, "assemble"))
            if redo is None or redo[0] > 0:
                from alignloop.rounds.preflight import check_heldout_unchanged

                check_heldout_unchanged(self)
            _ = self.tracker    # a tracker that cannot start (no wandb login) fails here
        except BaseException:
            if fresh:           # what the checks began (queue.db, tracking/): a refused run
                shutil.rmtree(self.dir, ignore_errors=True)      # leaves no directory
            raise
        from alignloop.generation.vllm import engine_session

        try:
            self.state.begin(redo)
            if fresh:
                held.enter_context(run_lock(self.dir))
            with engine_session():  # one vLLM engine for the run, if it samples with vLLM
                summary = self.run_rounds(n)
        except BaseException:
            self.close_tracker(failed=True)
            raise
        self.close_tracker()
        return summary

    def run_rounds(self, n: int) -> dict:
        """Rounds 0..n-1, each run or resumed, until one ends or a gate stops the loop."""
        summary: dict = {"run_dir": str(self.dir), "rounds": []}
        for k in range(n):
            if k > 0 and not self.state.round_done(k - 1):
                break
            stopped = self.state.round_state(k).get("ended")
            if not stopped:
                try:
                    self._round(k)
                except RoundEnded as e:
                    stopped = self.state.end_round(k, str(e))
                    log.warning("round %d ended: %s", k, e)
            if stopped:
                summary["stopped"] = f"round {k}: {stopped}"
                break
            summary["rounds"].append(k)
            gate = self.state.round_state(k).get("gate", {})
            if gate.get("tripped") and gate.get("action") == "stop":
                summary["stopped"] = f"round {k}: gate tripped ({gate['reason']})"
                break
        return summary

    def run_round(self, k: int, *, verbosity: int | None = 0) -> dict:
        """Run (or resume) round k, once rounds 0..k-1 are done, with every check and
        guard of `run` (the run lock, the config and output checks, the trackers, the
        reports): `run(rounds=k + 1)`, which finds the earlier rounds done."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise RunError(f"run_round takes a round number >= 0, got {k!r}")
        undone = [j for j in range(k) if not self.state.round_done(j)]
        if undone:
            raise RunError(f"round {undone[0]} is not done in {self.dir}: run_round({k}) runs "
                           f"round {k} only; run(rounds={k + 1}) runs the rounds before it too")
        return self.run(rounds=k + 1, verbosity=verbosity)

    def _round(self, k: int) -> None:
        self.state.round_state(k).update({"start": self.policy(k - 1),
                                          "reference": self.reference(k),
                                          "policy": str(self.rdir(k) / A.POLICY),
                                          "placement": self.placement.to_dict(),
                                          "generation": self.generation_backend(k)})
        for stage in stages_of(k):
            self.state.stage(k, stage.name, lambda s=stage: s.run(self, k), list(stage.outputs))
        self.check_gates(k)
        self.track_round(k)

    def preflight(self, rounds: int, *, static_pairs: bool = True) -> None:
        """Fail before any work on what would fail later (`alignloop.rounds.preflight`)."""
        from alignloop.rounds import preflight

        preflight.check_run(self, rounds, static_pairs=static_pairs)

    # ------------------------------------------------------------------ round 0 and online data

    def assemble_static(self, k: int):
        from alignloop.stages.assemble import assemble_static

        lc = self.cfg.loop
        read, self._static = self._static, None
        return assemble_static(self.rdir(k), data=self.cfg.data, eval_prompts=self.pool.eval,
                               heldout_share=lc.heldout_pair_share, heldout_min=lc.heldout_pair_min,
                               read=read)

    def mine_slices(self, k: int):
        from alignloop.stages.slices import eval_values, mine_slices, used_prompts

        lc = self.cfg.loop
        return mine_slices(self.rdir(k), cfg=lc.slices, pool=self.pool,
                           previous_eval=eval_values(self.rdir(k - 1), lc.slices.metric),
                           used=used_prompts([self.rdir(j) for j in range(1, k)]),
                           prompts_per_round=lc.prompts_per_round, seed=lc.seed, round=k)

    def generate(self, k: int):
        from alignloop.stages.generate import generate
        from alignloop.stages.slices import read_prompt_items

        return generate(self.rdir(k), cfg=self.cfg.generation, policy=self.policy(k - 1),
                        prompts=read_prompt_items(self.rdir(k) / A.PROMPTS),
                        chat_template=self.cfg.data.chat_template, placement=self.placement)

    def judge(self, k: int):
        from alignloop.stages.label import judge

        return judge(self.rdir(k), generations=A.read_parquet(self.rdir(k) / A.GENERATIONS),
                     ensemble=self.ensemble(k)[0], cfg=self.cfg.labeling, beta=self.cfg.train.beta,
                     round=k, policy=self.policy(k - 1), reference=self.reference(k - 1),
                     chat_template=self.cfg.data.chat_template, placement=self.placement)

    def label(self, k: int):
        from alignloop.labeling.labeler import candidates_from_rows
        from alignloop.stages.label import label

        ensemble, calibration = self.ensemble(k)
        candidates = candidates_from_rows(A.read_parquet(self.rdir(k) / A.CANDIDATES))
        simulate = self.simulate_labels if self.cfg.loop.simulate_labels else None
        return label(self.rdir(k), candidates=candidates, ensemble=ensemble, queue=self.queue,
                     cfg=self.cfg.labeling, round=k, simulate=simulate, calibration=calibration)

    def assemble_online(self, k: int):
        from alignloop.data import read_pairs_parquet
        from alignloop.stages.assemble import assemble_online

        return assemble_online(
            self.rdir(k), new=read_pairs_parquet(self.rdir(k) / A.LABELED_PAIRS),
            earlier=[read_pairs_parquet(self.rdir(j) / A.PAIRS) for j in range(k)], round=k,
            replay_share=self.cfg.loop.replay_share, seed=self.cfg.loop.seed)

    # ------------------------------------------------------------------ models

    def refresh_reference(self, k: int):
        from alignloop.data import read_pairs_parquet
        from alignloop.stages.train import ema_reference, reference

        if k > 0 and self.cfg.reference.mode == "ema":
            ema_reference(self.rdir(k) / A.REFERENCE_MODEL, previous_reference=self.reference(k - 1),
                          policy=self.policy(k - 1), weight=self.cfg.reference.ema_weight,
                          placement=self.placement)
        return reference(self.rdir(k), pairs=read_pairs_parquet(self.rdir(k) / A.PAIRS),
                         policy=self.policy(k - 1), reference_model=self.reference(k),
                         data=self.cfg.data, batch_size=self.cfg.train.batch_size,
                         placement=self.placement)

    def train(self, k: int):
        from alignloop.data import read_pairs_parquet
        from alignloop.stages.train import train
        from alignloop.tracking import step_offset

        tracker = self.tracker      # each step to the trackers, on the run's global step axis
        result = train(self.rdir(k), pairs=read_pairs_parquet(self.rdir(k) / A.PAIRS),
                       policy=self.policy(k - 1), reference_model=self.reference(k),
                       model=self.cfg.model, data=self.cfg.data, train=self.cfg.train,
                       placement=self.placement, on_log=tracker and tracker.step_logger(
                           k, offset=step_offset(self.dir, k)))
        if tracker is not None:
            tracker.train_done(k)
        return result

    def evaluate(self, k: int):
        from alignloop.data import read_pairs_parquet
        from alignloop.evaluation import read_samples
        from alignloop.stages.evaluate import eval_items, evaluate, known_heldout_scores

        lc, start = self.cfg.loop, self.start_round(k)
        previous = read_samples(self.rdir(start)) if start is not None else None
        base = read_samples(self.rdir(0)) if k > 0 else None
        held = self.rdir(0) / A.HELDOUT_PAIRS
        where = {key: self.placement.to_dict()[key] for key in ("device", "precision")}
        earlier = [(self.rdir(j), {"policy": str(self.rdir(j) / A.POLICY),
                                   "reference": self.reference(j), "base": self.base})
                   for j in range(k) if where.items()
                   <= self.state.round_state(j).get("placement", {}).items()]
        return evaluate(
            self.rdir(k), generation=self.cfg.generation, samples_per_prompt=lc.eval_samples,
            seed=lc.seed, tie_margin=lc.eval_tie_margin, items=eval_items(self.pool, lc.eval_prompts),
            policy=str(self.rdir(k) / A.POLICY), reference=self.reference(k), base=self.base,
            previous_samples=[r for r in previous or [] if r["model"] == "policy"] or None,
            base_samples=[r for r in base or [] if r["model"] == "base"] or None,
            heldout=read_pairs_parquet(held) if held.exists() else [],
            ensemble=self.ensemble(k + 1)[0], panel=self.panel,
            chat_template=self.cfg.data.chat_template, placement=self.placement,
            heldout_known=known_heldout_scores(earlier))

    def report(self, k: int):
        """The round's drift report, then its policy's model card (which quotes it)."""
        from alignloop.cards import write_model_card
        from alignloop.report import write_round_report

        path = write_round_report(self.dir, k, config=self.cfg, previous=self.start_round(k))
        write_model_card(self.dir, k, self.cfg, reference=self.reference(k))
        return path

    def check_gates(self, k: int) -> None:
        """Check the round's drift against the gates; record the verdict in state.json."""
        from alignloop.report.alerts import gate_verdict

        rs = self.state.round_state(k)
        if "gate" in rs:
            return
        report = json.loads((self.rdir(k) / A.REPORT_JSON).read_text())
        rs["gate"] = gate_verdict(report, self.cfg.loop.gate,
                                  min_slice_samples=self.cfg.report.min_slice_samples)
        self.state.save()
        if rs["gate"]["tripped"]:
            log.warning("round %d gate tripped (%s): %s", k, rs["gate"]["action"],
                        rs["gate"]["reason"])

    def track_round(self, k: int) -> None:
        """Round k's report and gate to the experiment trackers (each gets a round once)."""
        if self.tracker is not None:
            report = json.loads((self.rdir(k) / A.REPORT_JSON).read_text())
            self.tracker.log_round(k, report, self.state.round_state(k).get("gate"))

    @property
    def tracker(self):
        """The run's experiment trackers (`alignloop.tracking`; None when
        `tracking.report_to` is empty), opened on first use, closed by `run`."""
        if self._tracker is None and self.cfg.tracking.report_to:
            from alignloop.config import to_dict
            from alignloop.tracking import open_tracker

            self._tracker = open_tracker(self.cfg.tracking, self.dir, config=to_dict(self.cfg))
        return self._tracker

    def close_tracker(self, failed: bool = False) -> None:
        if self._tracker is not None:
            self._tracker.close(failed)
            self._tracker = None

    # ------------------------------------------------------------------ what rounds share

    @property
    def base(self) -> str:
        return self.cfg.model.name

    def generation_backend(self, k: int) -> dict:
        """The generation backend `generation.backend` resolves to here, its dtype and how
        vLLM serves round k's starting policy (recorded per round in state.json; `alignloop
        status` shows it)."""
        from alignloop.generation import backend_record

        return backend_record(self.cfg.generation, self.base, self.placement,
                              policy=self.policy(k - 1))

    @property
    def placement(self):
        """Where and in what precision every stage runs its models (`alignloop.placement`;
        resolved once per process)."""
        from alignloop.placement import placement_for

        return placement_for(self.cfg.model)

    def rdir(self, k: int) -> Path:
        return A.round_dir(self.dir, k)

    def start_round(self, k: int) -> int | None:
        """The round whose policy round k starts from (None: the base model). A round whose
        gate rolled it back hands on its own start."""
        return start_round(self.state.state["rounds"], k)

    def policy(self, k: int) -> str:
        """The policy of record after round k (k < 0: the base model)."""
        j = self.start_round(k + 1)
        return self.base if j is None else str(self.rdir(j) / A.POLICY)

    def reference(self, k: int) -> str:
        """The reference model round k trains against."""
        if k <= 0:
            return self.cfg.reference.model or self.base
        mode = self.cfg.reference.mode
        if mode == "base":
            return self.base
        if mode == "previous":
            return self.policy(k - 1)
        return str(self.rdir(k) / A.REFERENCE_MODEL)  # ema, written by the reference stage

    def ensemble(self, k: int) -> tuple:
        """(judges, calibration) for round k: refit and calibrated on rounds < k's labels."""
        if k not in self._ensembles:
            from alignloop.stages.label import earlier_labels, make_ensemble

            history = earlier_labels([self.rdir(j) for j in range(k)])
            self._ensembles[k] = make_ensemble(self.cfg.labeling, history, self.placement)
        return self._ensembles[k]

    @property
    def pool(self):
        if self._pool is None:
            from alignloop.prompt_pool import load_pool

            self._pool = load_pool(self.cfg.loop.prompts, self.cfg.loop.eval_share)
        return self._pool

    @property
    def panel(self):
        if self._panel is None and self.cfg.loop.panel:
            from alignloop.demo.panel import Panel

            self._panel = Panel(self.cfg.loop.panel)
        return self._panel

    @property
    def queue(self):
        """The human queue (opened on first use; None when no pair may go to people)."""
        if self._queue is None and self.cfg.labeling.human.budget > 0:
            from alignloop.labeling.queue.store import QueueStore

            self._queue = QueueStore.open(self.cfg.labeling.human.db or self.dir)
        return self._queue

    def simulate_labels(self, k: int) -> None:
        """The demo panel labels this round's queue through the real JSON API (meeting gold
        items at `labeling.human.gold_rate`)."""
        from alignloop.demo.labelers import simulate_round

        simulate_round(self.queue, self.dir, panel=self.cfg.loop.panel,
                       seed=self.cfg.loop.seed + k, encoder=self.panel.encoder,
                       gold_rate=self.cfg.labeling.human.gold_rate)


# One table of stages: the state machine (`state.Run`) and `_round` both read it.
ROUND0 = (
    Stage("assemble", Loop.assemble_static, (A.PAIRS, A.HELDOUT_PAIRS)),
    Stage("reference", Loop.refresh_reference, (A.REFERENCE_LOGPS,)),
    Stage("train", Loop.train, (A.POLICY, A.TRAIN_LOG)),
    Stage("eval", Loop.evaluate, (A.EVAL_SAMPLES,)),
    Stage("report", Loop.report, (A.REPORT_JSON, A.MODEL_CARD)),
)
ONLINE = (
    Stage("slices", Loop.mine_slices, (A.SLICES, A.PROMPTS)),
    Stage("generate", Loop.generate, (A.GENERATIONS,)),
    Stage("judge", Loop.judge, (A.CANDIDATES,)),
    Stage("label", Loop.label, (A.LABELS, A.LABELED_PAIRS)),
    Stage("assemble", Loop.assemble_online, (A.PAIRS,)),
    *ROUND0[1:],
)


def stages_of(k: int) -> tuple[Stage, ...]:
    return ROUND0 if k == 0 else ONLINE


def stage_names(k: int) -> tuple[str, ...]:
    return tuple(s.name for s in stages_of(k))
