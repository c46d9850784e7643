"""Noisy and disagreeing labels with more data: does soft-label or robust DPO converge
under label noise where hard-label DPO does not? (issue 19)

    python benchmarks/label_noise.py --size smoke|quick|target|full [--conditions C,..] [--losses L,..]

Candidates: the size's model samples 4 responses per training prompt once (temperature
0.7, top-p 0.9). The pair pool ranks each prompt's samples by the demo's heuristic judge:
tier 0 is best vs worst of every prompt, tier 1 second best vs second worst (disjoint
samples, a smaller judge gap); the pool lists all of tier 0 (prompts in a seeded order)
before tier 1, and a data size of N pairs trains on the pool's first N, so the sizes are
nested. Each pair gets three votes from annotators drawn from a panel (a pair's votes
depend on the seed and the pair only, not on the size):

- clean / flip20 / flip40: the demo panel; each vote flipped with probability 0, 0.2,
  0.4 (nested: a vote flipped at 20% is flipped at 40% too);
- disagree: two of the five annotators prefer longer answers, the ground truth does not.

The votes are aggregated as the loop does (Dawid-Skene); one DPO round of the loop (the
demo's LoRA settings, `train.epochs` passes over the pairs, so the optimizer steps grow
with the data) then trains each of:

- `sigmoid`: the majority label, as certain;
- `soft`: the posterior P(chosen preferred) as the label;
- `rdpo`: the majority label, robust DPO (Chowdhury et al. 2024) with the flip rate
  estimated from the posteriors: the mean posterior probability that the majority is wrong;
- `rdpo_gold`: the same with the flip rate measured on gold items: the held-out prompts'
  pairs, built as the training pairs are (tiers 0 and 1) and voted on by the same panel
  with the same flips, their answers the ground truth; the posteriors of training and
  gold pairs (one Dawid-Skene fit) are rescaled by the temperature that fits the gold
  answers (`alignloop.labeling.gold`), and the flip rate is the mean calibrated
  probability that the majority is wrong. Its gold votes are spent on top of the
  training pairs' (the table's footer gives how many);
- `rdpo_true` (control): the same with the true flip rate, the share of the training
  pairs whose majority label disagrees with the ground truth (the panel's mean utility).

Measured on the held-out prompts (label_noise_stats.py): panel-reward gain over the base
model, KL to the base, the kept share of the clean gain (same size, loss and seed), each
with a 95% two-stage bootstrap interval over seeds x prompts, and the implicit reward's
accuracy on truth-labeled held-out pairs. Every run is an ordinary run directory under
runs/bench/label_noise/SIZE/ and its measures are kept in results/NAME.runs.json, so a
killed sweep continues where it stopped.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import label_noise_stats as stats  # noqa: E402
from common import RESULTS, machine, today, update_readme  # noqa: E402
from label_noise_runs import (  # noqa: E402
    RunCache,
    candidates,
    heldout_pairs,
    measure,
    pair_pool,
    provenance,
    score_pairs,
)
from loop_bench import RUNS, demo_raw, make_config, run_loop, write_rows  # noqa: E402

MODEL = "builtin:smollm2-135m-instruct"
LOSSES = ("sigmoid", "soft", "rdpo", "rdpo_gold", "rdpo_true")
FLIPS = {"clean": 0.0, "flip20": 0.2, "flip40": 0.4, "disagree": 0.0}
SIZES = {
    # for tests: the random 2-layer model, two tiny sizes, two losses (8 runs of the loop)
    "smoke": {"model": "builtin:tiny-random", "pairs": (4, 8), "seeds": 1, "epochs": 1,
              "conditions": ("clean", "flip40"), "losses": ("sigmoid", "rdpo"),
              "train_prompts": 6, "heldout_prompts": 2, "eval_prompts": 3, "max_new_tokens": 6},
    "quick": {"model": MODEL, "pairs": (24, 72), "seeds": 1, "epochs": 2,
              "conditions": ("clean", "flip40"), "train_prompts": 40, "heldout_prompts": 4,
              "eval_prompts": 16, "max_new_tokens": 32},
    # the target's cells and the data-size axis below them: 40% flips and its clean
    # control, hard labels vs rdpo, one epoch; 480 pairs is where the target is read (12
    # runs of about 9 min on 2 quiet cores), 120 and 240 give the axis (`full`: about 10 h)
    "target": {"model": MODEL, "pairs": (120, 240, 480), "seeds": 3, "epochs": 1,
               "conditions": ("clean", "flip40"), "losses": ("sigmoid", "rdpo"),
               "train_prompts": 0, "heldout_prompts": 40, "eval_prompts": 0, "max_new_tokens": 32},
    # the noise levels and the disagreeing panel the target size leaves out, at its largest
    # data size, hard vs soft labels (8 runs per seed of about 9 min on 2 cores with bf16
    # units; `--losses rdpo` adds 4, `--partial` tables the seeds each cell has): how the kept share falls with the flip rate, and what a panel
    # that disagrees systematically does
    "conditions": {"model": MODEL, "pairs": (480,), "seeds": 3, "epochs": 1,
                   "conditions": ("clean", "flip20", "disagree", "flip40"),
                   "losses": ("sigmoid", "soft"), "train_prompts": 0, "heldout_prompts": 40,
                   "eval_prompts": 0, "max_new_tokens": 32},
    "full": {"model": MODEL, "pairs": (120, 240, 480), "seeds": 3, "epochs": 2,
             "conditions": ("clean", "flip20", "flip40", "disagree"), "train_prompts": 0,
             "heldout_prompts": 40, "eval_prompts": 0, "max_new_tokens": 32},
}
VOTES = 3
PAIRS_PER_STEP = 8          # the demo's batch_size 4 x grad_accum 2
MAX_FLIP_RATE = 0.45        # rdpo needs epsilon < 0.5; its loss blows up near 0.5


def split_panel():
    """Systematic disagreement: three of the demo's annotators and two who like length."""
    from alignloop.demo.panel import PANELS, Annotator

    demo = {a.name: a for a in PANELS["demo"]}
    return (demo["warm"], demo["on_topic"], demo["balanced"],
            Annotator("verbose", 1.0, -0.8, 0.8), Annotator("wordy", 0.8, -1.2, 0.6))


