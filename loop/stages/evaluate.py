"""Evaluate a round's policy on the held-out prompts -> eval/*.parquet
(the schema is `alignloop.evaluation`; the drift report reads it).

    sample      held-out samples with the run's sampling settings (what users of the
                policy see), plus temperature-1 samples for the KL estimates when those
                settings are tempered; the base model is sampled once, in round 0
    score       log-probs of those samples and of the held-out pairs under the policy,
                the reference and the base model
    judge       pointwise judge scores (they rank the next round's failure slices) and
                comparisons against the previous policy and the base model

Models are loaded one at a time and freed before the next (a sampler, then each scorer,
then the judges), so the stage's peak memory is one model plus the judges. They run where
the placement says (`alignloop.placement`): samplers with its sampling weights, scorers
with its scoring weights and autocast (the log-probs behind the KL estimates).

Where the seconds went (cProfile of the demo's round-1 eval, 2 EPYC cores, fp32): scoring
56%, sampling 27%, sentence embeddings for the judges and the panel 15%, model loads and
LoRA merges 4%. The forwards are compute-bound, so the stage saves forwards rather than
speeding them up (demo rounds 1-2: 23.2k scored tokens -> 18.8k, one policy load fewer):

- the held-out pairs are the same sequences every round, scored alone in the same
  batches, so a model an earlier round already scored them with (the base model every
  round; the reference when it is an earlier policy) gives the very same numbers, which
  are read back (`known_heldout_scores`) instead of computed again;
- the policy sampled last stays loaded for scoring when its sampling and scoring weights
  are the same (fp32 or bf16 precision, `hf` backend): one load and LoRA merge, not two;
- and then its own log-probs of its KL samples are the ones it recorded while sampling
  (`Completion.logprob_sum`: the same model and weights, a float32 log-softmax of the
  untempered logits), so the policy scores only the held-out pairs.

In bf16-mixed on a 2-core AMX Xeon (the demo's round-2 eval, 39 s): sampling 16 s,
scoring 19 s (three models; a batch's response positions go through the output
projection as one matmul, `score_token_sequences`, 1.31x one per sequence),
sentence embeddings 5 s.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
from pathlib import Path

from alignloop import artifacts as A
from alignloop.config import GenerationConfig
from alignloop.evaluation import EvalComparison, EvalSample, HeldoutPair, write_eval
from alignloop.records import Pair

log = logging.getLogger(__name__)


def evaluate(rdir: Path, *, generation: GenerationConfig, samples_per_prompt: int, seed: int,
             tie_margin: float, items: list, policy: str, reference: str, base: str,
             previous_samples: list[dict] | None, base_samples: list[dict] | None,
             heldout: list[Pair], ensemble=None, panel=None, chat_template: str = "auto",
             placement=None, heldout_known: dict[str, dict[str, tuple]] | None = None) -> None:
    """Sample, score and judge; writes eval/samples.parquet, comparisons and held-out pairs.
    `previous_samples` are the policy samples of the round this one started from (None:
    it started from the base model); `base_samples` are round 0's base samples (None in
    round 0, which draws them); `heldout_known` holds earlier rounds' held-out scores
    with this placement (`known_heldout_scores`): those models do not score them again."""
    from alignloop.models import load_tokenizer

    tokenizer = load_tokenizer(policy, chat_template)
    loaded: dict[str, object] = {}
    draws = sample_heldout(generation, items, policy=policy, base=base, n=samples_per_prompt,
                           seed=seed, with_base=base_samples is None, chat_template=chat_template,
                           placement=placement, keep=loaded)
    kl_model = "policy_kl" if _tempered(generation) else "policy"
    kl_seqs = [_completion_tokens(tokenizer, it, c) for m, it, c in draws if m == kl_model]
    held_seqs = [seq for p in heldout for seq in _pair_tokens(tokenizer, p)]
    models = {"policy": policy, "reference": reference, "base": base}
    known = {ref: [x for p in heldout for x in scores[p.pair_id]]
             for ref, scores in (heldout_known or {}).items()
             if all(p.pair_id in scores for p in heldout)}
    kl_known = ({policy: [c.logprob_sum for m, _, c in draws if m == kl_model]}
                if policy in loaded else {})
    kl_scores, held_scores = score_sequences(models, kl_seqs, held_seqs, placement=placement,
                                             known=[kl_known, known], loaded=loaded)

    samples, at = [], 0
    for model_name, it, c in draws:
        lp = (math.nan,) * 3
        if model_name == kl_model:
            lp = tuple(kl_scores[m][at] for m in ("policy", "reference", "base"))
            at += 1
        reward = (panel.latent_reward(it.prompt, c.text)
                  if panel is not None and model_name != "policy_kl" else math.nan)
        samples.append(EvalSample(c.prompt_id, it.prompt, it.slice, model_name, c.sample_index,
                                  c.text, len(c.token_ids), c.finish_reason, *lp,
                                  latent_reward=reward))
    comparisons = []
    if ensemble is not None:
        # served judges keep their answers beside the eval tables: a rerun asks nothing twice
        (rdir / "eval").mkdir(parents=True, exist_ok=True)
        ensemble.use_cache(rdir / "eval" / A.JUDGE_CACHE)
        samples = with_judge_scores(samples, ensemble)
        own = [s for s in samples if s.model == "policy"]
        base_rows = base_samples or [s.to_row() for s in samples if s.model == "base"]
        for opponent, rows in (("previous", previous_samples), ("base", base_rows)):
            if rows:
                comparisons += compare(own, rows, opponent, ensemble, tie_margin)
    held_rows = [HeldoutPair(p.pair_id, p.slice, p.p_chosen,
                             *(held_scores[m][2 * n + side] for m in ("policy", "reference", "base")
                               for side in (0, 1)))
                 for n, p in enumerate(heldout)]
    write_eval(rdir, samples=samples, comparisons=comparisons, heldout=held_rows)
    log.info("eval: %d samples, %d comparisons, %d held-out pairs", len(samples),
             len(comparisons), len(held_rows))


# --------------------------------------------------------------------------- sample


def _tempered(g: GenerationConfig) -> bool:
    return not (g.temperature == 1.0 and g.top_p == 1.0 and g.top_k == 0)


def sample_heldout(g: GenerationConfig, items: list, *, policy: str, base: str, n: int,
                   seed: int, with_base: bool, chat_template: str = "auto",
                   placement=None, keep: dict | None = None) -> list[tuple]:
    """(model name, prompt item, Completion) for every held-out sample. The seeds are the
    same every round, so rounds differ only by their policy. One sampler at a time, the
    policy's last: `keep[policy]` is set to its model when it is the one scoring would
    load (an `hf` sampler whose weights have the scoring dtype)."""
    from alignloop.generation import SamplingParams, generator_for, sample_each
    from alignloop.placement import Placement

    scoring_weights = (placement or Placement()).weights_dtype

    def params(untempered: bool) -> SamplingParams:
        t, top_p, top_k = (1.0, 1.0, 0) if untempered else (g.temperature, g.top_p, g.top_k)
        return SamplingParams(n=n, temperature=t, top_p=top_p, top_k=top_k,
                              max_new_tokens=g.max_new_tokens, stop=g.stop,
                              seed=seed + (2 if untempered else 1))

    by_id = {it.prompt_id: it for it in items}
    runs = [(policy, [("policy", False)] + ([("policy_kl", True)] if _tempered(g) else []))]
    if with_base:
        runs.insert(0, (base, [("base", False)]))   # each sample depends on its seed only
    draws = []
    for model_ref, names in runs:
        generator = generator_for(g, model_ref, chat_template=chat_template, placement=placement)
        # the policy's tempered and temperature-1 draws as one batch where the backend can
        drawn = sample_each(generator, [(items, params(untempered)) for _, untempered in names])
        for (name, _), completions in zip(names, drawn, strict=True):
            draws += [(name, by_id[c.prompt_id], c) for c in completions]
        model = getattr(generator, "model", None)
        if (keep is not None and model_ref == policy and generator.name == "hf"
                and next(model.parameters()).dtype == scoring_weights):
            keep[policy] = model
        del generator, model
        gc.collect()
    order = {"policy": 0, "base": 1, "policy_kl": 2}   # the row order of samples.parquet
    return sorted(draws, key=lambda d: order[d[0]])


# --------------------------------------------------------------------------- score


def _completion_tokens(tokenizer, item, c) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of a sample: exactly the tokens the policy chose
    (`Completion.token_ids`: its end token when it chose one, none after a stop string
    or at the length limit), so policy, reference and base score the same tokens the KL
    estimate averages over. Not `render_response(text)`: that re-tokenises the text and
    adds the template's "\\n" after <|im_end|>, which the policy never sampled."""
    from alignloop.generation.prompts import encode_prompt

    return encode_prompt(tokenizer, item, 1 << 30, "error"), list(c.token_ids)


