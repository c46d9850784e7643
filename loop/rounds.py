"""The round driver: `Loop(config, run_dir).run(rounds=N)` runs or resumes the hybrid loop.

A round reads top to bottom; every stage is a plain function (`stages`,
`policy_stages`) wrapped by `Run.stage`, which skips it when it is done:

    round 0:  assemble -> reference -> train -> eval -> report
    round k:  slices -> generate -> judge -> label -> assemble -> reference -> train
              -> eval -> report

Round k starts from round k-1's policy and trains against the reference chosen
by `reference.mode`. After the report, the gates (`loop.gate`) may flag the
round, stop the loop, or roll back: the next round then starts from, and refers
to, the last policy that passed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from alignloop.config import Config
from alignloop.run import Run, RunError
from alignloop.stages import RoundEnded

log = logging.getLogger(__name__)


class Loop:
    def __init__(self, cfg: Config, run_dir: str | Path):
        self.cfg = cfg
        self.run_state = Run(run_dir, cfg)
        self.dir = self.run_state.dir
        self._pool = None
        self._panel = None
        self._queue = None

    # ------------------------------------------------------------------ shared parts

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

    @property
    def base(self) -> str:
        return self.cfg.model.name

    def rdir(self, k: int) -> Path:
        return self.run_state.round_dir(k)

    def policy(self, k: int) -> str:
        """The policy of record after round k (a rolled-back round hands on its start)."""
        if k < 0:
            return self.base
        gate = self.run_state.round_state(k).get("gate", {})
        if gate.get("tripped") and gate.get("action") == "rollback":
            return self.policy(k - 1)
        return str(self.rdir(k) / "policy")

    def reference(self, k: int) -> str:
        """The reference model round k trains against."""
        if k == 0:
            return self.cfg.reference.model or self.base
        mode = self.cfg.reference.mode
        if mode == "base":
            return self.base
        if mode == "previous":
            return self.policy(k - 1)
        return str(self.rdir(k) / "reference")  # ema, written by the reference stage

    # ------------------------------------------------------------------ running

    def run(self, rounds: int | None = None, *, redo_from: str | None = None) -> dict:
        """Run (or resume) rounds 0..rounds-1; returns a summary."""
        n = rounds if rounds is not None else self.cfg.loop.rounds
        if redo_from:
            k, _, stage = redo_from.partition(":")
            self.run_state.redo_from(int(k), stage)
        self.run_state.check_config()
        self.preflight()
        summary = {"run_dir": str(self.dir), "rounds": []}
        for k in range(n):
            if k > 0 and not self.run_state.round_done(k - 1):
                break
            ended = self.run_state.round_state(k).get("ended")
            if ended:
                summary["stopped"] = f"round {k}: {ended}"
                break
            try:
                self.run_round(k)
            except RoundEnded as e:
                self.run_state.round_state(k)["ended"] = str(e)
                self.run_state.save()
                log.warning("round %d ended: %s", k, e)
                summary["stopped"] = f"round {k}: {e}"
                break
            summary["rounds"].append(k)
            gate = self.run_state.round_state(k).get("gate", {})
            if gate.get("tripped") and gate.get("action") == "stop":
                summary["stopped"] = f"round {k}: gate tripped ({gate['reason']})"
                break
        self._run_report()
        summary["report"] = str(self.dir / "report.html")
        return summary

    def preflight(self) -> None:
        """Fail before any work on what would fail later: the prompt pool, the starting
        model, the queue database."""
        from alignloop.models import resolve_model_path

        _ = self.pool
        resolve_model_path(self.base)
        if self.cfg.labeling.human.budget > 0:
            try:
                _ = self.queue
            except Exception as e:  # noqa: BLE001 (any driver error: name the database)
                target = self.cfg.labeling.human.db or str(self.dir / "queue.db")
                raise RunError(f"cannot open the queue database {target}: {e}") from None

    def run_round(self, k: int) -> None:
        stage, rdir = self.run_state.stage, self.rdir(k)
        if k == 0:
            from alignloop.stages import assemble_static

            stage(0, "assemble", lambda: assemble_static(self.cfg, rdir, eval_prompts=self.pool.eval),
                  ["pairs.parquet", "heldout_pairs.parquet"])
        else:
            self._online_data(k)
        self._train_and_evaluate(k)

    def _online_data(self, k: int) -> None:
        from alignloop import stages as S

        stage, rdir, cfg = self.run_state.stage, self.rdir(k), self.cfg
        stage(k, "slices", lambda: S.mine_slices(
            cfg, rdir, pool=self.pool, previous_eval=self._eval_values(k - 1),
            used=self._used_prompts(k)), ["slices.json", "prompts.parquet"])
        stage(k, "generate", lambda: S.generate(
            cfg, rdir, policy=self.policy(k - 1),
            prompts=S.read_prompt_items(rdir / "prompts.parquet")), ["generations.parquet"])
        ensemble, calibration = None, {}
        if not (self.run_state.is_done(k, "judge") and self.run_state.is_done(k, "label")):
            ensemble, calibration = S.make_ensemble(cfg, self.dir, k)
        stage(k, "judge", lambda: S.judge(
            cfg, rdir, generations=S.read_parquet(rdir / "generations.parquet"),
            ensemble=ensemble, round=k), ["candidates.parquet"])
        stage(k, "label", lambda: self._label(k, ensemble, calibration),
              ["labels.parquet", "labeled_pairs.parquet"])
        stage(k, "assemble", lambda: S.assemble_online(
            cfg, rdir, new=S.read_pairs_parquet(rdir / "labeled_pairs.parquet"),
            earlier=[S.read_pairs_parquet(self.rdir(j) / "pairs.parquet") for j in range(k)],
            round=k), ["pairs.parquet"])

    def _label(self, k: int, ensemble, calibration) -> None:
        from alignloop import stages as S
        from alignloop.labeling.labeler import candidates_from_rows

        rdir = self.rdir(k)
        candidates = candidates_from_rows(S.read_parquet(rdir / "candidates.parquet"))
        simulate = self._simulate if self.cfg.loop.simulate_labels else None
        S.label(self.cfg, rdir, candidates=candidates, ensemble=ensemble, queue=self.queue,
                round=k, simulate=simulate, calibration=calibration)

    def _simulate(self, k: int) -> None:
        """The demo panel labels this round's queue through the real JSON API."""
        from alignloop.demo.labelers import simulate_round

        encoder = self.panel.encoder if self.panel else None
        simulate_round(self.queue, self.dir, panel=self.cfg.loop.panel,
                       seed=self.cfg.loop.seed + k, encoder=encoder)

    def _train_and_evaluate(self, k: int) -> None:
        from alignloop import policy_stages as P
        from alignloop import stages as S

        stage, rdir, cfg = self.run_state.stage, self.rdir(k), self.cfg
        start, ref = self.policy(k - 1), self.reference(k)
        pairs = lambda: S.read_pairs_parquet(rdir / "pairs.parquet")  # noqa: E731

        def reference() -> None:
            if k > 0 and cfg.reference.mode == "ema":
                P.ema_reference(rdir / "reference", previous_reference=self.reference(k - 1),
                                policy=start, weight=cfg.reference.ema_weight)
            P.reference(cfg, rdir, pairs=pairs(), policy=start, reference_model=ref)

        stage(k, "reference", reference, ["reference_logps.parquet"])
        stage(k, "train", lambda: P.train(cfg, rdir, pairs=pairs(), policy=start,
                                          reference_model=ref), ["policy", "train_log.jsonl"])
        self.run_state.round_state(k).update({"policy": str(rdir / "policy"), "reference": ref,
                                              "start": start})
        stage(k, "eval", lambda: self._evaluate(k, ref), ["eval/samples.parquet"])
        stage(k, "report", lambda: self._report(k), ["report/report.json"])
        self._gate(k)

    def _evaluate(self, k: int, ref: str) -> None:
        from alignloop import policy_stages as P
        from alignloop import stages as S
        from alignloop.evaluation import read_samples

        ensemble = S.make_ensemble(self.cfg, self.dir, k + 1)[0] if self.cfg.labeling.judges else None
        prev = read_samples(self.rdir(k - 1)) if k > 0 else None
        base_rows = read_samples(self.rdir(0)) if k > 0 else None
        held_path = self.rdir(0) / "heldout_pairs.parquet"
        P.evaluate(self.cfg, self.rdir(k), items=P.eval_items(self.pool, self.cfg.loop.eval_prompts),
                   policy=str(self.rdir(k) / "policy"), reference_model=ref, base=self.base,
                   previous_samples=[r for r in prev or [] if r["model"] == "policy"] or None,
                   base_samples=[r for r in base_rows or [] if r["model"] == "base"] or None,
                   heldout=S.read_pairs_parquet(held_path) if held_path.exists() else [],
                   ensemble=ensemble, panel=self.panel)

    def _report(self, k: int) -> None:
        from alignloop.report import write_round_report

        write_round_report(self.dir, k, config=self.cfg)

    def _run_report(self) -> None:
        from alignloop.report import write_run_report

        write_run_report(self.dir)

    # ------------------------------------------------------------------ slices and gates

    def _eval_values(self, k: int) -> list[dict]:
        """Per held-out sample of round k, the value that ranks slices."""
        from alignloop.evaluation import read_comparisons, read_samples

        metric = self.cfg.loop.slices.metric
        rdir = self.rdir(k)
        if metric == "latent_reward":
            rows = read_samples(rdir) or []
            return [{"prompt_id": r["prompt_id"], "value": r["latent_reward"]}
                    for r in rows if r["model"] == "policy"]
        if metric == "judge_score":
            rows = [r for r in read_samples(rdir) or [] if r["model"] == "policy"]
            values = [{"prompt_id": r["prompt_id"], "value": r.get("judge_score")} for r in rows]
            values = [v for v in values if v["value"] is not None and v["value"] == v["value"]]
            if not values:
                raise RoundEnded(f"round {k}'s evaluation has no judge scores to rank slices by: "
                                 "no configured judge scores responses one by one (a python "
                                 "`score` function or a reward model); set loop.slices.metric "
                                 "to win_rate_vs_base")
            return values
        rows = read_comparisons(rdir) or []
        if not rows:
            raise RoundEnded(f"round {k} has no judge comparisons to rank slices by "
                             "(configure labeling.judges, or loop.slices.metric: latent_reward)")
        return [{"prompt_id": r["prompt_id"], "value": 0.5 if r["tie"] else float(r["p_a"] > 0.5)}
                for r in rows if r["b_model"] == "base"]

    def _used_prompts(self, k: int) -> set[str]:
        from alignloop.artifacts import read_parquet

        used = set()
        for j in range(1, k):
            path = self.rdir(j) / "prompts.parquet"
            if path.exists():
                used |= {r["prompt_id"] for r in read_parquet(path)}
        return used

    def _gate(self, k: int) -> None:
        """Check the round's drift against the gates and record the verdict in state.json."""
        g = self.cfg.loop.gate
        rs = self.run_state.round_state(k)
        if "gate" in rs:
            return
        report = json.loads((self.rdir(k) / "report" / "report.json").read_text())
        reasons = []
        kl = (((report.get("kl_to_base") or {}).get("k1") or {}).get("sequence") or {}).get("value")
        if g.kl_budget and kl is not None and kl > g.kl_budget:
            reasons.append(f"KL to base {kl:.2f} > budget {g.kl_budget}")
        if g.slice_regression:
            for a in report.get("alerts", []):
                if a.get("kind") == "slice_regression" and abs(a.get("drop", 0)) > g.slice_regression:
                    reasons.append(a.get("message", "slice regression"))
        rs["gate"] = {"tripped": bool(reasons), "reason": "; ".join(reasons),
                      "action": g.action if reasons else ""}
        self.run_state.save()
        if reasons:
            log.warning("round %d gate tripped (%s): %s", k, g.action, "; ".join(reasons))

