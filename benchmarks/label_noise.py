"""Noisy and disagreeing labels: hard-label DPO vs soft labels vs robust DPO on the demo task.

    python benchmarks/label_noise.py --size quick|full

One candidate set, sampled once from the embedded SmolLM2-135M-Instruct (4 samples per
prompt, temperature 0.7, top-p 0.9): on training prompts the pair is the best and worst
sample by the demo's heuristic judge; on held-out prompts every pair whose ground-truth
utilities differ by at least 0.1 is a truth-labeled held-out pair. Each training pair
gets three votes from annotators drawn from a panel, then:

- clean / flip20 / flip40: the demo panel; each vote flipped with probability 0, 0.2,
  0.4 (nested: a vote flipped at 20% is flipped at 40% too);
- disagree: a panel with systematic disagreement, two of its five annotators prefer
  longer answers while the ground truth penalises length.

The votes are aggregated as the loop does (Dawid-Skene) and trained, one DPO round of
the loop each, with:

- `sigmoid`: the majority label, as certain;
- `soft`: the posterior P(chosen preferred) as the label;
- `rdpo`: the majority label with robust DPO (Chowdhury et al. 2024), flip rate
  estimated from the posteriors (mean P(majority wrong)); the paper assumes it known.

Measured: latent-reward gain over the base model on the held-out prompts (ground truth
= the demo panel's mean utility), KL to the base, gain per nat of KL, and held-out
preference accuracy of the implicit reward (sign of the policy-vs-base log-ratio gap)
against the ground truth. Target: at 40% flips, `soft` or `rdpo` keeps at least 70% of
its clean-label gain while hard-label DPO keeps clearly less (here: at least 0.15 less).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, machine, results_name, today, write_results  # noqa: E402
from loop_bench import (  # noqa: E402
    RUNS,
    demo_raw,
    fmt_ci,
    kl_to_base,
    make_config,
    mean_ci,
    report,
    run_loop,
    samples,
    write_rows,
)

MODEL = "builtin:smollm2-135m-instruct"
LOSSES = ("sigmoid", "soft", "rdpo")
SIZES = {
    "quick": {"seeds": 1, "train_prompts": 48, "heldout_prompts": 16, "steps": 6,
              "eval_prompts": 16, "conditions": ("clean", "flip40")},
    "full": {"seeds": 1, "train_prompts": 120, "heldout_prompts": 40, "steps": 20,
             "eval_prompts": 0, "conditions": ("clean", "flip20", "flip40", "disagree")},
}
MAX_NEW_TOKENS = 32
VOTES = 3
FLIPS = {"clean": 0.0, "flip20": 0.2, "flip40": 0.4, "disagree": 0.0}
MIN_TRUTH_GAP = 0.1
KEEP_TARGET, HARD_GAP = 0.7, 0.15


def split_panel():
    """Systematic disagreement: three of the demo's annotators and two who like length."""
    from alignloop.demo.panel import PANELS, Annotator

    demo = {a.name: a for a in PANELS["demo"]}
    return (demo["warm"], demo["on_topic"], demo["balanced"],
            Annotator("verbose", 1.0, -0.8, 0.8), Annotator("wordy", 0.8, -1.2, 0.6))


# --------------------------------------------------------------------------- candidates


def candidates(size: dict, work: Path) -> dict:
    """Base-model samples, their ground-truth utility and judge score (cached as JSON)."""
    path = work / "candidates.json"
    if path.exists():
        return json.loads(path.read_text())
    from alignloop.demo.judge import heuristic_score
    from alignloop.demo.panel import Panel
    from alignloop.generation import SamplingParams, make_generator
    from alignloop.prompt_pool import load_pool

    cfg = make_config(demo_raw(), {})
    pool = load_pool(cfg.loop.prompts, cfg.loop.eval_share)
    rng = random.Random(0)
    train = rng.sample(pool.train, size["train_prompts"])
    held = rng.sample(pool.eval, size["heldout_prompts"])
    gen = make_generator("hf", MODEL)
    done = gen.sample(train + held, SamplingParams(n=4, temperature=0.7, top_p=0.9,
                                                   max_new_tokens=MAX_NEW_TOKENS, seed=0))
    texts: dict[str, list[str]] = {}
    for c in done:
        texts.setdefault(c.prompt_id, []).append(c.text.strip())
    panel = Panel("demo")
    out = {}
    for part, items in (("train", train), ("heldout", held)):
        out[part] = [{"prompt_id": it.prompt_id, "prompt": it.prompt, "slice": it.slice,
                      "texts": texts[it.prompt_id],
                      "truth": [panel.latent_reward(it.prompt, t) for t in texts[it.prompt_id]],
                      "judge": [heuristic_score(it.prompt, t) for t in texts[it.prompt_id]]}
                     for it in items]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


