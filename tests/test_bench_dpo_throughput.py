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
