"""Where models run and in what precision: one placement for every stage that runs a model
(training, the reference pass, `hf` sampling, judges, evaluation, selection log-probs),
resolved once per process from `model.device` and `model.precision`.

    model.device      auto | cpu | cuda | cuda:N    auto: the process's GPU if CUDA is available
    model.precision   auto | fp32 | bf16-mixed | bf16

                  trained and scoring weights   matmuls           sampling and judge weights
    fp32          fp32                          fp32              fp32
    bf16-mixed    fp32                          bf16 (autocast)   bf16
    bf16          bf16                          bf16              bf16

Scoring is every log-prob that feeds a number we report or train on: the reference pass,
the evaluation's KL estimates, the selection's implicit reward. It runs with the trained
weights' dtype under the same autocast as training, so a reference scored from the policy
gives exactly the policy's log-probs (the DPO log-ratio starts at 0) and both load with
one weights hash (the reference cache's key, with the precision). Sampling and judging
use bf16 weights: autocast would re-cast every weight at every decoding step. Measured
on SmolLM2-135M (two responses of 14-17 tokens), against fp32: autocast moves a
response's log-prob by 0.14-0.23 nat (0.01-0.015 per token), bf16 weights by 0.21-0.60;
computing the output projection in fp32 as well changed little (0.08-0.23).

Log-probs are fp32 in every mode: logits are upcast and the log-softmax over the
vocabulary runs with autocast off; sums accumulate in fp32 or fp64.

`auto` precision is bf16-mixed where bf16 pays and fp32 elsewhere. On CUDA: where the
GPU supports bf16. On a CPU: where its flags name bf16 units (x86 `avx512_bf16` or
`amx_bf16`, Arm `bf16`) and a short matmul probe measures bf16 at least `MIN_SPEEDUP`
times faster than fp32; CPUs without bf16 units run bf16 matmuls 10-500x slower than
fp32. The probe (about a second) runs once per machine: its result is cached under
`cache_dir()/probes/`, keyed by the CPU model, its flags and the torch version (delete
the file, or call `cpu_bf16_probe(refresh=True)`, to measure again).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path

from alignloop.config.model import DEVICE_PATTERN
from alignloop.errors import AlignloopError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16-mixed", "bf16")
MIN_SPEEDUP = 2.0
"""`auto` picks bf16-mixed on a CPU whose bf16 matmuls measure at least this many times fp32's."""
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 (two kinds of units), Arm
FP16_FLAGS = frozenset({"avx512_fp16", "amx_fp16", "fphp"})   # the same for float16
PROBE_VERSION = 1


class PlacementError(AlignloopError, ValueError):
    """A device or precision this machine cannot provide (CUDA absent, a GPU without bf16)."""


@dataclass(frozen=True)
class Placement:
    """A resolved placement: `device` is "cpu" or "cuda:N", `precision` one of PRECISIONS,
    `why` says how it was decided (the probe's numbers for a CPU's `auto`)."""

    device: str = "cpu"
    precision: str = "fp32"
    why: str = ""

    @property
    def weights_dtype(self):
        """The dtype of weights that are trained or score log-probs (reference, evaluation,
        selection), used under `autocast()`."""
        import torch

        return torch.bfloat16 if self.precision == "bf16" else torch.float32

    @property
    def sampling_dtype(self):
        """The dtype of weights that sample (the `hf` backend) or judge."""
        import torch

        return torch.float32 if self.precision == "fp32" else torch.bfloat16

    def autocast(self):
        """bf16 autocast for bf16-mixed (around training and scoring forwards); a no-op
        context otherwise."""
        import torch

        if self.precision != "bf16-mixed":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16)

    def to_dict(self) -> dict:
        return {"device": self.device, "precision": self.precision, "why": self.why}


def placement_for(model_cfg) -> Placement:
    """The placement a `model:` config section asks for (resolved once per process)."""
    return resolve_placement(model_cfg.device, model_cfg.precision)


@functools.cache
def resolve_placement(device: str = "auto", precision: str = "auto") -> Placement:
    """`model.device` and `model.precision` -> a Placement; PlacementError when this machine
    cannot provide them. Cached: every stage of a process gets the same answer."""
    dev = resolve_device(device)
    if precision == "auto":
        chosen, why = _auto_precision(dev)
    elif precision in PRECISIONS:
        if dev.startswith("cuda") and precision != "fp32" and not _cuda_bf16():
            raise PlacementError(f"model.precision: {precision}, but {dev} has no bf16 support; "
                                 "use fp32 (or auto)")
        chosen, why = precision, "set in the config"
    else:
        raise PlacementError(f"model.precision must be one of {['auto', *PRECISIONS]}, "
                             f"got {precision!r}")
    placement = Placement(dev, chosen, why)
    log.info("placement: %s, %s (%s)", dev, chosen, why)
    return placement


