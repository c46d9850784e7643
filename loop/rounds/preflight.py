"""What a run checks before any work, so that it fails at once and writes nothing on what
would otherwise fail later: the prompt pool, the static pairs (read, and tokenised under
`data.max_length`), the models, the device and precision, the failure-slice metric, the
queue database, the trackers' packages; and on a resumed run, that the held-out prompts
round 0 evaluated still read as they did. `Loop.preflight` and `Loop.run` call these."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from alignloop.rounds.state import RunError

log = logging.getLogger(__name__)


def check_run(loop, rounds: int, *, static_pairs: bool = True) -> None:
    """Fail before any work on what would fail later: the prompt pool, the starting
    model, the device and precision, the failure-slice metric, the queue database, the
    experiment trackers' packages, and (`static_pairs`: round 0 will assemble them) the
    static pairs: a file with an invalid row must be refused before the run directory
    is made, or the run would hold a config that the fixed one is refused against."""
    from alignloop.models import check_model
    from alignloop.stages.slices import metric_problem
    from alignloop.tracking import check_trackers
    from alignloop.training.compile import check_compile

    check_trackers(loop.cfg.tracking.report_to)
    if static_pairs:
        from alignloop.data import read_pairs_from_config

        loop._static = read_pairs_from_config(loop.cfg.data)   # round 0 reuses them

    _ = loop.pool
    check_model(loop.base, "model.name")
    if static_pairs and loop.cfg.data.on_invalid == "error":
        check_static_tokens(loop)
    if loop.cfg.reference.model:
        check_model(loop.cfg.reference.model, "reference.model")
    check_compile(loop.cfg.train.compile, loop.placement.device)   # `true` without g++
    problem = metric_problem(loop.cfg.loop.slices.metric, loop.cfg.labeling.judges,
                             loop.cfg.loop.panel)
    if rounds > 1 and problem:
        raise RunError(f"config key 'loop.slices.metric': {problem}")
    sel, human = loop.cfg.labeling.selection.strategy, loop.cfg.labeling.human
    if rounds > 1 and human.budget == 0 and sel in ("uncertainty", "bald", "bald_diverse"):
        log.warning("labeling.selection.strategy %s picks the pairs the judges are least "
                    "sure of, and with labeling.human.budget 0 no person labels them: the "
                    "uncertain ones are dropped, and a round may end with no pair; a loop "
                    "of judges alone wants max_min (or people: a budget)", sel)
    if loop.cfg.labeling.human.budget > 0:
        check_sqlite_folder(loop.cfg.labeling.human.db)
        if not loop.cfg.labeling.human.db:
            loop.dir.mkdir(parents=True, exist_ok=True)     # the last check: queue.db
        try:
            _ = loop.queue
        except Exception as e:  # noqa: BLE001 (any driver error: name the database)
            target = loop.cfg.labeling.human.db or str(loop.dir / "queue.db")
            raise RunError(f"cannot open the queue database {target}: {e}") from None


def check_heldout_unchanged(loop) -> None:
    """The held-out prompts round 0 evaluated are the ones evaluated now: their text
    and the set (an added prompt may enter the first `loop.eval_prompts`). Every round's
    drift figures compare rounds on the same prompts; an edited pool would make them
    compare others without a word."""
    from alignloop.evaluation import read_samples
    from alignloop.stages.evaluate import eval_items

    rows = read_samples(loop.rdir(0)) if loop.state.is_done(0, "eval") else None
    if not rows:
        return
    was = {r["prompt_id"]: json.loads(r["prompt"]) for r in rows if r["model"] == "policy"}
    now = {it.prompt_id: it.prompt
           for it in eval_items(loop.pool, loop.cfg.loop.eval_prompts)}
    if was == now:
        return
    edited = sorted(i for i in was.keys() & now.keys() if was[i] != now[i])
    what = [f"{len(edited)} edited ({', '.join(edited[:3])}{' ...' if len(edited) > 3 else ''})"
            if edited else "",
            f"{len(now.keys() - was.keys())} new to it" if now.keys() - was.keys() else "",
            f"{len(was.keys() - now.keys())} gone" if was.keys() - now.keys() else ""]
    raise RunError(f"loop.prompts {loop.cfg.loop.prompts}: the held-out prompts round 0 "
                   f"evaluated have changed ({'; '.join(w for w in what if w)}); every "
                   "round is compared on the same prompts, so restore them, or start a "
                   "new run directory")


def check_static_tokens(loop) -> None:
    """A static pair too long for data.max_length (or one the chat template cannot
    split) is found here, naming the user's file and row, and not in round 0's
    reference stage, after the run directory and its pairs.parquet were made."""
    from alignloop.models import load_tokenizer
    from alignloop.training.batching import check_encodable

    d = loop.cfg.data
    check_encodable(loop._static[0], load_tokenizer(loop.base, d.chat_template),
                    max_length=d.max_length, max_prompt_length=d.max_prompt_length,
                    truncation=d.truncation)


def check_sqlite_folder(db: str) -> None:
    """An SQLite URL in `labeling.human.db` names a file in a folder that exists: the queue
    would otherwise create every missing folder of a mistyped path (`sqlite:////nonexistent/
    dir/q.db` made /nonexistent/dir)."""
    if not db.startswith("sqlite:"):
        return
    from sqlalchemy.engine import make_url

    try:
        path = make_url(db).database
    except Exception as e:  # noqa: BLE001 (sqlalchemy's ArgumentError: name the key)
        raise RunError(f"config key 'labeling.human.db': not a database URL ({e})") from None
    if path and path != ":memory:" and not Path(path).parent.is_dir():
        raise RunError(f"cannot open the queue database {db}: {Path(path).parent} is not a "
                       "folder (config key 'labeling.human.db'); create it, or give a run "
                       "directory (its queue.db is made there)")