def _pair_tokens(tokenizer, pair: Pair) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) of a pair's chosen and rejected responses."""
    from alignloop.chat import prompt_token_ids, response_token_ids

    prompt = prompt_token_ids(tokenizer, pair.prompt)
    return [(prompt, response_token_ids(tokenizer, pair.prompt, r))
            for r in (pair.chosen, pair.rejected)]


def score_sequences(models: dict[str, str], *seq_lists, placement=None, known=(),
                    loaded: dict | None = None) -> list[dict[str, list[float]]]:
    """Per list of (prompt ids, response ids), {model name: summed response log-probs}.
    Each distinct model is loaded once (where `placement` says; None: CPU, fp32), scores
    every list, and is freed before the next. `known[i]` maps a model reference to scores
    of `seq_lists[i]` computed before (not computed again; a model known for every list
    is not loaded); `loaded` maps a reference to its model already in memory (popped)."""
    from alignloop.labeling.logprobs import score_token_sequences
    from alignloop.models import load_model, load_tokenizer
    from alignloop.placement import Placement

    placement = placement or Placement()
    loaded = loaded if loaded is not None else {}
    known = list(known) + [{}] * (len(seq_lists) - len(known))
    out: list[dict[str, list[float]]] = [{} for _ in seq_lists]
    for ref in dict.fromkeys(models.values()):
        names = [m for m, r in models.items() if r == ref]
        todo = []
        for seqs, scores, have in zip(seq_lists, out, known, strict=True):
            if seqs and ref in have:
                scores.update({m: list(have[ref]) for m in names})
            elif seqs:
                todo.append((seqs, scores))
        if not todo:
            continue
        model = loaded.pop(ref, None)
        if model is None:
            model = load_model(ref, dtype=placement.weights_dtype, device=placement.device)
        pad = load_tokenizer(ref).pad_token_id
        for seqs, scores in todo:
            values = list(score_token_sequences(model, seqs, pad_id=pad,
                                                desc=f"log-probs ({names[0]})",
                                                placement=placement))
            scores.update({m: values for m in names})
        del model
        gc.collect()
    loaded.clear()
    return out


