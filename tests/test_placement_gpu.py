"""GPU wiring without a GPU: the tiny loop runs two rounds with `model.device: cuda:1` and
`model.precision: bf16-mixed` while CUDA is only pretended, and every model any stage loads
must be placed on cuda:1 in the dtype its role takes. A stage that forgets the placement
fails here, not on a user's GPU.

The pretence: `torch.cuda` says two bf16 GPUs are present; `nn.Module.to` and `Tensor.to`
record where they were asked to go and go to the CPU instead; `Placement.autocast` records
that it was entered (CUDA autocast cannot run on a CPU-only torch); the trainer's
accelerator is a CPU one that reports the GPU device it was asked for.

Roles: a model that samples (the `hf` backend) or judges (`llm_pairwise`, `reward_model`)
gets bf16 weights; one that is trained or scores log-probs (reference pass, evaluation KL,
`apl` selection) gets fp32 master weights and runs under the placement's autocast.
"""

import contextlib
import traceback
from pathlib import Path

import pytest
import torch
import yaml
from alignloop.config import config_from_dict
from alignloop.placement import Placement, resolve_placement
from alignloop.rounds import Loop
from alignloop.rounds.state import Run

ROOT = Path(__file__).resolve().parents[1]
GPU = "cuda:1"
SAMPLERS = {("hf.py", "__init__"), ("llm_pairwise.py", "load"),
            ("reward_model.py", "load_reward_model")}
FAST = ["loop.eval_prompts=6", "loop.prompts_per_round=4", "generation.n=3",
        "generation.max_new_tokens=8", "train.max_steps=2", "labeling.human.budget=4"]


class _Recorder:
    def __init__(self):
        self.stage = ("-", "-")
        self.models: list[dict] = []     # every model moved to a device
        self.autocasts: list[tuple] = []
        self.accelerators: list[str] = []


def _role() -> str:
    frames = {(Path(f.filename).name, f.name) for f in traceback.extract_stack()}
    return "sample" if frames & SAMPLERS else "score"


@pytest.fixture
def pretend_gpu(monkeypatch):
    from alignloop.training import trainer
    from transformers import PreTrainedModel

    rec = _Recorder()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)

    def on_cpu(device):
        return "cpu" if device is not None and torch.device(device).type == "cuda" else device

    module_to = torch.nn.Module.to

    def record_module_to(self, *args, **kwargs):
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        moved = module_to(self, **{k: v for k, v in (("device", on_cpu(device)), ("dtype", dtype))
                                   if v is not None})
        if device is not None and isinstance(self, PreTrainedModel):
            rec.models.append({"stage": rec.stage, "model": type(self).__name__, "role": _role(),
                               "device": str(device), "dtype": next(self.parameters()).dtype})
        return moved

    tensor_to = torch.Tensor.to

    def redirect_tensor_to(self, *args, **kwargs):
        args = tuple(on_cpu(a) if isinstance(a, (str, torch.device)) else a for a in args)
        if "device" in kwargs:
            kwargs["device"] = on_cpu(kwargs["device"])
        return tensor_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", record_module_to)
    monkeypatch.setattr(torch.Tensor, "to", redirect_tensor_to)
    monkeypatch.setattr(Placement, "autocast", lambda self: rec.autocasts.append(
        (rec.stage, self.device, self.precision)) or contextlib.nullcontext())

    class OnGPU:
        """A CPU accelerator that reports the GPU device it was asked for."""

        def __init__(self, placement):
            from accelerate import Accelerator

            self._cpu = Accelerator(cpu=True, device_placement=False)
            self.device = torch.device(placement.device)

        def __getattr__(self, name):
            return getattr(self._cpu, name)

    monkeypatch.setattr(trainer, "make_accelerator", lambda placement: rec.accelerators.append(
        placement.device) or OnGPU(placement))
    stage = Run.stage

    def tagged(self, k, name, fn, outputs):
        def run():
            rec.stage = (k, name)
            return fn()
        return stage(self, k, name, run, outputs)

    monkeypatch.setattr(Run, "stage", tagged)
    resolve_placement.cache_clear()
    yield rec
    resolve_placement.cache_clear()


@pytest.fixture
def reward_model_dir(tmp_path):
    from alignloop.models import load_tokenizer
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tokenizer = load_tokenizer("builtin:tiny-random")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         num_labels=1, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForSequenceClassification(config)
    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    return str(tmp_path / "rm")


def test_every_stage_places_every_model_on_the_resolved_gpu(pretend_gpu, reward_model_dir, tmp_path):
    raw = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    raw["labeling"]["judges"] += [
        {"kind": "llm_pairwise", "models": ["builtin:tiny-random"], "min_verdict_mass": 0.0},
        {"kind": "reward_model", "models": [reward_model_dir]}]
    cfg = config_from_dict(raw, [*FAST, f"model.device={GPU}", "model.precision=bf16-mixed",
                                 "labeling.selection.strategy=apl"])
    loop = Loop(cfg, tmp_path / "run")
    assert loop.placement == Placement(GPU, "bf16-mixed", "set in the config")
    summary = loop.run()
    assert summary["rounds"] == [0, 1]

    rec = pretend_gpu
    wrong = [m for m in rec.models if m["device"] != GPU or m["dtype"] != (
        torch.bfloat16 if m["role"] == "sample" else torch.float32)]
    assert not wrong, wrong
    stages = {(m["stage"][1], m["role"]) for m in rec.models}
    assert {("reference", "score"), ("train", "score"), ("generate", "sample"),
            ("judge", "score"), ("eval", "sample"), ("eval", "score")} <= stages
    assert {"LlamaForSequenceClassification", "LlamaForCausalLM"} <= {m["model"] for m in rec.models}
    assert rec.accelerators == [GPU, GPU]                          # one train per round
    entered = {stage[1] for stage, device, precision in rec.autocasts
               if (device, precision) == (GPU, "bf16-mixed")}
    assert {"reference", "train", "judge", "eval"} <= entered      # every scoring forward
    placement = loop.state.state["rounds"]["1"]["placement"]
    assert (placement["device"], placement["precision"]) == (GPU, "bf16-mixed")