# --------------------------------------------------------------------------- labels


def votes(pairs: list[dict], condition: str, seed: int) -> list:
    """Three votes per pair from the condition's panel, with the condition's flips. A pair's
    annotators, votes and flip draws come from its own generator (seed, pair key), so they
    do not depend on the other pairs (the sizes are nested) nor on the flip rate (the flip
    conditions are nested: each vote flipped at 20% is also flipped at 40%)."""
    from alignloop.demo import panel as demo_panel
    from alignloop.labeling.aggregate import Vote

    panel, PANELS = _panel(demo_panel.Panel), demo_panel.PANELS
    annotators = split_panel() if condition == "disagree" else PANELS["demo"]
    out = []
    for p in pairs:
        rng = random.Random(f"{seed}/{p['key']}")
        for who in rng.sample(annotators, VOTES):
            choice = panel.vote(p["prompt"], p["a"], p["b"], who, rng)
            if rng.random() < FLIPS[condition]:
                choice = "b" if choice == "a" else "a"
            out.append(Vote(p["key"], who.name, choice))
    return out


@functools.lru_cache(maxsize=2)
def _panel(cls):
    """One demo panel (of class `cls`, looked up at each call so a test may replace it) for
    every call: it keeps each response's features, so a response is encoded once however
    many votes, conditions and seeds read it."""
    return cls("demo")


def _majority_a(ballots: list) -> dict[str, bool]:
    tally: dict[str, int] = {}
    for v in ballots:
        tally[v.item] = tally.get(v.item, 0) + (1 if v.choice == "a" else -1)
    return {k: t > 0 for k, t in tally.items()}


def labeled_rows(pairs: list[dict], ballots: list, loss: str) -> tuple[list[dict], float]:
    """Training rows for `loss` and the estimated flip rate of the majority labels (mean
    posterior P(majority wrong)). sigmoid and rdpo train on the majority label; soft on the
    Dawid-Skene posterior (its chosen side is the posterior's, which may differ from the
    majority when the model trusts some annotators more)."""
    from alignloop.labeling.aggregate import aggregate_votes

    post = aggregate_votes(ballots).posteriors
    majority = _majority_a(ballots)
    rows, wrong = [], []
    for p in pairs:
        pa = post[p["key"]].p_a
        wrong.append(1 - pa if majority[p["key"]] else pa)
        a_wins = pa >= 0.5 if loss == "soft" else majority[p["key"]]
        chosen, rejected = (p["a"], p["b"]) if a_wins else (p["b"], p["a"])
        prob = max(pa, 1 - pa) if loss == "soft" else 1.0
        rows.append({"prompt": p["prompt"], "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": rejected}],
                     "p_chosen": round(prob, 4), "slice": p["slice"]})
    return rows, min(MAX_FLIP_RATE, sum(wrong) / len(wrong))


