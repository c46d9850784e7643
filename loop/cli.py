"""The `alignloop` command line. Subcommands import their heavy modules lazily,
so `alignloop --help` never imports torch."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from alignloop import __version__


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="YAML config file (see configs/)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.beta=0.2 (repeatable)")


def cmd_config(args: argparse.Namespace) -> int:
    """Print the resolved config (every default written out), or the documented schema."""
    import yaml
    from alignloop.config import field_docs, load_config, to_dict

    if args.docs:
        for key, doc in field_docs().items():
            print(f"{key}: {doc}")
        return 0
    cfg = load_config(args.config, args.sets)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """One DPO training run on a pairs file: OUT/policy, OUT/train_log.jsonl, OUT/reference_logps.parquet."""
    from dataclasses import replace

    from alignloop.config import dump_config, load_config
    from alignloop.data import read_pairs_from_config
    from alignloop.training.trainer import train_dpo

    cfg = load_config(args.config, args.sets)
    data_path = args.pairs or cfg.data.path
    if not data_path:
        raise SystemExit("error: no pairs given: pass --pairs FILE or set data.path in the config")
    cfg = replace(cfg, data=replace(cfg.data, path=str(data_path)))
    if args.reference:
        cfg = replace(cfg, reference=replace(cfg.reference, model=args.reference))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    pairs, report = read_pairs_from_config(cfg.data)
    logging.getLogger("alignloop").info("read %d pairs (%d rows) from %s; skipped: %s",
                                        report.n_valid, report.n_read, data_path,
                                        report.skipped or "none")
    result = train_dpo(pairs, out_dir=out, policy=cfg.model.name, reference=cfg.reference.model,
                       model_cfg=cfg.model, data_cfg=cfg.data, train_cfg=cfg.train)
    m = result.metrics
    print(f"trained {result.steps} steps on {result.n_pairs} pairs -> {result.policy_dir}")
    if m:
        print(f"final loss {m['loss']:.4f}  accuracy {m['rewards/accuracy']:.2f}  "
              f"margin {m['rewards/margin']:.4f}  tokens/s {m['tokens_per_s']:.0f}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Sample completions for a prompts file; writes a parquet of Completion rows."""
    from alignloop.artifacts import write_parquet
    from alignloop.config import load_config
    from alignloop.generation import SamplingParams, completion_rows, generator_for
    from alignloop.prompt_pool import read_prompts

    sets = [*args.sets, f"generation.n={args.n}"] if args.n is not None else args.sets
    cfg = load_config(args.config, sets)
    g = cfg.generation
    prompts = read_prompts(args.prompts)
    params = SamplingParams.from_config(g)
    # a rerun after a failure asks an openai server only for what is missing
    generator = generator_for(g, args.model or cfg.model.name,
                              cache_path=str(Path(args.out).with_suffix(".received.jsonl")))
    completions = generator.sample(prompts, params)
    rows = completion_rows(completions, prompts, backend=g.backend)
    write_parquet(Path(args.out), rows)
    print(f"wrote {len(rows)} completions for {len(prompts)} prompts -> {args.out}")
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    """Judge every pair of a completions file's samples, select the informative ones within
    the budget and route them (auto / human / drop); writes the candidate table."""
    import json
    from collections import Counter

    from alignloop.artifacts import read_parquet, write_jsonl, write_parquet
    from alignloop.config import load_config
    from alignloop.labeling import LabelingError
    from alignloop.labeling.ensemble import Ensemble
    from alignloop.labeling.labeler import (
        groups_from_completions,
        judge_candidates,
        learn_from_labels,
    )
    from alignloop.labeling.labels import read_labels

    cfg = load_config(args.config, args.sets)
    lab = cfg.labeling
    path = Path(args.candidates)
    if not path.exists():
        raise FileNotFoundError(f"candidates file not found: {path}")
    if path.suffix == ".parquet":
        rows = read_parquet(path)
    else:
        rows = []
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise LabelingError(f"{path} row {n}: invalid JSON ({e.msg})") from None
    groups = groups_from_completions(rows, source=str(path))
    if lab.selection.strategy == "apl":
        groups = _with_logprobs(groups, policy=args.policy or cfg.model.name,
                                reference=args.reference or cfg.reference.model or cfg.model.name)
    ensemble = Ensemble.from_specs(lab.judges) if lab.judges else None
    if ensemble is not None and args.labels:
        history = [x for f in args.labels for x in read_labels(Path(f))]
        ensemble, report = learn_from_labels(ensemble, history, lab)
        for name, c in report.items():
            print(f"calibration {name}: T={c['temperature']:.2f}  ECE {c['ece_before']:.3f} -> "
                  f"{c['ece_after']:.3f} on {c['n']} human-labeled pairs {c['note']}".rstrip())
    if ensemble is None:
        print("no judges configured (labeling.judges): every selected pair is routed to people")
    table = judge_candidates(groups, ensemble, lab, round=args.round, beta=cfg.train.beta)
    if not table.rows:
        raise LabelingError(f"{path}: no prompt has two distinct responses to compare")
    out = Path(args.out)
    (write_parquet if out.suffix == ".parquet" else write_jsonl)(out, table.rows)
    counts = Counter(r["decision"] for r in table.selected())
    print(f"{len(groups)} prompts, {len(table.rows)} candidate pairs, {len(table.selected())} "
          f"selected ({lab.selection.strategy}): {counts.get('auto', 0)} auto, "
          f"{counts.get('human', 0)} human, {counts.get('drop', 0)} drop -> {out}")
    return 0