def train_pairs(cands: dict) -> list[dict]:
    """Best vs worst sample by the heuristic judge, per training prompt (a/b order random)."""
    from alignloop.labeling.select import similarity

    rng = random.Random(1)
    pairs = []
    for c in cands["train"]:
        hi = max(range(len(c["texts"])), key=lambda i: c["judge"][i])
        lo = min(range(len(c["texts"])), key=lambda i: c["judge"][i])
        a, b = c["texts"][hi], c["texts"][lo]
        if not a or not b or similarity(a, b) >= 0.9:
            continue
        if rng.random() < 0.5:
            a, b = b, a
        pairs.append({"key": c["prompt_id"], "prompt": c["prompt"], "slice": c["slice"], "a": a, "b": b})
    return pairs


def heldout_pairs(cands: dict) -> list[dict]:
    """Every pair of a held-out prompt's samples whose utilities differ by >= MIN_TRUTH_GAP,
    chosen = the one with the higher ground-truth utility."""
    out = []
    for c in cands["heldout"]:
        n = len(c["texts"])
        for i in range(n):
            for j in range(i + 1, n):
                if abs(c["truth"][i] - c["truth"][j]) < MIN_TRUTH_GAP or c["texts"][i] == c["texts"][j]:
                    continue
                w, lo = (i, j) if c["truth"][i] > c["truth"][j] else (j, i)
                out.append({"prompt": c["prompt"], "chosen": c["texts"][w], "rejected": c["texts"][lo]})
    return out


# --------------------------------------------------------------------------- labels


def votes(pairs: list[dict], condition: str, seed: int) -> list:
    """Three votes per pair from the condition's panel, with the condition's flips.

    The annotators, their votes and the flip draws depend on the seed only, so the flip
    conditions are nested: each vote flipped at 20% is also flipped at 40%."""
    from alignloop.demo.panel import PANELS, Panel
    from alignloop.labeling.aggregate import Vote

    panel = Panel("demo")
    annotators = split_panel() if condition == "disagree" else PANELS["demo"]
    rng = random.Random(seed)
    out = []
    for p in pairs:
        for who in rng.sample(annotators, VOTES):
            choice = panel.vote(p["prompt"], p["a"], p["b"], who, rng)
            if rng.random() < FLIPS[condition]:
                choice = "b" if choice == "a" else "a"
            out.append(Vote(p["key"], who.name, choice))
    return out


def labeled_rows(pairs: list[dict], ballots: list, loss: str) -> tuple[list[dict], float]:
    """Training rows for `loss` and the estimated flip rate of the majority labels.

    sigmoid and rdpo train on the majority label; soft on the Dawid-Skene posterior
    (its chosen side is the posterior's, which may differ from the majority when the
    model trusts some annotators more)."""
    from alignloop.labeling.aggregate import aggregate_votes

    post = aggregate_votes(ballots).posteriors
    tally: dict[str, int] = {}
    for v in ballots:
        tally[v.item] = tally.get(v.item, 0) + (1 if v.choice == "a" else -1)
    rows, wrong = [], []
    for p in pairs:
        pa = post[p["key"]].p_a
        majority_a = tally[p["key"]] > 0
        wrong.append(1 - pa if majority_a else pa)
        a_wins = pa >= 0.5 if loss == "soft" else majority_a
        chosen, rejected = (p["a"], p["b"]) if a_wins else (p["b"], p["a"])
        prob = max(pa, 1 - pa) if loss == "soft" else 1.0
        rows.append({"prompt": p["prompt"], "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": rejected}],
                     "p_chosen": round(prob, 4), "slice": p["slice"]})
    return rows, min(0.45, sum(wrong) / len(wrong))


# --------------------------------------------------------------------------- measuring


def score_pairs(models: dict[str, str], pairs: list[dict]) -> dict[str, list[float]]:
    """Summed response log-probs of chosen and rejected (interleaved) under each model."""
    from alignloop.models import load_tokenizer, prompt_token_ids, response_token_ids
    from alignloop.stages.evaluate import score_sequences

    tok = load_tokenizer(MODEL)
    seqs = []
    for p in pairs:
        prompt_ids = prompt_token_ids(tok, p["prompt"])
        for resp in (p["chosen"], p["rejected"]):
            seqs.append((prompt_ids, response_token_ids(tok, p["prompt"], resp)))
    return score_sequences(models, seqs)[0]


