"""The real embedded model, once per `make test`: a few LoRA DPO steps on SmolLM2-135M-Instruct."""

import json
import math

import pytest
import torch
from alignloop.config import config_from_dict
from alignloop.data import read_pairs
from alignloop.placement import placement_for
from alignloop.training.trainer import train_dpo

MODEL = "builtin:smollm2-135m-instruct"


def test_smollm2_lora_dpo_smoke(tmp_path):
    from alignloop.models import load_model, load_tokenizer

    pairs = read_pairs("builtin:demo-pairs", limit=4)[0]
    cfg = config_from_dict({
        "model": {"name": MODEL, "lora": {"enabled": True, "r": 8, "alpha": 16}},
        "train": {"batch_size": 2, "grad_accum": 1, "max_steps": 2, "learning_rate": 1e-3,
                  "lr_schedule": "constant"},
    })
    result = train_dpo(pairs, out_dir=tmp_path, policy=MODEL, model_cfg=cfg.model,
                       data_cfg=cfg.data, train_cfg=cfg.train, progress=False)
    log = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2
    # LoRA B starts at zero: policy == reference, so the first margin is rounding alone and
    # the loss is -log sigmoid(margin), ln 2 up to it. In fp32 the loss is within 1e-4 of
    # ln 2. Under bf16-mixed (what `auto` picks on a CPU with fast bf16) the policy's
    # autocast forward (batches of 2) and the cached reference pass (batches of 8) round
    # their bf16 matmuls differently: on the AMX Xeon the log-ratio margin came to 0.15 nats
    # against 130 nats of summed log-probs, 0.12% (loss 0.7007; 0.6955 before the bf16
    # matmul attention). Bound it relative to the log-probs: 0.5% (fp32: 0.01%).
    first = log[0]
    precision = placement_for(cfg.model).precision
    assert first["loss"] == pytest.approx(math.log1p(math.exp(-first["rewards/margin"])), abs=1e-5)
    log_ratio_margin = abs(first["rewards/margin"]) / cfg.train.beta
    scale = abs(first["logps/chosen"]) + abs(first["logps/rejected"])
    assert log_ratio_margin <= (1e-4 if precision == "fp32" else 5e-3) * scale, (precision, first)
    if precision == "fp32":
        assert first["loss"] == pytest.approx(0.693147, abs=1e-4)
    assert log[1]["loss"] < first["loss"]        # one step at lr 1e-3 moves the right way
    assert (result.policy_dir / "adapter_model.safetensors").exists()   # the adapter only
    assert not (result.policy_dir / "model.safetensors").exists()
    model = load_model(str(result.policy_dir))                         # merged when loaded
    base = load_model(MODEL).state_dict()
    changed = [k for k, v in model.state_dict().items() if k in base and not torch.equal(v, base[k])]
    assert changed, "the merged policy equals the base model"
    # the merged policy generates text
    tok = load_tokenizer(str(result.policy_dir))
    ids = tok.apply_chat_template([{"role": "user", "content": "Say hi."}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
