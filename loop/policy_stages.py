"""The model stages of a round: refresh the reference and cache its log-probs, train
the policy with DPO, and evaluate it on the held-out prompts.

    reference   the round's reference (previous policy / base / EMA) -> reference_logps.parquet
    train       DPO from the previous round's policy -> policy/, train_log.jsonl
    evaluate    held-out samples (the run's sampling settings, plus temperature-1 samples for
                the KL estimates when those are tempered) with log-probs under policy,
                reference and base, judge
                comparisons against the previous round and the base, held-out pair
                scores -> eval/*.parquet (schema: alignloop.evaluation)
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

from alignloop.records import Pair

log = logging.getLogger(__name__)

TIE_MARGIN = 0.02
"""Judge probabilities within this of 0.5 count as a tie in the win rates."""


# --------------------------------------------------------------------------- reference


def ema_reference(out: Path, *, previous_reference: str, policy: str, weight: float) -> str:
    """Save weight * previous_reference + (1 - weight) * policy as a model directory."""
    import torch
    from alignloop.artifacts import atomic_dir
    from alignloop.models import load_model, load_tokenizer

    ref = load_model(previous_reference, dtype="float32")
    pol = load_model(policy, dtype="float32")
    pol_state = pol.state_dict()
    with torch.no_grad():
        for name, tensor in ref.state_dict().items():
            if tensor.is_floating_point():
                tensor.mul_(weight).add_(pol_state[name], alpha=1.0 - weight)
    with atomic_dir(out) as tmp:
        ref.save_pretrained(tmp)
        load_tokenizer(policy).save_pretrained(tmp)
    return str(out)


def reference(cfg, rdir: Path, *, pairs: list[Pair], policy: str, reference_model: str) -> None:
    """Reference log-probs of this round's pairs -> reference_logps.parquet (the trainer
    finds them there and does not recompute them)."""
    from alignloop.models import load_model, load_tokenizer, weights_hash
    from alignloop.training.batching import encode_pairs
    from alignloop.training.reference import reference_logps

    d = cfg.data
    tokenizer = load_tokenizer(policy)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded, _ = encode_pairs(pairs, tokenizer, max_length=d.max_length,
                              max_prompt_length=d.max_prompt_length, truncation=d.truncation,
                              on_invalid=d.on_invalid)
    # The same dtype the trainer loads it with, so the weights hash matches its cache key.
    model = load_model(reference_model,
                       dtype="float32" if reference_model == policy else cfg.model.dtype)
    reference_logps(model, encoded, path=rdir / "reference_logps.parquet",
                    reference_hash=weights_hash(model), pad_id=pad_id,
                    batch_size=max(2 * cfg.train.batch_size, 8))


def train(cfg, rdir: Path, *, pairs: list[Pair], policy: str, reference_model: str):
    from alignloop.training.trainer import train_dpo

    return train_dpo(pairs, out_dir=rdir, policy=policy, reference=reference_model,
                     model_cfg=cfg.model, data_cfg=cfg.data, train_cfg=cfg.train)


# --------------------------------------------------------------------------- evaluate


def _tempered(g) -> bool:
    return not (g.temperature == 1.0 and g.top_p == 1.0 and g.top_k == 0)


def _sample(cfg, generator, items: list, *, untempered: bool = False) -> list:
    """Held-out samples with the run's generation settings (what users of the policy see),
    or with `untempered` at temperature 1 without top-k/top-p (the KL estimates need
    samples of the policy itself). The seed is the same every round, so rounds differ only
    by their policy."""
    from alignloop.generation import SamplingParams

    g = cfg.generation
    t, top_p, top_k = (1.0, 1.0, 0) if untempered else (g.temperature, g.top_p, g.top_k)
    params = SamplingParams(n=cfg.loop.eval_samples, temperature=t, top_p=top_p, top_k=top_k,
                            max_new_tokens=g.max_new_tokens, stop=g.stop,
                            seed=cfg.loop.seed + (2 if untempered else 1))
    return generator.sample(items, params)


def _score(models: dict[str, str], seqs: list, loaded: dict) -> dict[str, list[float]]:
    """Summed log-probs of the response tokens of `seqs` under each named model; `loaded`
    keeps the models between calls (each is loaded once per evaluation)."""
    import torch
    from alignloop.labeling.logprobs import score_token_sequences
    from alignloop.models import load_model, load_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    out, done = {}, {}
    for name, ref in models.items():
        if ref not in loaded:
            # float32 on CPU (bf16 is very slow there), the model's dtype on a GPU
            loaded[ref] = (load_model(ref, dtype="auto", device=device),
                           load_tokenizer(ref).pad_token_id)
        if ref not in done:
            model, pad = loaded[ref]
            done[ref] = list(score_token_sequences(model, seqs, pad_id=pad,
                                                   desc=f"log-probs ({name})"))
        out[name] = done[ref]
    return out


def eval_items(pool, n: int) -> list:
    """The held-out prompts evaluated every round: all, or the first n by id."""
    items = sorted(pool.eval, key=lambda it: it.prompt_id)
    return items[:n] if n else items


def evaluate(cfg, rdir: Path, *, items: list, policy: str, reference_model: str, base: str,
             previous_samples: list[dict] | None, base_samples: list[dict] | None,
             heldout: list[Pair], ensemble=None, panel=None) -> None:
    import json

    from alignloop.evaluation import EvalComparison, EvalSample, HeldoutPair, write_eval
    from alignloop.generation.prompts import encode_prompt
    from alignloop.labeling import Comparison
    from alignloop.models import load_tokenizer, render_prompt, render_response

    tokenizer = load_tokenizer(policy)
    eos = tokenizer.eos_token_id
    models = {"policy": policy, "reference": reference_model, "base": base}
    by_id = {it.prompt_id: it for it in items}
    runs = [("policy", policy, False)] + ([("base", base, False)] if base_samples is None else [])
    if _tempered(cfg.generation):
        runs.append(("policy_kl", policy, True))
    samples: list[EvalSample] = []
    from alignloop.generation import generator_for

    generators, loaded = {}, {}
    for model_name, model_ref, untempered in runs:
        if model_ref not in generators:
            generators[model_ref] = generator_for(cfg.generation, model_ref)
        completions = _sample(cfg, generators[model_ref], items, untempered=untempered)
        seqs = [(encode_prompt(tokenizer, by_id[c.prompt_id], 1 << 30, "error"),
                 list(c.token_ids) + ([eos] if c.finish_reason == "stop" else []))
                for c in completions]
        # log-probs feed the KL estimates: score the temperature-1 samples (the policy's own
        # when its sampling is untempered); the other rows keep NaN
        kl_rows = model_name == "policy_kl" or (model_name == "policy" and not _tempered(cfg.generation))
        scores = _score(models, seqs, loaded) if kl_rows else {}
        for n, c in enumerate(completions):
            it = by_id[c.prompt_id]
            samples.append(EvalSample(
                c.prompt_id, it.prompt, it.slice, model_name, c.sample_index, c.text,
                len(c.token_ids), c.finish_reason,
                *(scores[m][n] if scores else math.nan for m in ("policy", "reference", "base")),
                latent_reward=(panel.latent_reward(it.prompt, c.text)
                               if panel and model_name != "policy_kl" else math.nan)))

    if ensemble is not None:  # pointwise judge scores rank the next round's failure slices
        shown = [n for n, s in enumerate(samples) if s.model != "policy_kl"]
        scores = ensemble.score([samples[n].prompt for n in shown], [samples[n].text for n in shown])
        for n, sc in zip(shown, scores or [], strict=False):
            samples[n] = dataclasses.replace(samples[n], judge_score=float(sc))
    generators.clear()  # free the sampling models before the judges and held-out scoring
    own = [s for s in samples if s.model == "policy"]
    if base_samples is None:
        base_samples = [s.to_row() for s in samples if s.model == "base"]
    comparisons: list[EvalComparison] = []
    if ensemble is not None:
        for opponent, rows in (("previous", previous_samples), ("base", base_samples)):
            if not rows:
                continue
            theirs = {(r["prompt_id"], r["sample_index"]): r["text"] for r in rows}
            pairs = [(s, theirs[(s.prompt_id, s.sample_index)]) for s in own
                     if (s.prompt_id, s.sample_index) in theirs]
            js = ensemble.judge([Comparison(s.prompt, s.text, t) for s, t in pairs])
            for (s, t), j in zip(pairs, js, strict=True):
                p = j.p_a if j.valid else 0.5
                comparisons.append(EvalComparison(
                    s.prompt_id, s.slice, s.sample_index, opponent, p,
                    tie=(s.text == t) or abs(p - 0.5) < TIE_MARGIN, judge="ensemble"))

    held_rows: list[HeldoutPair] = []
    if heldout:
        seqs = []
        for p in heldout:
            prompt_ids = tokenizer(render_prompt(tokenizer, p.prompt),
                                   add_special_tokens=not p.is_chat)["input_ids"]
            for resp in (p.chosen, p.rejected):
                seqs.append((prompt_ids, tokenizer(render_response(tokenizer, p.prompt, resp),
                                                   add_special_tokens=False)["input_ids"]))
        sc = _score(models, seqs, loaded)
        for n, p in enumerate(heldout):
            held_rows.append(HeldoutPair(
                p.pair_id, p.slice, p.p_chosen,
                sc["policy"][2 * n], sc["policy"][2 * n + 1],
                sc["reference"][2 * n], sc["reference"][2 * n + 1],
                sc["base"][2 * n], sc["base"][2 * n + 1]))
    write_eval(rdir, samples=samples, comparisons=comparisons, heldout=held_rows)
    log.info("eval: %d samples, %d comparisons, %d held-out pairs (%s)", len(samples),
             len(comparisons), len(held_rows), json.dumps(sorted({s.slice for s in own})))
