"""`alignloop train`, `generate` and `judge`: one step of the loop on files, outside a run;
`push` and `export-pairs`: a run's policy and pairs out to Hugging Face formats."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from alignloop.errors import AlignloopError
from alignloop.outputs import check_new_output, check_not_in_run


def cmd_train(args: argparse.Namespace) -> int:
    """One DPO training run on a pairs file: OUT/policy, OUT/train_log.jsonl, OUT/reference_logps.parquet."""
    import shutil
    from dataclasses import replace

    from alignloop.config import dump_config, load_config, to_dict
    from alignloop.data import read_pairs_from_config
    from alignloop.errors import AlignloopError
    from alignloop.models import check_model
    from alignloop.placement import placement_for
    from alignloop.tracking import check_trackers, open_tracker
    from alignloop.training.trainer import train_dpo

    cfg = load_config(args.config, args.sets)
    data_path = args.pairs or cfg.data.path
    if not data_path:
        raise AlignloopError("no pairs given: pass --pairs FILE or set data.path in the config")
    cfg = replace(cfg, data=replace(cfg.data, path=str(data_path)))
    if args.reference:
        cfg = replace(cfg, reference=replace(cfg.reference, model=args.reference))
    # Every check before anything is written: a refused command leaves OUT as it was.
    pairs, report = read_pairs_from_config(cfg.data)
    for key, ref in (("model.name", cfg.model.name), ("reference.model", cfg.reference.model)):
        if ref:
            check_model(ref, key)
    placement = placement_for(cfg.model)
    check_trackers(cfg.tracking.report_to)
    logging.getLogger("alignloop").info("read %d pairs (%d rows) from %s; skipped: %s",
                                        report.n_valid, report.n_read, data_path,
                                        report.skipped or "none")
    out = Path(args.out)
    _check_train_out(out, force=args.force)
    created = not out.exists()
    tracker = None
    try:
        tracker = open_tracker(cfg.tracking, out, config=to_dict(cfg))  # tracking.report_to
        result = train_dpo(pairs, out_dir=out, policy=cfg.model.name,
                           reference=cfg.reference.model, model_cfg=cfg.model,
                           data_cfg=cfg.data, train_cfg=cfg.train, placement=placement,
                           on_log=tracker and tracker.step_logger(None), restart=args.force)
    except AlignloopError:
        # a tracker that cannot start (no wandb login), or a refusal inside the trainer (a
        # pair too long): leave no new folder
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        if tracker is not None:
            tracker.close()
    # With the outputs it describes, atomically, and the placement it ran with.
    ran = replace(cfg.model, device=placement.device, precision=placement.precision)
    dump_config(replace(cfg, model=ran), out / "config.yaml",
                header=f"model.device: {cfg.model.device} and model.precision: "
                       f"{cfg.model.precision} resolved to {placement.device}, "
                       f"{placement.precision} ({placement.why})")
    m = result.metrics
    print(f"trained {result.steps} steps on {result.n_pairs} pairs -> {result.policy_dir} "
          f"({placement.device}, {placement.precision})")
    if m:
        print(f"final loss {m['loss']:.4f}  accuracy {m['rewards/accuracy']:.2f}  "
              f"margin {m['rewards/margin']:.4f}  tokens/s {m['tokens_per_s']:.0f}")
    return 0


def _check_train_out(out: Path, *, force: bool) -> None:
    """OUT must be a directory or not exist, and must not hold a finished training run (its
    policy/) unless --force: training again would replace that policy silently. A killed
    run (a checkpoint, no policy/) is resumed as before. A folder holding other things and
    no training run's files is refused: the run would be mixed into it."""
    from alignloop.errors import AlignloopError

    if out.exists() and not out.is_dir():
        raise AlignloopError(f"--out {out}: is a file; give a directory")
    check_not_in_run(out)
    if (out / "policy").exists() and not force:
        raise AlignloopError(f"--out {out}: holds a trained policy already; give another "
                             "directory, or --force to train again and replace it")
    ours = any((out / name).exists() for name in _TRAIN_OUTPUTS)
    if (out / "config.yaml").exists() and not ours:
        # the resolved config is written there at the end: it would replace the user's own
        raise AlignloopError(f"--out {out}: holds a config.yaml that is not a training run's; "
                             "move it out of the folder, or give another directory")
    others = sorted(p.name for p in out.iterdir()) if out.is_dir() and not ours else []
    if others:
        # a training run's files would be mixed into a folder of other things
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise AlignloopError(f"--out {out}: holds other files ({shown}) and no training run; "
                             "give an empty or new directory")


# what `train` writes into OUT; any of them makes OUT a (possibly interrupted) training run
_TRAIN_OUTPUTS = ("policy", "checkpoint", "train_log.jsonl", "train_timing.jsonl",
                  "reference_logps.parquet", "tracking", "tracking.json")


def _check_generate_out(out: Path, *, force: bool) -> None:
    """Before sampling: OUT names a .parquet file that can be written, so a long sampling
    run does not end in an error on its output path, and replaces no file unless --force
    (never a run's)."""
    from alignloop.errors import AlignloopError

    if out.suffix != ".parquet":
        raise AlignloopError(f"--out {out}: completions are written as parquet; give a path "
                             "ending in .parquet")
    if out.is_dir():
        raise AlignloopError(f"--out {out}: is a directory; give a file path")
    check_new_output(out, force=force)
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise AlignloopError(f"--out {out}: {parent} is a file, not a directory")