def known_heldout_scores(earlier: list[tuple[Path, dict[str, str]]]) -> dict[str, dict]:
    """{model reference: {pair_id: (chosen, rejected) log-probs}} from earlier rounds'
    eval/heldout_pairs.parquet; `earlier` lists (round dir, {"policy" | "reference" |
    "base": the reference that round scored with}) for rounds run with this placement.
    The held-out pairs are the same every round and scored alone, so a model gives the
    same numbers in every round; the first round that scored it is read."""
    from alignloop.evaluation import read_heldout_pairs

    known: dict[str, dict] = {}
    for rdir, models in earlier:
        for row in read_heldout_pairs(rdir) or []:
            for name, ref in models.items():
                pair = (row[f"logp_{name}_chosen"], row[f"logp_{name}_rejected"])
                if not any(math.isnan(x) for x in pair):
                    known.setdefault(ref, {}).setdefault(row["pair_id"], pair)
    return known


# --------------------------------------------------------------------------- judge


def with_judge_scores(samples: list[EvalSample], ensemble) -> list[EvalSample]:
    """Pointwise judge scores on the samples users see (not the temperature-1 extras)."""
    shown = [n for n, s in enumerate(samples) if s.model != "policy_kl"]
    scores = ensemble.score([samples[n].prompt for n in shown], [samples[n].text for n in shown])
    out = list(samples)
    for n, sc in zip(shown, scores or [], strict=False):
        out[n] = dataclasses.replace(samples[n], judge_score=float(sc))
    return out


def compare(own: list[EvalSample], theirs: list[dict], opponent: str, ensemble,
            tie_margin: float) -> list[EvalComparison]:
    """The judges' verdicts on this round's policy samples against `theirs` (same prompt
    and sample index); identical texts and near-0.5 verdicts are ties."""
    from alignloop.labeling import Comparison

    text = {(r["prompt_id"], r["sample_index"]): r["text"] for r in theirs}
    pairs = [(s, text[(s.prompt_id, s.sample_index)]) for s in own
             if (s.prompt_id, s.sample_index) in text]
    verdicts = ensemble.judge([Comparison(s.prompt, s.text, t) for s, t in pairs])
    out = []
    for (s, t), j in zip(pairs, verdicts, strict=True):
        p = j.p_a if j.valid else 0.5
        out.append(EvalComparison(s.prompt_id, s.slice, s.sample_index, opponent, p,
                                  tie=(s.text == t) or abs(p - 0.5) < tie_margin,
                                  judge="ensemble"))
    return out


def eval_items(pool, n: int) -> list:
    """The held-out prompts evaluated every round: all, or the first n by id."""
    items = sorted(pool.eval, key=lambda it: it.prompt_id)
    return items[:n] if n else items
