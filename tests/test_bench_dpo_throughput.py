"""benchmarks/dpo_throughput.py: the `train.compile` rows get an empty inductor cache each,
and the table says what their first step (compile included) cost."""

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import dpo_throughput  # noqa: E402

META = {"pairs": 64, "batch": 8, "matmul_peak_gflops": 370.0, "bf16_matmul_peak_gflops": 2400.0,
        "machine": "test machine", "date": "2026-12-07", "command": "python benchmarks/dpo_throughput.py"}
PEAKS = {"fp32": 370.0, "bf16": 2400.0}


def _result(setting, lora, first, rest):
    raw = {"setting": setting, "lora": lora, "steps": 3, "pairs": 64, "step_s": [first, rest, rest],
           "step_tokens": [1000, 1000, 1000], "reference_s": 5.0, "peak_rss_mb": 6000.0}
    return dpo_throughput.summarise(raw, 8000, 8, 135_000_000, PEAKS)


def test_compiled_rows_show_their_first_step_beside_the_eager_ones():
    rows = [_result("alignloop-bf16", False, 5.1, 3.0),
            _result("alignloop-bf16-compiled", False, 43.4, 2.0),
            _result("alignloop-compiled", True, 30.0, 4.0)]          # no eager fp32 LoRA row
    md = dpo_throughput.table(rows, META)
    assert "| full | alignloop-bf16-compiled | bf16-mixed, compiled | 500 |" in md
    assert ("first step, dropped above, compiles with an empty inductor cache: full "
            "alignloop-bf16-compiled 43.4 s (eager 5.1 s).") in md
    assert "LoRA alignloop-compiled" not in md


def test_only_compiled_settings_get_a_fresh_inductor_cache(monkeypatch):
    seen = {}

    def run(cmd, **kw):
        spec = json.loads(cmd[-1])
        seen[spec["setting"]] = kw["env"].get("TORCHINDUCTOR_CACHE_DIR")
        return subprocess.CompletedProcess(cmd, 0, stdout=json.dumps({"step_s": [1.0]}), stderr="")

    monkeypatch.setattr(dpo_throughput.subprocess, "run", run)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    for setting in ("alignloop-bf16", "alignloop-bf16-compiled", "alignloop-compiled"):
        dpo_throughput.run_setting({"setting": setting, "lora": False, "steps": 1, "pairs": 8}, 10)
    assert seen["alignloop-bf16"] is None
    compiled = [seen["alignloop-bf16-compiled"], seen["alignloop-compiled"]]
    assert all(c and "inductor-" in c for c in compiled) and compiled[0] != compiled[1]
    assert not any(Path(c).exists() for c in compiled)            # removed after the run


def _event(name, shapes=(), parent=None, self_us=0):
    from types import SimpleNamespace

    return SimpleNamespace(name=name, input_shapes=list(shapes), cpu_parent=parent,
                           self_cpu_time_total=self_us)


def test_the_step_profile_sorts_inductor_kernels_and_counts_matmul_flops():
    import dpo_step_profile as P

    vocab = 49152
    assert P._classify(_event("graph_1_cpp_fused__softmax__unsafe_view_masked_fill_3"), vocab) == "attention"
    assert P._classify(_event("graph_1_cpp_fused__to_copy_mul_silu_7"), vocab) == "elementwise"
    assert P._classify(_event("## Call CompiledFxGraph fabc"), vocab) == "other"
    assert P._classify(_event("aten::mm", [[1208, 576], [576, 1536]]), vocab) == "matmuls"
    assert P._classify(_event("aten::mm", [[300, 576], [576, vocab]]), vocab) == "LM head"
    assert P._matmul_flops(_event("aten::mm", [[1208, 576], [576, 1536]])) == 2.0 * 1208 * 576 * 1536
    assert P._matmul_flops(_event("aten::addmm", [[1536], [1208, 576], [576, 1536]])) == 2.0 * 1208 * 576 * 1536
    assert P._matmul_flops(_event("aten::baddbmm", [[4, 8, 8], [4, 8, 16], [4, 16, 8]])) == 2.0 * 4 * 8 * 16 * 8
    assert P._matmul_flops(_event("aten::mm", [])) == 0.0   # no shapes recorded: no FLOPs claimed


def test_the_profile_table_states_the_matmul_rate_against_its_precisions_peak():
    import dpo_step_profile as P

    seconds = dict.fromkeys(P.CLASSES, 0.1)
    row = {"precision": "bf16-mixed", "lora": False, "compiled": True, "pairs": 8, "tokens": 1208,
           "step_s": 2.0, "profiled_step_s": 2.1, "seconds": seconds,
           "share": dict.fromkeys(P.CLASSES, 1 / len(P.CLASSES)), "matmul_gflops": 600.0}
    md = P.table([row, {**row, "precision": "fp32", "compiled": False, "matmul_gflops": 185.0}], PEAKS)
    assert "| full, compiled, bf16-mixed, 8 pairs (1208 tokens) | 2.00 | 2.10 |" in md
    assert "600 GFLOP/s (25% of peak) |" in md
    assert "185 GFLOP/s (50% of peak) |" in md