def gold_flip_rate(pairs: list[dict], ballots: list, gold: list[dict], condition: str,
                   seed: int) -> tuple[float, dict]:
    """(flip rate, what it came from) for `rdpo_gold`: the gold pairs get votes as the
    training pairs do (same panel, flips and seed), one Dawid-Skene fit takes every vote,
    and the temperature fitted on the gold posteriors against the truth rescales the
    training pairs' posteriors before the mean P(majority wrong) is taken."""
    from alignloop.labeling.aggregate import aggregate_votes
    from alignloop.labeling.gold import calibrate_to_gold, flip_rate

    gold_ballots = votes(gold, condition, seed)
    post = aggregate_votes([*ballots, *gold_ballots]).posteriors
    answers = {g["key"]: "tie" if g["truth_a"] == g["truth_b"] else
               ("a" if g["truth_a"] > g["truth_b"] else "b") for g in gold}
    fit = calibrate_to_gold({k: p.p_a for k, p in post.items()}, answers)
    majority = _majority_a(ballots)
    eps = flip_rate([post[p["key"]].p_a for p in pairs], [majority[p["key"]] for p in pairs],
                    fit.temperature)
    return min(MAX_FLIP_RATE, eps), {"gold_items": fit.n, "gold_votes": len(gold_ballots),
                                     "gold_temperature": round(fit.temperature, 4),
                                     "gold_note": fit.note}


def gold_pairs(cands: dict) -> list[dict]:
    """The gold items of `rdpo_gold`: the held-out prompts' pairs, built as the training
    pool is (never trained on; the held-out measures use the samples, not these votes)."""
    return pair_pool({"train": cands["heldout"]})


def true_flip_rate(pairs: list[dict], ballots: list) -> float:
    """Share of the pairs whose majority label disagrees with the ground truth (a tie in
    the truth counts half): what `rdpo_true` is told."""
    majority = _majority_a(ballots)
    wrong = [0.5 if p["truth_a"] == p["truth_b"] else float(majority[p["key"]] != (p["truth_a"] > p["truth_b"]))
             for p in pairs]
    return min(MAX_FLIP_RATE, sum(wrong) / len(wrong))


# --------------------------------------------------------------------------- running


def run_config(spec: dict, data: Path, loss: str, flip_rate: float, seed: int):
    """One DPO round of the loop on `data`: the demo config with the size's model, every
    pair trained on (none held out), the heuristic judge only (the measures use the
    panel's ground truth, not the judges), no human labels."""
    raw = demo_raw()
    raw["labeling"]["judges"] = [{"kind": "python", "function": "alignloop.demo.judge:heuristic_score"}]
    return make_config(raw, {
        "model.name": spec["model"], "data.path": str(data),
        "train.loss": "rdpo" if loss.startswith("rdpo") else loss,
        "train.flip_rate": round(flip_rate, 4), "train.epochs": spec["epochs"],
        "train.max_steps": 0, "train.seed": seed, "loop.seed": seed, "loop.rounds": 1,
        "loop.eval_prompts": spec["eval_prompts"], "loop.heldout_pair_share": 0.0,
        "labeling.human.budget": 0, "generation.max_new_tokens": spec["max_new_tokens"]})


def run_order(spec: dict) -> list[tuple[int, int]]:
    """(data size, seed) in the order a sweep runs them: every seed of the largest size
    first (the target is read there), then seed by seed the smaller sizes, largest first,
    so a sweep stopped early has the target and the whole data-size axis at its first
    seeds."""
    sizes = sorted(spec["pairs"], reverse=True)
    seeds = range(spec["seeds"])
    return [(sizes[0], s) for s in seeds] + [(n, s) for s in seeds for n in sizes[1:]]


def steps(spec: dict, n: int) -> int:
    return spec["epochs"] * math.ceil(n / PAIRS_PER_STEP)