def accuracy(policy: list[float], base: list[float]) -> list[float]:
    """Per held-out pair: 1 if the implicit reward ranks the truth's chosen first (0.5 tie)."""
    out = []
    for n in range(0, len(policy), 2):
        m = (policy[n] - base[n]) - (policy[n + 1] - base[n + 1])
        out.append(1.0 if m > 0 else 0.5 if m == 0 else 0.0)
    return out


def measure(run_dir: Path, held: list[dict], base_scores: list[float]) -> dict:
    """Gain, KL and held-out accuracy of a finished run (cached in its run directory)."""
    cache = run_dir / "label_noise_measure.json"
    if cache.exists():
        return json.loads(cache.read_text())
    pol = {r["prompt_id"]: r["latent_reward"] for r in samples(run_dir, 0)}
    base = {r["prompt_id"]: r["latent_reward"] for r in samples(run_dir, 0, "base")}
    ids = sorted(set(pol) & set(base))
    gains = [pol[i] - base[i] for i in ids]
    kl = kl_to_base(report(run_dir, 0))
    acc = accuracy(score_pairs({"policy": str(run_dir / "round_000" / "policy")}, held)["policy"],
                   base_scores)
    out = {"gains": gains, "prompt_ids": ids, "gain": mean_ci(gains, ids), "kl": kl,
           "gain_per_kl": (sum(gains) / len(gains) if gains else math.nan) / max(kl["value"], 1e-6),
           "heldout_accuracy": mean_ci(acc)}
    cache.write_text(json.dumps(out))
    return out


def keep(clean: dict, noisy: dict) -> dict:
    """Share of the clean gain kept under noise, with a paired bootstrap over prompts."""
    import numpy as np

    c = dict(zip(clean["prompt_ids"], clean["gains"], strict=True))
    n = dict(zip(noisy["prompt_ids"], noisy["gains"], strict=True))
    ids = sorted(set(c) & set(n))
    gc, gn = np.array([c[i] for i in ids]), np.array([n[i] for i in ids])
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(ids), size=(2000, len(ids)))
    with np.errstate(divide="ignore", invalid="ignore"):
        reps = gn[idx].mean(1) / gc[idx].mean(1)
    lo, hi = np.nanpercentile(reps, [2.5, 97.5])
    return {"value": float(gn.mean() / gc.mean()) if gc.mean() else math.nan,
            "lo": float(lo), "hi": float(hi), "n": len(ids)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="quick")
    ap.add_argument("--no-readme", action="store_true", help="write results/ only")
    ap.add_argument("--conditions", help="comma-separated conditions to run now, no tables "
                    "(e.g. one per process); default: all of the size, then the tables")
    args = ap.parse_args()
    size = SIZES[args.size]
    if args.conditions:
        size = {**size, "conditions": tuple(args.conditions.split(","))}
    work = RUNS / "label_noise" / args.size
    cands = candidates(size, work)
    pairs, held = train_pairs(cands), heldout_pairs(cands)
    print(f"{len(pairs)} training pairs, {len(held)} truth-labeled held-out pairs", flush=True)
    base_scores = score_pairs({"base": MODEL}, held)["base"]
    raw = demo_raw()
    results: dict = {}
    for seed in range(size["seeds"]):
        for cond in size["conditions"]:
            ballots = votes(pairs, cond, seed)
            for loss in LOSSES:
                rows, eps = labeled_rows(pairs, ballots, loss)
                run_dir = work / f"seed{seed}" / f"{cond}-{loss}"
                data = write_rows(run_dir.parent / f"{cond}-{loss}.jsonl", rows)
                cfg = make_config(raw, {
                    "data.path": str(data), "train.loss": loss, "train.flip_rate": round(eps, 4),
                    "train.max_steps": size["steps"], "train.seed": seed, "loop.seed": seed,
                    "loop.rounds": 1, "loop.eval_prompts": size["eval_prompts"],
                    "labeling.human.budget": 0, "generation.max_new_tokens": MAX_NEW_TOKENS})
                print(f"== seed {seed} {cond} {loss} (estimated flip rate {eps:.3f})", flush=True)
                run_loop(cfg, run_dir)
                m = measure(run_dir, held, base_scores)
                m["flip_rate_estimate"] = eps
                results.setdefault(f"{cond}/{loss}", []).append(m)
    if args.conditions:
        return
    md, summary = table(results, size, args.size, len(pairs), len(held))
    meta = {"size": args.size, **{k: v for k, v in size.items() if k != "conditions"},
            "conditions": list(size["conditions"]), "machine": machine(), "date": today(),
            "command": f"python benchmarks/label_noise.py --size {args.size}",
            "target": f"at 40% flips soft or rdpo keeps >= {KEEP_TARGET:.0%} of its clean gain, "
                      f"hard-label DPO at least {HARD_GAP} less", **summary}
    slim = {k: [{kk: vv for kk, vv in m.items() if kk not in ("gains", "prompt_ids")} for m in ms]
            for k, ms in results.items()}
    name = results_name("label_noise", args.size)
    RESULTS.mkdir(exist_ok=True)
    plot(results, size, RESULTS / f"{name}.png")
    write_results(name, meta, slim, md, readme=args.size == "full" and not args.no_readme)
    print(md)