def cmd_generate(args: argparse.Namespace) -> int:
    """Sample completions for a prompts file; writes a parquet of Completion rows."""
    from alignloop.artifacts import write_parquet
    from alignloop.config import load_config
    from alignloop.generation import SamplingParams, completion_rows, generator_for
    from alignloop.placement import placement_for
    from alignloop.prompt_pool import read_prompts

    sets = [*args.sets, f"generation.n={args.n}"] if args.n is not None else args.sets
    cfg = load_config(args.config, sets)
    g = cfg.generation
    _check_generate_out(Path(args.out), force=args.force)
    prompts = read_prompts(args.prompts)
    params = SamplingParams.from_config(g)
    # a rerun after a failure asks an openai server only for what is missing
    generator = generator_for(g, args.model or cfg.model.name,
                              cache_path=str(Path(args.out).with_suffix(".received.jsonl")),
                              chat_template=cfg.data.chat_template,
                              placement=placement_for(cfg.model))
    completions = generator.sample(prompts, params)
    rows = completion_rows(completions, prompts, backend=generator.name)  # auto resolved
    write_parquet(Path(args.out), rows)
    print(f"wrote {len(rows)} completions for {len(prompts)} prompts -> {args.out}")
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    """Judge every pair of a completions file's samples, select the informative ones within
    the budget and route them (auto / human / drop); writes the candidate table."""
    from collections import Counter

    from alignloop.artifacts import read_rows, write_jsonl, write_parquet
    from alignloop.config import load_config
    from alignloop.labeling import LabelingError
    from alignloop.labeling.ensemble import Ensemble
    from alignloop.labeling.labeler import (
        groups_from_completions,
        judge_candidates,
        learn_from_labels,
    )
    from alignloop.labeling.labels import read_labels
    from alignloop.labeling.logprobs import with_logprobs
    from alignloop.placement import placement_for

    cfg = load_config(args.config, args.sets)
    lab = cfg.labeling
    path, out = Path(args.candidates), Path(args.out)
    if not path.exists():
        raise FileNotFoundError(f"candidates file not found: {path}")
    if out.suffix not in (".parquet", ".jsonl"):
        raise AlignloopError(f"--out {out}: the candidate table is written as .parquet or "
                             f".jsonl, not {out.suffix or 'a name without a suffix'}")
    if out.resolve() == path.resolve():
        raise AlignloopError(f"--out {out}: is the --candidates file itself; give another path")
    check_new_output(out, force=args.force)     # before any judge runs
    rows = read_rows(path, LabelingError)
    groups = groups_from_completions(rows, source=str(path))
    if lab.selection.strategy == "apl":
        groups = with_logprobs(groups, policy=args.policy or cfg.model.name,
                               reference=args.reference or cfg.reference.model or cfg.model.name,
                               chat_template=cfg.data.chat_template,
                               placement=placement_for(cfg.model))
    ensemble = Ensemble.from_specs(lab.judges, placement_for(cfg.model)) if lab.judges else None
    if ensemble is not None and args.labels:
        history = [x for f in args.labels for x in read_labels(Path(f))]
        ensemble, report = learn_from_labels(ensemble, history, lab)
        for name, c in report.items():
            if "temperature" in c:
                print(f"calibration {name}: T={c['temperature']:.2f}  ECE {c['ece_before']:.3f}"
                      f" -> {c['ece_after']:.3f} on {c['n']} human-labeled pairs "
                      f"{c['note']}".rstrip())
            if "set_aside" in c:
                print(f"judge {name} set aside: {c['set_aside']}")
    if ensemble is None:
        print("no judges configured (labeling.judges): every selected pair is routed to people")
    table = judge_candidates(groups, ensemble, lab, round=args.round, beta=cfg.train.beta)
    if not table.rows:
        raise LabelingError(f"{path}: no prompt has two distinct responses to compare")
    if out.suffix == ".parquet":
        write_parquet(out, table.rows)
    else:                          # the prompt as given (parquet holds it as JSON text)
        write_jsonl(out, [{**r, "prompt": json.loads(r["prompt"])} for r in table.rows])
    counts = Counter(r["decision"] for r in table.selected())
    print(f"{len(groups)} prompts, {len(table.rows)} candidate pairs, {len(table.selected())} "
          f"selected ({lab.selection.strategy}): {counts.get('auto', 0)} auto, "
          f"{counts.get('human', 0)} human, {counts.get('drop', 0)} drop -> {out}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """Upload a round's policy to the Hugging Face Hub with its model card: the weights (or
    the LoRA adapter, when its base is a Hub model) and the tokenizer; --merged uploads the
    merged full weights of a LoRA round. Needs a Hub login (`hf auth login` or HF_TOKEN)."""
    from alignloop.hub import push

    url = push(args.run_dir, args.round, args.repo, merged=args.merged, private=args.private)
    print(f"pushed round {args.round} of {args.run_dir} to {args.repo}: {url}")
    return 0


def cmd_export_pairs(args: argparse.Namespace) -> int:
    """Every pair a run trained on, once, as a `datasets.Dataset` directory (save_to_disk):
    TRL's preference columns prompt/chosen/rejected plus p_chosen, weight, n_votes, source,
    slice, round (the round that made the pair) and pair_id. Load it with
    `datasets.load_from_disk(OUT)`."""
    from alignloop.hub import export_pairs

    n = export_pairs(args.run_dir, args.out, force=args.force)
    print(f"wrote {n} pairs -> {args.out} (datasets.load_from_disk)")
    return 0
