"""A synthetic but realistic run directory for report tests: every artifact a round driver
writes (DESIGN.md layout, the eval schema of alignloop.evaluation), with known drift.

    make_fake_run(tmp_path, rounds=2)   -> RUN_DIR with config.yaml, state.json, round_000/ ...
    make_reported_run(tmp_path)         -> the same with each round's report written
    write_fake_eval(round_dir, k, ...)  -> only eval/*.parquet (for a round trained for real)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from alignloop.artifacts import atomic_write_json, write_jsonl, write_parquet
from alignloop.config import config_from_dict, dump_config
from alignloop.evaluation import EvalComparison, EvalSample, HeldoutPair, write_eval
from alignloop.records import Pair, pair_id_for

SLICES = ("complaint", "bad_news", "greeting")
WORDS = ("thanks", "sorry", "we", "will", "fix", "this", "today", "please", "the", "order",
         "is", "late", "happy", "to", "help", "again", "soon", "glad", "you", "asked")
SCRIPT = "<script>document.title='pwned'</script> & <b>not bold</b>"


def fake_prompts(n: int = 24) -> list[dict]:
    out = []
    for i in range(n):
        text = f"Prompt {i}: my {('parcel', 'invoice', 'visit')[i % 3]} went wrong, what now?"
        prompt = [{"role": "user", "content": text}] if i % 2 else text
        out.append({"prompt_id": f"p{i:03d}", "prompt": prompt, "slice": SLICES[i % len(SLICES)]})
    return out


def _text(rng, n_words: int, repeat: bool = False) -> str:
    words = list(rng.choice(WORDS, size=max(1, n_words)))
    if repeat:                                       # a stutter: the same 3-gram again and again
        words = (words[:3] * (1 + n_words // 3))[:n_words]
    return " ".join(words)


def write_fake_eval(rdir: Path, k: int, *, prompts: list[dict] | None = None, samples: int = 2,
                    kl_ref: float = 0.3, length_scale: float = 1.0, reward_gain: float = 0.1,
                    regress_slice: str = "", seed: int = 0, script: bool = True) -> None:
    """eval/{samples, comparisons, heldout_pairs}.parquet of round k.

    Policy samples have log pi - log pi_ref ~ N(kl_ref, 0.3) per response (so the k1 KL to
    the reference is about kl_ref) and log pi - log base ~ N((k + 1) kl_ref, 0.3). The
    latent reward grows by `reward_gain` per round on every slice but `regress_slice`,
    where it falls by 3x that; comparisons follow the latent reward.
    """
    rng = np.random.default_rng(1000 * k + seed)
    prompts = prompts or fake_prompts()
    rows, comps = [], []
    for p in prompts:
        for model in ("policy", "base"):
            for s in range(samples):
                gain = 0.0 if model == "base" else (k + 1) * reward_gain
                if p["slice"] == regress_slice and model == "policy":
                    gain = -3 * (k + 1) * reward_gain
                n_words = int(rng.integers(4, 20) * (length_scale if model == "policy" else 1.0))
                text = _text(rng, n_words, repeat=(model == "policy" and rng.random() < 0.1))
                if script and model == "policy" and p["prompt_id"] == prompts[0]["prompt_id"] and s == 0:
                    text = SCRIPT
                n_tokens = max(1, int(1.3 * n_words))
                lp = -2.0 * n_tokens + rng.normal(0, 1)
                rows.append(EvalSample(
                    p["prompt_id"], p["prompt"], p["slice"], model, s, text, n_tokens,
                    "length" if n_tokens >= 30 else "stop", logp_policy=lp,
                    logp_reference=lp - rng.normal(kl_ref, 0.3) if model == "policy" else math.nan,
                    logp_base=lp - rng.normal((k + 1) * kl_ref, 0.3) if model == "policy" else math.nan,
                    latent_reward=float(rng.normal(0.2 + gain, 0.2))))
    for p in prompts:
        shift = -3 * reward_gain if p["slice"] == regress_slice else reward_gain
        for s in range(samples):
            for opponent, edge in (("base", (k + 1) * shift), ("previous", shift)):
                if opponent == "previous" and k == 0:
                    continue
                p_a = float(1 / (1 + math.exp(-(4 * edge + rng.normal(0, 1)))))
                comps.append(EvalComparison(p["prompt_id"], p["slice"], s, opponent, p_a,
                                            tie=bool(abs(p_a - 0.5) < 0.03), judge="ensemble"))
    heldout = []
    for i in range(20):
        lc, lr = -40 + rng.normal(0, 3), -42 + rng.normal(0, 3)
        heldout.append(HeldoutPair(f"h{i:03d}", SLICES[i % 3], 0.8,
                                   lc + rng.normal(0.5, 1), lr + rng.normal(-1.0, 1), lc, lr,
                                   lc - 0.3 * k, lr + 0.2 * k))
    write_eval(rdir, samples=rows, comparisons=comps, heldout=heldout)


def _labels_and_candidates(rdir: Path, k: int, prompts: list[dict], rng) -> list[Pair]:
    """candidates.parquet (2 responses -> 1 pair per prompt, 3 for every third prompt),
    labels.parquet (two judges on every selected pair, three annotators on human ones)."""
    candidates, labels, pairs = [], [], []
    for n, p in enumerate(prompts):
        responses = [_text(rng, int(rng.integers(5, 15))) for _ in range(3 if n % 3 == 0 else 2)]
        idx = [(0, 1), (1, 2), (0, 2)] if len(responses) == 3 else [(0, 1)]
        for i, j in idx:
            a, b = responses[i], responses[j]
            p_a = float(rng.uniform(0.05, 0.95))
            decision = "auto" if abs(p_a - 0.5) >= 0.25 else ("human" if n % 2 else "drop")
            item = pair_id_for(p["prompt"], a, b)
            prompt_json = json.dumps(p["prompt"])
            candidates.append({
                "item_id": item, "round": k, "prompt_id": p["prompt_id"], "prompt": prompt_json,
                "slice": p["slice"], "i": i, "j": j, "a": a, "b": b, "p_a": p_a,
                "uncertainty": float(rng.uniform(0, 0.2)), "order_consistent": True, "valid": True,
                "judge_detail": "", "selected": True, "selection": "uncertainty",
                "selection_score": 0.0, "decision": decision,
                "reason": "confident" if decision == "auto" else "uncertain",
                "informativeness": 0.5})
            base = {"item_id": item, "round": k, "choice": "", "confidence": 0, "display_order": "",
                    "created_at": 0.0, "detail": "", "prompt": prompt_json, "a": a, "b": b,
                    "slice": p["slice"], "gold": None}
            for judge, jitter in (("heuristic", 0.0), ("embedding", 0.1)):
                labels.append({**base, "source": "judge", "annotator": judge,
                               "p_a": min(0.99, max(0.01, p_a + jitter))})
            if decision == "human":
                for ann in ("ann1", "ann2", "ann3"):
                    agree = rng.random() < 0.8
                    choice = ("a" if p_a > 0.5 else "b") if agree else ("b" if p_a > 0.5 else "a")
                    labels.append({**base, "source": "human", "annotator": ann, "choice": choice,
                                   "p_a": 1.0 if choice == "a" else 0.0,
                                   "gold": choice if ann == "ann1" else None})
            if decision != "drop":
                chosen, rejected = (a, b) if p_a >= 0.5 else (b, a)
                pairs.append(Pair(p["prompt"], chosen, rejected, max(p_a, 1 - p_a), n_votes=0,
                                  source="judge" if decision == "auto" else "human",
                                  slice=p["slice"], round=k))
    write_parquet(rdir / "candidates.parquet", candidates)
    write_parquet(rdir / "labels.parquet", labels)
    return pairs


def write_train_log(rdir: Path, steps: int = 6, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(1, steps + 1):
        margin = 0.05 * s + rng.normal(0, 0.01)
        rows.append({"step": s, "epoch": s / steps, "loss": math.log(2) - 0.04 * s,
                     "rewards/chosen": margin / 2, "rewards/rejected": -margin / 2,
                     "rewards/margin": margin, "rewards/accuracy": min(1.0, 0.5 + 0.08 * s),
                     "logps/chosen": -40.0, "logps/rejected": -42.0, "grad_norm": 1.0,
                     "lr": 1e-3, "pairs": 8, "tokens": 900})
    write_jsonl(rdir / "train_log.jsonl", rows)


def make_fake_run(tmp_path: Path, rounds: int = 2, *, gate_round: int | None = None, **eval_kw) -> Path:
    """RUN_DIR with `rounds` complete rounds (no reports yet). `eval_kw` goes to
    write_fake_eval (kl_ref, length_scale, reward_gain, regress_slice, ...)."""
    run = Path(tmp_path) / "run"
    cfg = config_from_dict({"model": {"name": "builtin:tiny-random"},
                            "labeling": {"human": {"budget": 12}},
                            "report": {"examples": 30, "n_boot": 200}})
    run.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run / "config.yaml")
    prompts = fake_prompts()
    state = {"version": 1, "rounds": {}}
    for k in range(rounds):
        rdir = run / f"round_{k:03d}"
        rng = np.random.default_rng(k)
        if k == 0:
            pairs = [Pair(p["prompt"], _text(rng, 8), _text(rng, 9), source="static",
                          slice=p["slice"]) for p in prompts[:16]]
        else:
            pairs = _labels_and_candidates(rdir, k, prompts, rng)
        write_parquet(rdir / "pairs.parquet", [p.to_row() for p in pairs])
        write_train_log(rdir, seed=k)
        write_fake_eval(rdir, k, prompts=prompts, **eval_kw)
        stages = ("assemble", "train", "eval") if k == 0 else ("slices", "generate", "judge",
                                                                "label", "assemble", "train", "eval")
        state["rounds"][str(k)] = {"stages": {s: {"status": "done", "started": 0.0, "finished": 1.0,
                                                  "seconds": 1.0} for s in stages}}
        if k == gate_round:
            state["rounds"][str(k)]["gate"] = {"tripped": True, "action": "stop",
                                               "reason": "KL to base 2.1 over the budget 2.0"}
    atomic_write_json(run / "state.json", state)
    return run


def make_reported_run(root: Path, rounds: int = 2) -> Path:
    """A fake run whose rounds have their reports written, as a finished run has."""
    from alignloop.report import write_round_report

    run = make_fake_run(root, rounds=rounds)
    for k in range(rounds):
        write_round_report(run, k)
    return run
