"""Where one alignloop DPO step spends its time, by op class, from torch.profiler.

Runs the trainer's own step (`training.trainer._optimizer_step`: the packed forward, the
loss, backward, clipping, AdamW) on one batch of the benchmark pairs, twice to warm up,
once timed without the profiler and once under it, and sorts every profiled op's self
time into classes:

    matmuls       aten::mm / addmm / bmm / baddbmm (the decoder's linear layers, fwd + bwd)
    LM head       every op with a vocabulary-sized operand: the output projection on the
                  response positions, the log-softmax over the vocabulary and, for a model
                  with tied embeddings, the embedding's vocabulary-sized gradient
    attention     the fused attention kernels (scaled_dot_product_* and their backward), and
                  the ops of the packed batches' matmul attention (alignloop.attention):
                  aten::bmm (it is the only batched matmul of a step but for the rotary
                  embedding's tiny one) and the attention softmax, forward and backward (the
                  packed mask is added to the scores since 2026-12-08: in an eager step that
                  add is an aten::add, counted as elementwise; a boolean mask's fill counted
                  as attention)
    optimizer     AdamW's step and zero_grad (torch labels them `Optimizer.*`) and the
                  `_foreach_*` ops of gradient clipping
    elementwise   every other aten op (norms, activations, adds, copies, casts, indexing)
    other         time in profiler frames that are not aten ops (autograd bookkeeping)

A compiled step (`--compile`, `train.compile`) runs inductor's fused C++ kernels, which the
profiler names `graph_N_cpp_fused_<the ops fused>` (with inductor's kernel profiling on):
one that fuses a softmax is attention, every other one elementwise; the matmuls inductor
leaves to ATen stay `aten::mm`.

Self times on the calling thread are wall time of the op (intra-op threads included),
so the classes add up to about the profiled step's wall time (the profiler's own
overhead included; the step is also timed without it). The matmuls' own rate is also
reported: their FLOPs (2MKN per matmul, from the recorded shapes) over their self time,
which says how far the matmuls alone stop short of the measured peak.

    python benchmarks/dpo_step_profile.py [--precision fp32|bf16-mixed] [--lora] [--compile]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

MATMULS = {"aten::mm", "aten::addmm", "aten::baddbmm"}
MATMUL_ATTENTION = {"aten::bmm", "aten::_softmax", "aten::_softmax_backward_data", "aten::masked_fill",
                    "aten::masked_fill_"}
CLASSES = ("matmuls", "LM head", "attention", "optimizer", "elementwise", "other")


def _classify(ev, vocab: int) -> str:
    """The op class of one profiler event (see the module docstring)."""
    name, parent = ev.name, ev.cpu_parent
    while parent is not None:
        if parent.name.startswith("Optimizer."):
            return "optimizer"
        parent = parent.cpu_parent
    if name.startswith("Optimizer.") or name.startswith("aten::_foreach"):
        return "optimizer"
    if name.startswith("graph_") and "_cpp_fused_" in name:   # an inductor kernel
        return "attention" if "softmax" in name else "elementwise"
    if not name.startswith("aten::"):
        return "other"
    if any(vocab in (shape or ()) for shape in (ev.input_shapes or ())):
        return "LM head"
    if name in MATMULS:
        return "matmuls"
    if name in MATMUL_ATTENTION or "scaled_dot_product" in name or "flash_attention" in name or "efficient_attention" in name:
        return "attention"
    return "elementwise"


def _matmul_flops(ev) -> float:
    """FLOPs of one matmul event from its recorded input shapes (0 when they are missing):
    mm (M, K) x (K, N) and addmm (bias, M, K, K, N): 2MKN; baddbmm (bias, B, M, K, B, K, N):
    2BMKN."""
    shapes = [s for s in (ev.input_shapes or ()) if s]
    if ev.name == "aten::mm" and len(shapes) >= 2 and len(shapes[0]) == 2:
        (m, k), n = shapes[0], shapes[1][-1]
        return 2.0 * m * k * n
    if ev.name == "aten::addmm" and len(shapes) >= 3 and len(shapes[1]) == 2:
        (m, k), n = shapes[1], shapes[2][-1]
        return 2.0 * m * k * n
    if ev.name == "aten::baddbmm" and len(shapes) >= 3 and len(shapes[1]) == 3:
        (b, m, k), n = shapes[1], shapes[2][-1]
        return 2.0 * b * m * k * n
    return 0.0


def trainer_steps(model_name: str, pairs, *, batch: int, max_length: int, precision: str = "fp32",
                  lora: dict | None = None, compiled: bool = False) -> tuple:
    """(step, vocabulary size): `step(indices)` runs one optimizer step of the trainer on the
    pairs at `indices` (one micro-batch), with reference log-probs computed once up front."""
    from alignloop.config import config_from_dict
    from alignloop.models import load_model, load_tokenizer
    from alignloop.placement import resolve_placement
    from alignloop.training.batching import encode_pairs
    from alignloop.training.reference import ReferenceLogps, compute_reference_logps
    from alignloop.training.trainer import _build_run, _optimizer_step, make_accelerator

    cfg = config_from_dict({
        "model": {"name": model_name, "precision": precision,
                  "lora": {"enabled": bool(lora), **(lora or {})}},
        "data": {"max_length": max_length, "max_prompt_length": max_length - 1},
        "train": {"batch_size": batch, "max_steps": 3, "learning_rate": 1e-5, "compile": compiled},
    })
    placement = resolve_placement("cpu", precision)
    tok = load_tokenizer(model_name)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    encoded, _ = encode_pairs(pairs, tok, max_length=max_length,
                              max_prompt_length=max_length - 1, progress=False)
    accelerator = make_accelerator(placement)
    model = load_model(model_name, dtype=placement.weights_dtype, device="cpu")
    vocab = model.get_output_embeddings().weight.shape[0]
    chosen, rejected = compute_reference_logps(model, encoded, pad_id=pad_id, batch_size=batch,
                                               placement=placement, progress=False)
    ref = ReferenceLogps(chosen.float(), rejected.float(), "", False)
    run = _build_run(accelerator, model, [p.length for p in encoded], cfg.model.lora, cfg.train,
                     placement, compiled=compiled)

    def step(indices: list[int]) -> dict:
        return _optimizer_step(run, [indices], encoded, ref, pad_id, cfg.train)

    return step, vocab


def profile_step(model_name: str, pairs, *, batch: int, max_length: int, precision: str = "fp32",
                 lora: dict | None = None, compiled: bool = False) -> dict:
    """Seconds per op class of one optimizer step of `batch` pairs (see module docstring)."""
    from torch.profiler import ProfilerActivity, profile

    if compiled:   # name each fused kernel in the profile (see the module docstring)
        import torch._inductor.config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True
    train_step, vocab = trainer_steps(model_name, pairs[:batch], batch=batch, max_length=max_length,
                                      precision=precision, lora=lora, compiled=compiled)
    batch_indices = list(range(len(pairs[:batch])))

    def step():
        return train_step(batch_indices)

    for _ in range(2):   # warm-up: the allocator's heap, first-call dispatch (one was not enough:
        step()           # the second step still ran 20-30% slower than the third)
    t0 = time.perf_counter()
    tokens = step()["tokens"]
    plain = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(), profile(activities=[ProfilerActivity.CPU],
                                                record_shapes=True) as prof:
        t0 = time.perf_counter()
        step()
        profiled = time.perf_counter() - t0
    seconds = dict.fromkeys(CLASSES, 0.0)
    matmul_flops = 0.0
    for ev in prof.events():
        kind = _classify(ev, vocab)
        seconds[kind] += ev.self_cpu_time_total / 1e6
        if kind == "matmuls":
            matmul_flops += _matmul_flops(ev)
    total = sum(seconds.values())
    rate = matmul_flops / seconds["matmuls"] / 1e9 if seconds["matmuls"] else 0.0
    return {"precision": precision, "lora": bool(lora), "compiled": compiled,
            "pairs": len(batch_indices), "tokens": tokens, "matmul_gflops": rate,
            "step_s": plain, "profiled_step_s": profiled, "seconds": seconds,
            "share": {k: v / total for k, v in seconds.items()} if total else {}}


def table(profiles: list[dict], peaks: dict[str, float] | None = None) -> str:
    """Markdown: one row per profiled step, one column per op class (seconds and share), and
    the matmuls' own rate (against the matmul peak of the step's precision, when given)."""
    head = "| step | step (s) | profiled (s) | " + " | ".join(CLASSES) + " | matmul rate |"
    lines = [head, "|" + "---|" * (4 + len(CLASSES))]
    for p in profiles:
        if "error" in p:
            lines.append(f"| {p.get('name', '?')} | error: {p['error'][:60]} |" + " |" * (len(CLASSES) + 1))
            continue
        mode = ("LoRA" if p["lora"] else "full") + (", compiled" if p.get("compiled") else "")
        cells = " | ".join(f"{p['seconds'][k]:.2f} s ({100 * p['share'][k]:.0f}%)" for k in CLASSES)
        rate = p.get("matmul_gflops")
        peak = (peaks or {}).get("fp32" if p["precision"] == "fp32" else "bf16")
        rate_cell = "-" if not rate else f"{rate:.0f} GFLOP/s" + (f" ({100 * rate / peak:.0f}% of peak)"
                                                               if peak else "")
        lines.append(f"| {mode}, {p['precision']}, {p['pairs']} pairs ({p['tokens']} tokens) | "
                     f"{p['step_s']:.2f} | {p['profiled_step_s']:.2f} | {cells} | {rate_cell} |")
    return "\n".join(lines)


def main() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from alignloop.data import read_pairs
    from dpo_throughput import BATCH, LORA, MAX_LENGTH, MODEL

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16-mixed"])
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--compile", action="store_true", help="train.compile: true")
    args = ap.parse_args()
    pairs = read_pairs("builtin:demo-pairs", limit=BATCH)[0]
    p = profile_step(MODEL, pairs, batch=BATCH, max_length=MAX_LENGTH, precision=args.precision,
                     lora=LORA if args.lora else None, compiled=args.compile)
    print(json.dumps(p, indent=2))
    print(table([p]))


if __name__ == "__main__":
    main()
