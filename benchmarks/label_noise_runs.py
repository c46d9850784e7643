"""The label-noise sweep's data and bookkeeping (benchmarks/label_noise.py): base-model
candidates, the nested pair pool, truth-labeled held-out pairs, what a finished run is
measured by, and the cache of measured runs that lets a killed sweep continue.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
from pathlib import Path

CANDIDATES = "candidates.json"
SAMPLES_PER_PROMPT = 4
MIN_TRUTH_GAP = 0.1
TIERS = 2                   # pairs per training prompt: best vs worst, 2nd best vs 2nd worst


def candidates(spec: dict, work: Path) -> dict:
    """Samples of the size's model on its training and held-out prompts, with their
    ground-truth utility and heuristic-judge score (cached in `work` as JSON; a cache made
    with other settings is made again)."""
    key = {k: spec[k] for k in ("model", "train_prompts", "heldout_prompts", "max_new_tokens")}
    path = work / CANDIDATES
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("spec") == key:
            return cached
    from alignloop.artifacts import atomic_write_text
    from alignloop.config import LoopConfig
    from alignloop.demo.judge import heuristic_score
    from alignloop.demo.panel import Panel
    from alignloop.generation import SamplingParams, make_generator
    from alignloop.prompt_pool import load_pool

    lc = LoopConfig()
    pool = load_pool(lc.prompts, lc.eval_share)
    rng = random.Random(0)
    train = rng.sample(pool.train, spec["train_prompts"] or len(pool.train))
    held = rng.sample(pool.eval, spec["heldout_prompts"])
    gen = make_generator("hf", spec["model"])
    done = gen.sample(train + held, SamplingParams(n=SAMPLES_PER_PROMPT, temperature=0.7,
                                                   top_p=0.9, max_new_tokens=spec["max_new_tokens"],
                                                   seed=0))
    texts: dict[str, list[str]] = {}
    for c in done:
        texts.setdefault(c.prompt_id, []).append(c.text.strip())
    panel = Panel("demo")
    out: dict = {"spec": key}
    for part, items in (("train", train), ("heldout", held)):
        out[part] = [{"prompt_id": it.prompt_id, "prompt": it.prompt, "slice": it.slice,
                      "texts": texts[it.prompt_id],
                      "truth": [panel.latent_reward(it.prompt, t) for t in texts[it.prompt_id]],
                      "judge": [heuristic_score(it.prompt, t) for t in texts[it.prompt_id]]}
                     for it in items]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(out))
    return out


def pair_pool(cands: dict) -> list[dict]:
    """Training pairs in pool order: tier 0 (best vs worst sample by the heuristic judge)
    of every prompt, then tier 1 (second best vs second worst), prompts in the candidates'
    seeded order. Near-identical or empty responses give no pair; a/b order is a seeded
    coin per pair. A data size of N trains on the first N."""
    from alignloop.labeling.select import similarity

    pool = []
    for tier in range(TIERS):
        for c in cands["train"]:
            order = sorted(range(len(c["texts"])), key=lambda i: (c["judge"][i], i))
            if len(order) < 2 * (tier + 1):
                continue
            hi, lo = order[-1 - tier], order[tier]
            a, b = c["texts"][hi], c["texts"][lo]
            if not a or not b or similarity(a, b) >= 0.9:
                continue
            key = f"{c['prompt_id']}/{tier}"
            if random.Random(key).random() < 0.5:
                hi, lo = lo, hi
            pool.append({"key": key, "prompt": c["prompt"], "slice": c["slice"],
                         "a": c["texts"][hi], "b": c["texts"][lo],
                         "truth_a": c["truth"][hi], "truth_b": c["truth"][lo]})
    return pool


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


# --------------------------------------------------------------------------- measuring


def score_pairs(tokenizer_model: str, models: dict[str, str], pairs: list[dict]) -> dict[str, list[float]]:
    """Summed response log-probs of chosen and rejected (interleaved) under each model."""
    from alignloop.chat import prompt_token_ids, response_token_ids
    from alignloop.models import load_tokenizer
    from alignloop.stages.evaluate import score_sequences

    tok = load_tokenizer(tokenizer_model)
    seqs = []
    for p in pairs:
        prompt_ids = prompt_token_ids(tok, p["prompt"])
        for resp in (p["chosen"], p["rejected"]):
            seqs.append((prompt_ids, response_token_ids(tok, p["prompt"], resp)))
    return score_sequences(models, seqs)[0]


def accuracy(policy: list[float], base: list[float]) -> float:
    """Share of held-out pairs whose implicit reward (policy-vs-base log-ratio) ranks the
    truth's chosen first (a tie counts half)."""
    hits = []
    for n in range(0, len(policy), 2):
        m = (policy[n] - base[n]) - (policy[n + 1] - base[n + 1])
        hits.append(1.0 if m > 0 else 0.5 if m == 0 else 0.0)
    return sum(hits) / len(hits)