def plot(results: dict, size: dict, path: Path) -> None:
    """Gain over the base and held-out accuracy per condition and loss, with 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conds = size["conditions"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, metric, label in ((axes[0], "gain", "panel-reward gain over base"),
                              (axes[1], "heldout_accuracy", "held-out accuracy vs truth")):
        for j, loss in enumerate(LOSSES):
            xs = [i * (len(LOSSES) + 1) + j for i in range(len(conds))]
            es = [results[f"{c}/{loss}"][0][metric] for c in conds]
            ax.bar(xs, [e["value"] for e in es], label=loss, color=("#d98c3f", "#3f7fd9", "#5aa55a")[j])
            ax.errorbar(xs, [e["value"] for e in es], fmt="none", color="k", capsize=2,
                        yerr=[[e["value"] - e["lo"] for e in es], [e["hi"] - e["value"] for e in es]])
        ax.set_xticks([i * (len(LOSSES) + 1) + 1 for i in range(len(conds))], conds)
        ax.set_title(label, fontsize=9)
    axes[1].legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(results: dict, size: dict, size_name: str, n_pairs: int, n_held: int) -> tuple[str, dict]:
    first = lambda key: results[key][0]  # noqa: E731  (one seed: its figures; seeds: see json)
    lines = ["| labels | loss | panel-reward gain over base (95% CI) | KL to base (nats/seq) "
             "| gain per nat | held-out accuracy vs truth | kept of clean gain (95% CI) "
             "| kept of clean gain per nat |",
             "|---|---|---|---|---|---|---|---|"]
    kept, kept_per_kl = {}, {}
    for cond in size["conditions"]:
        for loss in LOSSES:
            m, clean = first(f"{cond}/{loss}"), first(f"clean/{loss}")
            k = keep(clean, m) if cond != "clean" else None
            if k is not None:
                kept[f"{cond}/{loss}"] = k
                kept_per_kl[f"{cond}/{loss}"] = m["gain_per_kl"] / clean["gain_per_kl"]
            lines.append(f"| {cond} | {loss} | {fmt_ci(m['gain'])} | {fmt_ci(m['kl'], 2)} | "
                         f"{m['gain_per_kl']:.3f} | {fmt_ci(m['heldout_accuracy'])} | "
                         f"{fmt_ci(k) if k else '-'} | "
                         + (f"{kept_per_kl[f'{cond}/{loss}']:.2f} |" if k else "- |"))
    summary: dict = {"kept": kept, "kept_per_kl": kept_per_kl}
    if "flip40" in size["conditions"]:
        robust = max(("soft", "rdpo"), key=lambda loss: kept[f"flip40/{loss}"]["value"])
        r, h = kept[f"flip40/{robust}"]["value"], kept["flip40/sigmoid"]["value"]
        met = r >= KEEP_TARGET and h <= r - HARD_GAP
        summary.update({"best_robust": robust, "kept_robust": r, "kept_hard": h, "target_met": met})
        lines += ["", f"- Target (at 40% flips `soft` or `rdpo` keeps >= {KEEP_TARGET:.0%} of its "
                      f"clean gain, hard-label DPO at least {HARD_GAP} less): "
                      f"{'**met**' if met else '**not met**'} ({robust} keeps {r:.2f}, "
                      f"sigmoid keeps {h:.2f}). The same per nat of KL (a reading added after "
                      f"seeing the data, not the target): soft {kept_per_kl['flip40/soft']:.2f}, "
                      f"rdpo {kept_per_kl['flip40/rdpo']:.2f}, sigmoid "
                      f"{kept_per_kl['flip40/sigmoid']:.2f}."]
    lines.append(f"{n_pairs} training pairs x {VOTES} votes, {size['steps']} optimizer steps "
                 f"of 8 pairs; {size['eval_prompts'] or 'all'} held-out prompts for reward and KL, "
                 f"{n_held} truth-labeled held-out pairs. {machine()}; {today()}; "
                 f"`python benchmarks/label_noise.py --size {size_name}`.")
    return "\n".join(lines), summary


if __name__ == "__main__":
    main()