def sweep(spec: dict, size: str, work: Path, cache: RunCache, conditions, losses) -> None:
    """Run every (data size, seed, condition, loss) not yet in the cache."""
    from alignloop.progress import tqdm

    t0 = time.perf_counter()
    cands = candidates(spec, work)
    if "candidates_s" not in cache.meta:
        cache.note("candidates_s", round(time.perf_counter() - t0, 1))
    pool = pair_pool(cands)
    if len(pool) < max(spec["pairs"]):
        raise SystemExit(f"label_noise: size {size!r} asks for {max(spec['pairs'])} pairs but its "
                         f"candidates give {len(pool)}; raise SIZES[{size!r}]['train_prompts']")
    todo = [(n, s, c, loss) for n, s in run_order(spec) for c in conditions for loss in losses
            if not cache.has(n, s, c, loss)]
    if not todo:            # tables only: no base-model pass over the held-out pairs
        return
    held = heldout_pairs(cands)
    base_scores = score_pairs(spec["model"], {"base": spec["model"]}, held)["base"] if held else []
    with tqdm(total=len(todo), desc=f"label_noise {size}", unit="runs") as bar:
        for n, seed, cond, loss in todo:
            pairs = pool[:n]
            ballots = votes(pairs, cond, seed)
            rows, eps = labeled_rows(pairs, ballots, loss)
            gold = {}
            if loss == "rdpo_true":
                eps = true_flip_rate(pairs, ballots)
            elif loss == "rdpo_gold":
                eps, gold = gold_flip_rate(pairs, ballots, gold_pairs(cands), cond, seed)
            run_dir = work / f"n{n}" / f"seed{seed}" / f"{cond}-{loss}"
            data = write_rows(run_dir.parent / f"{cond}-{loss}.jsonl", rows)
            t = time.perf_counter()
            run_loop(run_config(spec, data, loss, eps, seed), run_dir)
            m = measure(run_dir, spec["model"], held, base_scores)
            m.update(flip_rate=round(eps, 6), seconds=round(time.perf_counter() - t, 1),
                     steps=steps(spec, n), **gold, **provenance(run_dir, work))
            cache.put(n, seed, cond, loss, m)
            bar.update(1)


def cell_seeds(cache: RunCache, spec: dict, losses) -> dict[tuple[int, str, str], list[int]]:
    """{(data size, condition, loss): seeds} of the finished runs a table may use, cells
    with none left out: a noisy cell has the seeds at which it and its clean control (same
    size, loss and seed) both finished, so its kept share stays paired; the clean cell has
    the seeds its noisy cells use (a clean run with no noisy partner yet gets no row)."""
    out: dict[tuple[int, str, str], list[int]] = {}
    for n in spec["pairs"]:
        for loss in losses:
            clean: set[int] = set()
            for cond in spec["conditions"]:
                done = [s for s in range(spec["seeds"]) if cond != "clean"
                        and cache.has(n, s, cond, loss) and cache.has(n, s, "clean", loss)]
                if done:
                    out[(n, cond, loss)] = done
                    clean.update(done)
            if clean:
                out[(n, "clean", loss)] = sorted(clean)
    return out


def _seed_counts(cells: dict[tuple, list[int]], spec: dict) -> str:
    per_size: dict[int, set[int]] = {}
    for (n, _, _), seeds in cells.items():
        per_size.setdefault(n, set()).add(len(seeds))
    if all(c == {spec["seeds"]} for c in per_size.values()):
        return f"{spec['seeds']} seed(s)"
    partial = f"(of {spec['seeds']}: a partial table, `--partial`)"
    if all(len(c) == 1 for c in per_size.values()):
        return ("seeds " + ", ".join(f"{min(c)} at {n}" for n, c in sorted(per_size.items()))
                + f" {partial}")
    return ("seeds per row as in the seeds column: a row's seeds are those at which it and "
            f"its clean control finished {partial}")


def _extra_note(loss: str, done: dict[int, list[int]]) -> str:
    seeds = ", ".join(f"{len(ss)} at {n} pairs" for n, ss in sorted(done.items()))
    return (f"`{loss}` is outside this size's sweep (run with `--losses {loss}`): its rows "
            f"are the seeds it finished, {seeds}. ")