def _per_prompt(rows: list[dict], value) -> dict[str, float]:
    acc: dict[str, list[float]] = {}
    for r in rows:
        acc.setdefault(r["prompt_id"], []).append(value(r))
    return {k: sum(v) / len(v) for k, v in acc.items()}


def measure(run_dir: Path, model: str, held: list[dict], base_scores: list[float]) -> dict:
    """Per held-out prompt of a finished one-round run: the panel-reward gain of the
    policy's sample over the base model's, and the k1 KL estimate log pi - log pi_base of
    its temperature-1 sample (the report's KL, per prompt); with truth-labeled held-out
    pairs, the implicit reward's accuracy on them."""
    from loop_bench import samples

    pol = _per_prompt(samples(run_dir, 0), lambda r: r["latent_reward"])
    base = _per_prompt(samples(run_dir, 0, "base"), lambda r: r["latent_reward"])
    kl_rows = samples(run_dir, 0, "policy_kl") or samples(run_dir, 0)
    kl = _per_prompt(kl_rows, lambda r: r["logp_policy"] - r["logp_base"])
    ids = sorted(set(pol) & set(base) & set(kl))
    out = {"prompt_ids": ids, "gains": [round(pol[i] - base[i], 6) for i in ids],
           "kls": [round(kl[i], 6) for i in ids]}
    if held:
        scores = score_pairs(model, {"policy": str(run_dir / "round_000" / "policy")}, held)
        out["accuracy"] = round(accuracy(scores["policy"], base_scores), 6)
    return out


def provenance(run_dir: Path, work: Path) -> dict:
    """What a finished run's figures rest on besides its cell: the precision its models
    ran in (the round's recorded placement; `auto` resolves per machine) and a digest of
    the candidates its pairs came from (sampled in the generator's precision, so a cache
    continued on another machine may hold runs on other pairs), and the machine and day
    that measured it (a cache gathers runs from several machines)."""
    from alignloop.artifacts import file_sha256
    from alignloop.rounds.state import read_state
    from common import machine, today

    place = read_state(run_dir / "state.json")["rounds"]["0"].get("placement", {})
    return {"precision": place.get("precision", "not recorded"),
            "candidates": file_sha256(work / CANDIDATES)[:12],
            "machine": machine(), "date": today()}


# --------------------------------------------------------------------------- cache


def _but_sizes(spec: dict | None) -> dict | None:
    """The settings a cached run depends on: all but the data sizes and the seed count (a
    run depends on its own size and seed only)."""
    return None if spec is None else {k: v for k, v in spec.items() if k not in ("pairs", "seeds")}


class RunCache:
    """Measures of finished runs keyed "pairs/seed/condition/loss", in one JSON file that
    is re-read, updated and replaced under a lock, so several processes can run parts of
    one sweep (the lock file lives in the run directories). A file made for other size
    settings is refused (delete it to start over), except for its list of data sizes and its
    number of seeds: a run depends on its own size and seed only (the sizes are nested
    prefixes of one pair pool, a pair's votes come from its seed), so sizes and seeds may be
    added to a size's sweep and its finished runs still count.
    Nothing is written before the candidates are sampled."""

    def __init__(self, path: Path, size: str, spec: dict, lock_dir: Path):
        self.path, self.spec = Path(path), json.loads(json.dumps({"size": size, **spec}))
        self.lock = Path(lock_dir) / (self.path.name + ".lock")
        data = self._read()
        if data and _but_sizes(data.get("spec")) != _but_sizes(self.spec):
            raise SystemExit(f"label_noise: {self.path} holds runs made with other "
                             f"{size!r} settings; delete it to start this size over")
        self.runs: dict = data.get("runs", {}) if data else {}
        self.meta: dict = data.get("meta", {}) if data else {}

    def _read(self) -> dict | None:
        return json.loads(self.path.read_text()) if self.path.exists() else None

    @staticmethod
    def key(n: int, seed: int, cond: str, loss: str) -> str:
        return f"{n}/{seed}/{cond}/{loss}"

    def has(self, n, seed, cond, loss) -> bool:
        return self.key(n, seed, cond, loss) in self.runs

    def get(self, n, seed, cond, loss) -> dict:
        k = self.key(n, seed, cond, loss)
        if k not in self.runs:
            raise SystemExit(f"label_noise: run {k} is missing from {self.path}; run the "
                             "size without --conditions/--losses to complete it")
        return self.runs[k]

    def put(self, n, seed, cond, loss, measures: dict) -> None:
        self._update(runs={self.key(n, seed, cond, loss): measures})

    def note(self, key: str, value) -> None:
        """A figure about the sweep itself (e.g. seconds spent sampling candidates)."""
        self._update(meta={key: value})

    def _update(self, runs: dict | None = None, meta: dict | None = None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read() or {"meta": {}, "runs": {}}
            data["spec"] = self.spec
            data["runs"].update(runs or {})
            data["meta"].update(meta or {})
            tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, self.path)
            self.runs, self.meta = data["runs"], data["meta"]