def resolve_device(spec: str) -> str:
    """"auto" | "cpu" | "cuda" | "cuda:N" -> "cpu" or "cuda:N". `auto` and `cuda` mean the
    process's GPU: cuda:LOCAL_RANK under a multi-process launch, else cuda:0."""
    import torch

    if not re.fullmatch(DEVICE_PATTERN, spec):
        raise PlacementError(f"model.device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return "cpu"
    if not torch.cuda.is_available():
        raise PlacementError(f"model.device: {spec}, but CUDA is not available here "
                             "(use auto or cpu)")
    index = int(spec.split(":")[1]) if ":" in spec else \
        int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
    if index >= torch.cuda.device_count():
        raise PlacementError(f"model.device: {spec}, but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    return f"cuda:{index}"


def _cuda_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _auto_precision(device: str) -> tuple[str, str]:
    if device.startswith("cuda"):
        return ("bf16-mixed", "auto: the GPU supports bf16") if _cuda_bf16() else \
               ("fp32", "auto: the GPU has no bf16")
    probe = cpu_bf16_probe()
    units = probe["bf16_flags"]
    measured = (f"probe: bf16 {probe['bf16_gflops']:.1f} vs fp32 {probe['fp32_gflops']:.1f} "
                f"GFLOP/s ({probe['speedup']:.2f}x) at n={probe['n']}")
    if probe["flags_known"] and not units:
        return "fp32", f"auto: CPU without bf16 units ({probe['cpu']}); {measured}"
    if probe["speedup"] < MIN_SPEEDUP:
        return "fp32", f"auto: bf16 under {MIN_SPEEDUP:g}x fp32 on {probe['cpu']}; {measured}"
    return "bf16-mixed", f"auto: {probe['cpu']} has {', '.join(units) or 'bf16'}; {measured}"


# --------------------------------------------------------------------------- the CPU probe


def cpu_info() -> tuple[str, list[str] | None]:
    """(CPU model name, its feature flags or None where /proc/cpuinfo does not list them)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    model = next((fields[k] for k in ("model name", "Hardware", "CPU part") if fields.get(k)),
                 platform.processor() or platform.machine())
    flags = fields.get("flags", fields.get("Features"))  # x86, Arm
    return model, None if flags is None else flags.split()


def cpu_bf16_probe(*, refresh: bool = False) -> dict:
    """This machine's bf16 and fp32 matmul rates: measured once, then read from the cache
    (keyed by CPU model, flags and torch version). `refresh` measures again."""
    import torch
    from alignloop.artifacts import atomic_write_json
    from alignloop.models import cache_dir

    cpu, flags = cpu_info()
    key = json.dumps([PROBE_VERSION, cpu, sorted(flags or []), torch.__version__])
    path = cache_dir() / "probes" / f"bf16-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if path.is_file() and not refresh:
        with contextlib.suppress(ValueError, OSError):
            return json.loads(path.read_text())
    fp32, bf16, n = measure_matmul_rates()
    result = {"cpu": cpu, "flags_known": flags is not None,
              "bf16_flags": sorted(BF16_FLAGS & set(flags or [])), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "n": n, "fp32_gflops": round(fp32, 2),
              "bf16_gflops": round(bf16, 2), "speedup": round(bf16 / fp32, 3),
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result)
    log.info("bf16 probe on %s: %s", cpu, result)
    return result


def measure_matmul_rates(min_seconds: float = 0.25) -> tuple[float, float, int]:
    """(fp32 GFLOP/s, bf16 GFLOP/s, n) of an n x n x n matmul, the fastest of repeats that
    alternate the two dtypes (so a burst of load elsewhere slows both). Where bf16 is 4x
    slower than fp32 at n=256 (no bf16 units), that answers; otherwise n doubles until one
    fp32 matmul takes 2 ms (at most 2048), so fast machines are not judged on toy sizes."""
    import torch

    def fastest(n: int) -> tuple[float, float]:
        ab = {dt: (torch.randn(n, n).to(dt), torch.randn(n, n).to(dt))
              for dt in (torch.float32, torch.bfloat16)}
        times: dict = {dt: [] for dt in ab}
        with torch.inference_mode():
            while sum(map(sum, times.values())) < min_seconds or min(map(len, times.values())) < 2:
                for dt, (a, b) in ab.items():
                    t0 = time.perf_counter()
                    a @ b
                    times[dt].append(time.perf_counter() - t0)
        # the first of each is a warm-up
        return min(times[torch.float32][1:]), min(times[torch.bfloat16][1:])

    n = 256
    fp32, bf16 = fastest(n)
    while bf16 < 4 * fp32 and fp32 < 2e-3 and n < 2048:
        n *= 2
        fp32, bf16 = fastest(n)
    flop = 2 * n ** 3 / 1e9
    return flop / fp32, flop / bf16, n
