"""benchmarks/generation_throughput.py: where its results go (the throughput itself is
measured by running it, never asserted in a test)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import generation_throughput as gt  # noqa: E402

DTYPES = ("float32", "bfloat16")

ROW = {"setting": "hf-bf16", "backend": "hf", "dtype": "bfloat16", "start_s": 0.3, "tokens": 100,
       "call_s": 1.0, "prompts": 2, "in_flight": 64, "first_tps": 100.0, "warm_tps": 100.0,
       "e2e_round_tps": 100.0, "e2e_fresh_tps": 100.0, "ceiling_fraction": 0.3,
       "load": [0.1, 0.2]}


def _args(**kw):
    base = {"size": "full", "only": "", "prompts": None, "tokens": None, "in_flight": "64",
            "rounds": 3, "name": None}
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.parametrize("kw, name, readme", [
    ({}, "generation_throughput", True),
    ({"only": "hf-bf16"}, "generation_throughput.partial", False),
    ({"prompts": 4}, "generation_throughput.partial", False),
    ({"size": "quick"}, "generation_throughput.quick", False),
    # another CPU's full run: its own file and README block, beside the record
    ({"name": "generation_throughput.xeon_amx"}, "generation_throughput.xeon_amx", True),
    ({"name": "generation_throughput.xeon_amx", "only": "hf-bf16"},
     "generation_throughput.xeon_amx.partial", False),
])
def test_a_run_of_some_settings_never_replaces_the_full_results(monkeypatch, kw, name, readme):
    written = []
    monkeypatch.setattr(gt, "write_results",
                        lambda n, meta, rows, md, readme: written.append((n, readme)))
    monkeypatch.setattr(gt, "cpu_flags", lambda: "test CPU")
    gt.write(_args(**kw), gt.SIZES[kw.get("size", "full")], [ROW], dict.fromkeys(DTYPES, 1.0),
             dict.fromkeys(DTYPES, 300.0), final=True)
    assert written == [(name, readme)]


def test_hf_rows_time_warm_calls_and_read_the_ceiling_off_their_median(monkeypatch):
    """A first call and two warm calls on one generator (the tiny model): the warm figure
    is the warm calls' median, never the first call's, and the samples repeat exactly."""
    from alignloop.generation import SamplingParams

    monkeypatch.setattr(gt, "MODEL", "builtin:tiny-random")
    r = gt.hf_backend(gt.prompts(2), SamplingParams(n=2, max_new_tokens=4, seed=0), "float32", 4)
    assert len(r["warm_calls_s"]) == gt.HF_WARM_CALLS == 2
    assert r["warm_s"] == pytest.approx(sum(r["warm_calls_s"]) / 2)     # median of two
    row = gt.summarise("hf-fp32", {**r, "call_s": 1e3}, 3, dict.fromkeys(DTYPES, 1e6))
    assert row["warm_tps"] == pytest.approx(r["tokens"] / r["warm_s"])
    assert row["first_tps"] == pytest.approx(r["tokens"] / 1e3)
    assert row["ceiling_fraction"] == pytest.approx(row["warm_tps"] / 1e6)


def test_hf_rows_refuse_warm_calls_that_sample_other_tokens(monkeypatch):
    """Warm calls time the same work as the first: a generator whose repeat samples other
    tokens (a seeding bug) stops the row rather than timing different work."""
    from types import SimpleNamespace

    import alignloop.generation as generation

    class Drifting:
        calls = 0

        def sample(self, items, params):
            self.calls += 1
            return [SimpleNamespace(token_ids=[1, self.calls], finish_reason="length")]

    monkeypatch.setattr(generation, "make_generator", lambda *a, **k: Drifting())
    with pytest.raises(RuntimeError, match="sampled other tokens"):
        gt.hf_backend([], None, "float32", 4)