def _with_logprobs(groups, *, policy: str, reference: str):
    """Groups with each response's sequence log-prob under the policy and the reference."""
    import dataclasses
    import logging

    from alignloop.labeling.logprobs import sequence_logprobs

    if policy == reference:
        logging.getLogger(__name__).warning(
            "apl: policy and reference are the same model (%s): every implicit reward is 0", policy)
    prompts = [g.prompt for g in groups for _ in g.responses]
    responses = [r for g in groups for r in g.responses]
    lp = {m: sequence_logprobs(m, prompts, responses) for m in {policy, reference}}
    out, at = [], 0
    for g in groups:
        k = len(g.responses)
        out.append(dataclasses.replace(g, policy_logps=tuple(lp[policy][at:at + k]),
                                       reference_logps=tuple(lp[reference][at:at + k])))
        at += k
    return out


def cmd_run(args: argparse.Namespace) -> int:
    """Run, or resume, the hybrid loop: round 0 offline DPO, then online rounds on failure
    slices, each with a drift report. Rerunning skips every finished stage."""
    from alignloop.config import load_config
    from alignloop.rounds import Loop

    sets = [*args.sets, f"loop.rounds={args.rounds}"] if args.rounds is not None else args.sets
    cfg = load_config(args.config, sets)
    run_dir = args.run_dir or f"runs/{Path(args.config).stem}"
    summary = Loop(cfg, run_dir).run(redo_from=args.redo_from)
    if summary.get("stopped"):
        print(f"stopped: {summary['stopped']}")
    print(f"rounds finished: {summary['rounds']}")
    print(f"report: {summary['report']}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Per round, each stage's state, time and output size."""
    from alignloop.run import status_table

    print(status_table(args.run_dir))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Render RUN_DIR/report.html (every headline metric across rounds, where the loop stopped
    or was gated) and, with --round, that round's report (report.json, report.md, report.html)."""
    from alignloop.report import write_round_report, write_run_report

    if args.round is not None:
        path = write_round_report(args.run_dir, args.round)
        print(f"round {args.round}: {path.parent / 'report.html'} (report.json, report.md)")
    print(f"run: {write_run_report(args.run_dir)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignloop", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"alignloop {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="DPO on a pairs file (JSONL, parquet, hf:...)",
                       description=cmd_train.__doc__)
    _add_config_args(p)
    p.add_argument("--pairs", help="pairs source; overrides data.path")
    p.add_argument("--reference", help="reference model; overrides reference.model")
    p.add_argument("--out", default="alignloop-train", help="output directory (default: %(default)s)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("generate", help="sample completions for a prompts file",
                       description=cmd_generate.__doc__)
    _add_config_args(p)
    p.add_argument("--prompts", required=True, help="JSONL or parquet with a `prompt` field")
    p.add_argument("--out", required=True, help="output parquet")
    p.add_argument("--n", type=int, help="samples per prompt; overrides generation.n")
    p.add_argument("--model", help="policy checkpoint; overrides model.name")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("run", help="run or resume the loop (round 0 DPO, online rounds, reports)",
                       description=cmd_run.__doc__)
    _add_config_args(p)
    p.add_argument("--rounds", type=int, help="rounds in the run; overrides loop.rounds")
    p.add_argument("--run-dir", help="run directory (default: runs/CONFIG_NAME)")
    p.add_argument("--redo-from", metavar="ROUND:STAGE",
                   help="forget that stage of that round and everything after it, e.g. 1:train "
                        "(needed to rerun a finished round with a changed config)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="each stage's state, time and output size per round",
                       description=cmd_status.__doc__)
    p.add_argument("run_dir", help="run directory")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("report", help="drift reports: RUN_DIR/report.html across rounds",
                       description=cmd_report.__doc__)
    p.add_argument("run_dir", help="run directory")
    p.add_argument("--round", type=int, help="also (re)write this round's report")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("judge", help="judge, select and route pairs of sampled completions",
                       description=cmd_judge.__doc__)
    _add_config_args(p)
    p.add_argument("--candidates", required=True,
                   help="completions (parquet/JSONL from `alignloop generate`)")
    p.add_argument("--out", required=True, help="candidate table (.parquet or .jsonl)")
    p.add_argument("--round", type=int, default=0, help="round number recorded in the table")
    p.add_argument("--labels", action="append", default=[], metavar="FILE",
                   help="labels.parquet of earlier rounds: the learning judges refit on its human "
                        "labels and every judge is calibrated on them (repeatable)")
    p.add_argument("--policy", help="apl: policy model (default model.name)")
    p.add_argument("--reference", help="apl: reference model (default reference.model)")
    p.set_defaults(func=cmd_judge)

    from alignloop.cli_queue import add_queue_commands

    add_queue_commands(sub)

    p = sub.add_parser("config", help="print the resolved config or the documented schema",
                       description=cmd_config.__doc__)
    p.add_argument("config", type=Path, nargs="?", help="YAML config file (default: only defaults)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--docs", action="store_true", help="list every key with its documentation")
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from alignloop.errors import AlignloopError

    try:
        return args.func(args)
    except (AlignloopError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