def provenance_note(runs: dict) -> str:
    """A footer sentence when the table's runs differ in precision or in the candidates
    their pairs came from (e.g. a loss run later on a machine where `auto` resolved to
    another precision); nothing when they all agree."""
    seen: dict[str, set] = {}
    for (_, _, loss), measured in runs.items():
        seen.setdefault(loss, set()).update(
            (m.get("precision", "not recorded"), m.get("candidates", "not recorded"))
            for m in measured)
    if len(set().union(*seen.values())) <= 1:
        return ""
    groups: dict[tuple, list[str]] = {}
    for loss, kinds in seen.items():
        groups.setdefault(tuple(sorted(kinds)), []).append(f"`{loss}`")
    said = "; ".join(", ".join(losses) + ": " + ", ".join(
        "precision and candidates not recorded" if p == c == "not recorded"
        else f"{p}, candidates {c}" for p, c in kinds) for kinds, losses in groups.items())
    mixed = [f"`{loss}`" for loss, kinds in seen.items() if len(kinds) > 1]
    within = (f"{', '.join(mixed)} mixes them within the loss, so its kept share pairs clean "
              "and noisy runs of different kinds. " if mixed else
              "Each loss's clean and noisy runs share theirs, so its kept share is paired; "
              "compare kept shares rather than gains across losses. ")
    return (f"The runs differ in precision or candidates ({said}): runs on other candidates "
            f"trained on other pairs. {within}")


def measured_note(runs: dict) -> str:
    """Which machines measured the table's runs, and on which days, per loss: a cache
    gathers runs made on several machines (runs from before 2026-12-06 recorded neither)."""
    unrecorded = "machine and day not recorded"
    seen: dict[str, dict[str, set]] = {}
    for (_, _, loss), measured in runs.items():
        for m in measured:
            days = seen.setdefault(loss, {}).setdefault(m.get("machine", unrecorded), set())
            days.update([m["date"]] if "date" in m else [])
    if all(set(machines) == {unrecorded} for machines in seen.values()):
        return "The runs do not record their machine and day (runs made since 2026-12-06 do). "
    groups: dict[str, list[str]] = {}
    for loss, machines in seen.items():
        said = "; ".join(by + "".join(f", {d}" for d in sorted(days))
                         for by, days in sorted(machines.items()))
        groups.setdefault(said, []).append(f"`{loss}`")
    return "Runs measured on: " + "; ".join(
        f"{', '.join(losses)}: {said}" for said, losses in groups.items()) + ". "


def full_estimate(cache: RunCache, spec: dict) -> str:
    """The full sweep's duration extrapolated from this size's timed runs: seconds per run
    = a + b * optimizer steps (least squares), the fixed part a scaled by the full size's
    held-out prompts (an over-estimate: model loads do not grow), plus the candidates."""
    import numpy as np

    timed = [m for m in cache.runs.values() if "seconds" in m]
    if len({m["steps"] for m in timed}) < 2:
        return ""
    b, a = np.polyfit([m["steps"] for m in timed], [m["seconds"] for m in timed], 1)
    full = SIZES["full"]
    scale = 91 / spec["eval_prompts"] if spec["eval_prompts"] else 1.0    # 91 held-out prompts
    runs = [(n, s) for n in full["pairs"] for s in range(full["seeds"])
            for _ in full["conditions"] for _ in LOSSES]
    total = sum(a * scale + b * steps(full, n) for n, _ in runs)
    total += cache.meta.get("candidates_s", 0) * 329 / max(spec["train_prompts"], 1)
    return (f"Full size extrapolated from these {len(timed)} timed runs ({b:.1f} s per step "
            f"+ {a:.0f} s per run here): about {total / 3600:.1f} h for {len(runs)} runs "
            f"under the same load.")


