"""The placement policy: `model.device` and `model.precision` resolved once per process, `auto`
decided by CPU flags and a matmul probe cached per machine (or the GPU's bf16 support), the
trainer's accelerator on the resolved device, and the placement recorded where runs keep it."""

from pathlib import Path

import pytest
import torch
import yaml
from alignloop import placement as P
from alignloop.placement import Placement, PlacementError, resolve_placement

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_resolution():
    resolve_placement.cache_clear()
    yield
    resolve_placement.cache_clear()


@pytest.fixture
def probe(monkeypatch, tmp_path):
    """A scripted machine: `probe(flags, fp32, bf16)` sets the CPU flags and matmul rates;
    the returned list counts measurements."""
    monkeypatch.setenv("ALIGNLOOP_CACHE", str(tmp_path))
    measured = []

    def machine(flags, fp32=100.0, bf16=400.0, cpu="Test CPU"):
        monkeypatch.setattr(P, "cpu_info", lambda: (cpu, flags))
        monkeypatch.setattr(P, "measure_matmul_rates",
                            lambda: measured.append(1) or (fp32, bf16, 1024))
        return measured

    return machine


@pytest.fixture
def cuda(monkeypatch):
    """Pretend CUDA is present: `cuda(count, bf16)`."""
    def gpus(count=2, bf16=True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    return gpus


@pytest.mark.parametrize("flags, fp32, bf16, expected", [
    (["fpu", "avx2", "avx512_bf16"], 204.0, 879.0, "bf16-mixed"),   # EPYC with avx512_bf16 (issue 15)
    (["fpu", "amx_bf16"], 333.0, 1688.0, "bf16-mixed"),             # Xeon with AMX
    (["fpu", "avx512_bf16"], 200.0, 300.0, "fp32"),                 # units, but under 2x
    (["fpu", "avx2"], 60.0, 0.6, "fp32"),                           # no bf16 units (this machine)
    (["fpu", "avx2"], 60.0, 240.0, "fp32"),                         # a noisy probe cannot override the flags
    (None, 50.0, 150.0, "bf16-mixed"),                              # flags unknown: the probe decides
])
def test_auto_precision_on_a_cpu_is_flags_and_probe(probe, flags, fp32, bf16, expected):
    probe(flags, fp32, bf16)
    placed = resolve_placement("auto", "auto")
    assert (placed.device, placed.precision) == ("cpu", expected)
    assert f"{bf16:.1f} vs fp32 {fp32:.1f} GFLOP/s" in placed.why


def test_probe_runs_once_per_machine_and_again_for_another(probe, monkeypatch):
    measured = probe(["avx512_bf16"])
    first = P.cpu_bf16_probe()
    assert P.cpu_bf16_probe() == first and len(measured) == 1   # read from the cache
    assert first["speedup"] == 4.0 and first["bf16_flags"] == ["avx512_bf16"]
    monkeypatch.setattr(torch, "__version__", "9.9.9")             # another torch: measured again
    P.cpu_bf16_probe()
    probe(["avx512_bf16", "amx_bf16"])                              # other flags: measured again
    P.cpu_bf16_probe()
    assert len(measured) == 3


def test_resolved_once_per_process(probe):
    measured = probe(["avx2"])
    assert resolve_placement() is resolve_placement()
    assert len(measured) == 1


def test_this_machine_resolves_as_its_flags_say():
    """On a CPU without bf16 units (the AMD EPYC here) `auto` is fp32, by the real probe."""
    if torch.cuda.is_available():
        pytest.skip("a GPU machine")
    cpu, flags = P.cpu_info()
    placed = resolve_placement()
    assert placed.device == "cpu" and "probe: bf16" in placed.why
    if flags is not None and not P.BF16_FLAGS & set(flags):
        assert placed.precision == "fp32"


def test_explicit_values_and_what_this_machine_cannot_do(cuda, probe):
    probe(["avx2"])
    assert resolve_placement("cpu", "bf16") == Placement("cpu", "bf16", "set in the config")
    with pytest.raises(PlacementError, match="CUDA is not available"):
        resolve_placement("cuda", "auto")
    with pytest.raises(PlacementError, match="must be auto, cpu, cuda or cuda:N"):
        resolve_placement("gpu", "auto")
    with pytest.raises(PlacementError, match="must be one of"):
        resolve_placement("cpu", "fp16")
    cuda(count=2, bf16=True)
    assert resolve_placement("auto", "auto") == Placement("cuda:0", "bf16-mixed",
                                                         "auto: the GPU supports bf16")
    assert resolve_placement("cuda:1", "fp32").device == "cuda:1"
    with pytest.raises(PlacementError, match="has 2 CUDA device"):
        resolve_placement("cuda:2", "auto")
    resolve_placement.cache_clear()
    cuda(count=1, bf16=False)                                       # a V100
    assert resolve_placement("cuda", "auto").precision == "fp32"
    with pytest.raises(PlacementError, match="no bf16 support"):
        resolve_placement("cuda", "bf16-mixed")


def test_auto_device_is_the_process_gpu_under_a_launch(cuda, monkeypatch):
    cuda(count=2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_placement("auto", "fp32").device == "cuda:1"


def test_dtypes_and_autocast_per_precision():
    fp32, mixed, bf16 = (Placement("cpu", p) for p in ("fp32", "bf16-mixed", "bf16"))
    assert (fp32.weights_dtype, fp32.sampling_dtype) == (torch.float32, torch.float32)
    assert (mixed.weights_dtype, mixed.sampling_dtype) == (torch.float32, torch.bfloat16)
    assert (bf16.weights_dtype, bf16.sampling_dtype) == (torch.bfloat16, torch.bfloat16)
    x = torch.randn(4, 4)
    for placed, dtype in ((fp32, torch.float32), (mixed, torch.bfloat16), (bf16, torch.float32)):
        with placed.autocast():
            assert (x @ x).dtype == dtype


def test_the_trainer_asks_accelerate_for_the_resolved_device(cuda, monkeypatch):
    import accelerate
    from alignloop.training.trainer import make_accelerator

    made, selected = [], []
    monkeypatch.setattr(accelerate, "Accelerator", lambda **kw: made.append(kw) or kw)
    monkeypatch.setattr(torch.cuda, "set_device", selected.append)
    make_accelerator(Placement("cpu", "bf16-mixed"))
    cuda(count=2)
    make_accelerator(Placement("cuda:1", "bf16-mixed"))
    # mixed precision is ours (placement.autocast), never accelerate's
    assert made == [{"mixed_precision": "no", "cpu": True}, {"mixed_precision": "no", "cpu": False}]
    assert selected == ["cuda:1"]
    monkeypatch.setenv("WORLD_SIZE", "2")     # under a launch accelerate picks each process's GPU
    make_accelerator(Placement("cuda:1", "fp32"))
    assert selected == ["cuda:1"]


def test_train_command_records_the_resolved_placement(tmp_path, monkeypatch):
    from alignloop.cli import main

    monkeypatch.setattr(P, "cpu_bf16_probe", lambda: {
        "cpu": "Test CPU", "flags_known": True, "bf16_flags": [], "n": 1024,
        "fp32_gflops": 60.0, "bf16_gflops": 0.6, "speedup": 0.01})
    out = tmp_path / "out"
    assert main(["-q", "train", str(ROOT / "configs/tiny.yaml"), "--out", str(out),
                 "--set", "train.max_steps=1", "--set", "train.grad_accum=1",
                 "--set", "train.batch_size=2"]) == 0
    text = (out / "config.yaml").read_text()
    model = yaml.safe_load(text)["model"]
    assert (model["device"], model["precision"]) == ("cpu", "fp32")
    assert text.startswith("# model.device: auto and model.precision: auto resolved to cpu, fp32 "
                           "(auto: CPU without bf16 units (Test CPU); probe: bf16 0.6 vs fp32 60.0")