# --------------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The arguments, each checked before anything is read or written."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="quick")
    ap.add_argument("--conditions", help="comma-separated conditions to run now, without "
                    "tables (e.g. one per process); default: all of the size, then the tables")
    ap.add_argument("--losses", help="comma-separated losses to run now, without tables")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    ap.add_argument("--work", type=Path, default=RUNS / "label_noise", help="run directories")
    ap.add_argument("--no-readme", action="store_true", help="write the results files only")
    ap.add_argument("--partial", action="store_true", help="run nothing: write the tables "
                    "from the runs finished so far, each data size with the seeds it has "
                    "complete (e.g. while a sweep runs in another process, or after a stop)")
    args = ap.parse_args(argv)
    if args.partial and (args.conditions or args.losses):
        ap.error("argument --partial: runs nothing, so --conditions/--losses do not apply")
    for name, valid in (("conditions", tuple(FLIPS)), ("losses", LOSSES)):
        value = getattr(args, name)
        if value is None:
            continue
        picked = value.split(",")
        bad = [x for x in picked if x not in valid]
        if bad or not value:
            ap.error(f"argument --{name}: unknown {bad or [value]}; valid: {','.join(valid)}")
        setattr(args, name, tuple(dict.fromkeys(picked)))
    for name in ("out", "work"):
        if getattr(args, name).exists() and not getattr(args, name).is_dir():
            ap.error(f"argument --{name}: {getattr(args, name)} is a file, not a directory")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    spec = SIZES[args.size]
    load_start, t0 = os.getloadavg(), time.perf_counter()
    name = "label_noise" if args.size == "full" else f"label_noise.{args.size}"
    cache = RunCache(args.out / f"{name}.runs.json", args.size, spec, args.work / args.size)
    losses = spec.get("losses", LOSSES)
    if not args.partial:
        sweep(spec, args.size, args.work / args.size, cache,
              args.conditions or spec["conditions"], args.losses or losses)
    if args.conditions or args.losses:
        return
    others = [loss for loss in LOSSES if loss not in losses]
    if args.partial:        # every loss, each cell with the seeds it has finished
        cells = cell_seeds(cache, spec, [*losses, *others])
    else:                   # the sweep's own cells are complete; other losses where finished
        cells = {(n, c, loss): list(range(spec["seeds"]))
                 for n in spec["pairs"] for c in spec["conditions"] for loss in losses}
        cells.update(cell_seeds(cache, spec, others))
    if not cells:
        raise SystemExit(f"label_noise: no data size of {args.size!r} has a finished pair of "
                         f"clean and noisy runs in {cache.path}")
    shown = [loss for loss in (*losses, *others) if any(k[2] == loss for k in cells)]
    extra = {loss: {n: ss for (n, c, lo), ss in cells.items() if lo == loss and c == "clean"}
             for loss in others if loss in shown}
    sizes = sorted({n for n, _, _ in cells})
    runs = {(n, c, loss): [{**cache.get(n, s, c, loss), "seed": s} for s in ss]
            for (n, c, loss), ss in cells.items()}
    rows = stats.summarise(runs, sizes, spec["conditions"], shown)
    top = max(spec["pairs"])
    check = stats.target_check(rows, top) if (top, "flip40", "sigmoid") in cells else None
    command = f"python benchmarks/label_noise.py --size {args.size}" + (
        " --partial" if args.partial else "")
    load = f"load average {load_start[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    footer = (f"{args.size} size: {', '.join(map(str, sizes))} training pairs x {VOTES} "
              f"votes, {_seed_counts(cells, spec)}, {spec['epochs']} epochs of {PAIRS_PER_STEP} "
              f"pairs per step ({', '.join(str(steps(spec, n)) for n in sizes)} steps), "
              f"{spec['eval_prompts'] or 'all 91'} held-out prompts for reward and KL. "
              f"{''.join(_extra_note(loss, done) for loss, done in extra.items())}"
              f"{provenance_note(runs)}{measured_note(runs)}"
              f"Tables written on {machine()}; {today()}; {load}; this invocation "
              f"{(time.perf_counter() - t0) / 60:.1f} min; `{command}`.")
    estimate = full_estimate(cache, spec) if args.size == "quick" else ""
    md = stats.table(rows, check) + "\n" + footer + (f"\n{estimate}" if estimate else "")
    meta = {"size": args.size, **{k: list(v) if isinstance(v, tuple) else v for k, v in spec.items()},
            "losses": shown, "votes": VOTES, "machine": machine(), "date": today(),
            "command": command}
    if check is not None:   # the keys benchmarks/summary.py reads
        meta.update(target_met=check["met"], best_robust=check["best_robust"],
                    kept_robust=check["kept_robust"]["value"], kept_hard=check["kept_hard"]["value"],
                    target_check=check)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(_rounded({"meta": meta, "results": rows}),
                                                      indent=2) + "\n")
    (args.out / f"{name}.md").write_text(md + "\n")
    stats.plot(rows, args.out / f"{name}.png")
    if args.out.resolve() == RESULTS.resolve() and args.size != "smoke" and not args.no_readme:
        plot_line = f"\n\n![label noise, quick](benchmarks/results/{name}.png)"   # full: below its block
        update_readme(md + (plot_line if args.size == "quick" else ""), key=name)
    print(md)


def _rounded(x):
    """Floats to 6 decimals, so the results file reads the same on every platform."""
    if isinstance(x, float):
        return round(x, 6) if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_rounded(v) for v in x]
    return x


if __name__ == "__main__":
    main()
