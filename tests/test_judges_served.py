"""The served judges (`llm_pairwise` and `llm_score` with `base_url`): the plumbing against a
scripted OpenAI-style server on loopback (both orders, the symmetric-order maths, the cache,
retries, concurrency, errors). The real vLLM server: test_judges_served_vllm.py."""

import json
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from alignloop.config import ConfigError, load_config
from alignloop.config.labeling import JudgeSpec
from alignloop.labeling import Comparison, LabelingError, make_judge, sigmoid
from alignloop.labeling.ensemble import Ensemble
from alignloop.labeling.served import ServedVerdictModel, verdict_probs

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [Comparison("Hi", "good reply", "bad reply"),
         Comparison("My parcel is late", "sorry, a bad reply", "a good reply here"),
         Comparison([{"role": "user", "content": "Thanks!"}], "good one", "also good")]


def position_bias(question: str) -> list[tuple[str, float]]:
    """P(A) = 0.7 and P(B) = 0.2 whatever the replies: a judge with no view but a slot."""
    return [("A", 0.7), ("B", 0.2), ("I", 0.05)]


def likes_good(question: str) -> list[tuple[str, float]]:
    """Prefers the slot whose reply contains 'good' (0.8 vs 0.1), splits the mass of A
    over "A" and " A" to check both count; 0.45 / 0.45 when both or neither do."""
    a_good = "good" in question.split("Reply A:")[1].split("Reply B:")[0]
    b_good = "good" in question.split("Reply B:")[1]
    pa, pb = (0.8, 0.1) if a_good and not b_good else (0.1, 0.8) if b_good and not a_good else (0.45, 0.45)
    return [("A", pa / 2), (" A", pa / 2), ("B", pb)]


def rates_by_length(question: str) -> list[tuple[str, float]]:
    """A digit rating: 7 for replies that say "good", 3 otherwise (with some spread)."""
    reply = question.split("Reply:")[1].split("How good")[0]
    hi = "good" in reply
    return [("7" if hi else "3", 0.6), ("8" if hi else "2", 0.2), ("Sure", 0.1)]


class FakeServer:
    """A minimal OpenAI-style server: GET /v1/models, POST /v1/chat/completions answering
    one token with `top_logprobs` from `answer(question)`; `fail_first` requests get
    `fail_status`; `delay` seconds per answer; counts requests and the most in flight."""

    def __init__(self, answer=position_bias, *, models=("judge",), fail_first=0, fail_status=500,
                 delay=0.0, logprobs=True, status=200, message="bad request"):
        self.answer, self.models, self.delay, self.logprobs = answer, models, delay, logprobs
        self.fail_first, self.fail_status, self.status, self.message = fail_first, fail_status, status, message
        self.bodies, self.calls, self.in_flight, self.max_in_flight = [], 0, 0, 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def reply(self, code, payload):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if outer.models is None:  # a server without the model listing
                    return self.reply(404, {"error": {"message": "Not Found"}})
                self.reply(200, {"object": "list", "data": [{"id": m} for m in outer.models]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.calls += 1
                    n = outer.calls
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    time.sleep(outer.delay)
                    self.handle_post(n, body)
                finally:
                    with outer.lock:
                        outer.in_flight -= 1

            def handle_post(self, n, body):
                if n <= outer.fail_first:
                    return self.reply(outer.fail_status, {"error": {"message": "overloaded"}})
                if outer.status != 200:
                    return self.reply(outer.status, {"error": {"message": outer.message}})
                with outer.lock:
                    outer.bodies.append(body)
                question = body["messages"][0]["content"]
                top = [{"token": t, "logprob": math.log(p)} for t, p in outer.answer(question)]
                choice = {"index": 0, "message": {"role": "assistant", "content": top[0]["token"]},
                          "finish_reason": "length"}
                if outer.logprobs:
                    choice["logprobs"] = {"content": [{**top[0], "top_logprobs": top}]}
                self.reply(200, {"choices": [choice], "usage": {
                    "prompt_tokens": len(question.split()), "completion_tokens": 1}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def questions(self):
        return [b["messages"][0]["content"] for b in self.bodies]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(answer=position_bias, **kw):
        servers.append(FakeServer(answer, **kw))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def judge_for(server_url, kind="llm_pairwise", **kw):
    spec = JudgeSpec(kind=kind, models=("judge",), base_url=server_url, **kw)
    judge = make_judge(spec)
    judge.model.backoff = 0.01
    return judge


# --------------------------------------------------------------------------- llm_pairwise


def test_both_orders_asked_once_each_with_a_one_token_logprob_request(serve):
    server = serve(likes_good)
    out = judge_for(server.url, top_logprobs=5).judge(PAIRS[:1])
    qs = server.questions()
    assert server.calls == 2 and len(set(qs)) == 2
    first, second = sorted(qs, key=lambda q: q.index("good reply"))  # a in slot A, then B
    assert first.index("good reply") < first.index("bad reply")
    assert second.index("bad reply") < second.index("good reply")
    body = server.bodies[0]
    assert body == {**body, "model": "judge", "max_tokens": 1, "temperature": 0,
                    "logprobs": True, "top_logprobs": 5}
    # " A" and "A" both count: q(a, b) = 0.8 / 0.9, q(b, a) = 0.1 / 0.9
    assert out[0].members == pytest.approx((0.8 / 0.9, 1 - 0.1 / 0.9))
    assert out[0].p_a == pytest.approx(8 / 9) and out[0].order_consistent


def test_pure_position_bias_gives_one_half(serve):
    out = judge_for(serve(position_bias).url).judge(PAIRS)
    q = 0.7 / 0.9
    for j in out:
        assert j.valid and not j.order_consistent
        assert j.p_a == pytest.approx(0.5, abs=1e-12)
        assert j.members == pytest.approx((q, 1 - q)) and j.uncertainty == pytest.approx(q - 0.5)


def test_unparsable_answer_is_invalid(serve):
    server = serve(lambda q: [("Hello", 0.9), ("A", 0.01), ("B", 0.01)])
    j = judge_for(server.url).judge(PAIRS[:1])[0]
    assert not j.valid and math.isnan(j.p_a) and "verdict mass 0.02" in j.detail


def test_verdict_tokens_matched_by_text():
    top = [{"token": t, "logprob": math.log(p)} for t, p in
           [("A", 0.3), (" A", 0.1), ("B", 0.2), ("Bo", 0.1), ("", 0.1), ("Ax", 0.05)]]
    assert verdict_probs(top, ("A", "B")) == pytest.approx([0.4, 0.2])
    # "Re" starts both verdicts: it counts for neither
    top2 = [{"token": "Re", "logprob": math.log(0.5)}, {"token": "Reply 1", "logprob": math.log(0.2)}]
    assert verdict_probs(top2, ("Reply 1", "Reply 2")) == pytest.approx([0.2, 0.0])
    with pytest.raises(LabelingError, match="starts another verdict"):
        ServedVerdictModel("http://127.0.0.1:1/v1", "m").verdict_token_ids(("A", "AB"))


# --------------------------------------------------------------------------- cache and usage


def test_cache_means_a_resumed_round_asks_nothing_twice(serve, tmp_path):
    server = serve(likes_good)
    cache = tmp_path / "round_001" / "judge.received.jsonl"
    judge = judge_for(server.url)
    judge.use_cache(cache)
    first = judge.judge(PAIRS)
    assert server.calls == 6 and len(cache.read_text().splitlines()) == 6
    assert judge.usage == {"questions": 6, "from_cache": 0, "requests": 6, "completion_tokens": 6,
                           "prompt_tokens": sum(len(q.split()) for q in server.questions())}
    # a new process (a fresh judge) on the same round: nothing asked, the same judgements
    again = judge_for(server.url)
    again.use_cache(cache)
    assert again.judge(PAIRS) == first and server.calls == 6
    assert again.usage["from_cache"] == 6 and again.usage["requests"] == 0
    # a crash cut the last line: only that question is asked again
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    third = judge_for(server.url)
    third.use_cache(cache)
    assert third.judge(PAIRS) == first and server.calls == 7


def test_cache_key_covers_judge_template_and_responses(serve, tmp_path):
    server = serve(likes_good)
    cache = tmp_path / "judge.received.jsonl"
    for kw in ({}, {"name": "other"}, {"template": "{prompt}\nReply A: {a}\nReply B: {b}\nA or B?"}):
        j = judge_for(server.url, **kw)
        j.use_cache(cache)
        j.judge(PAIRS[:1])
    assert server.calls == 6  # a new judge name or template is a new question
    j = judge_for(server.url)
    j.use_cache(cache)
    j.judge([Comparison("Hi", "good reply", "bad reply!")])
    assert server.calls == 8


def test_judge_stage_writes_cache_and_usage_and_a_rerun_asks_nothing(serve, tmp_path):
    from alignloop.config import LabelingConfig
    from alignloop.stages.label import judge as judge_stage

    server = serve(likes_good)
    spec = JudgeSpec(kind="llm_pairwise", models=("judge",), base_url=server.url)
    cfg = LabelingConfig(judges=(spec,))
    rows = [{"prompt_id": "p", "prompt": "Hi", "text": t, "sample_index": i}
            for i, t in enumerate(["good reply", "bad reply", "meh"])]

    def run():
        return judge_stage(tmp_path, generations=rows, ensemble=Ensemble.from_specs(cfg.judges),
                           cfg=cfg, beta=0.1, round=1, policy="", reference="")

    table = run()
    assert server.calls == 6  # 3 pairs, both orders
    usage = json.loads((tmp_path / "judge_usage.json").read_text())["llm_pairwise"]
    assert usage["requests"] == 6 and usage["completion_tokens"] == 6 and usage["prompt_tokens"] > 0
    again = run()
    assert server.calls == 6
    assert json.loads((tmp_path / "judge_usage.json").read_text())["llm_pairwise"]["from_cache"] == 6
    assert [r["p_a"] for r in again.rows] == [r["p_a"] for r in table.rows]


# --------------------------------------------------------------------------- llm_score


def test_llm_score_reads_the_expected_digit_and_pairs_by_bradley_terry(serve):
    server = serve(rates_by_length)
    judge = judge_for(server.url, kind="llm_score")
    hi, lo = (7 * 0.6 + 8 * 0.2) / 0.8, (3 * 0.6 + 2 * 0.2) / 0.8
    assert judge.score(["Hi", "Hi"], ["good reply", "bad reply"]) == pytest.approx([hi, lo])
    out = judge.judge(PAIRS[:2])
    assert out[0].p_a == pytest.approx(sigmoid(hi - lo)) and out[0].members == pytest.approx((sigmoid(hi - lo),))
    assert out[1].p_a == pytest.approx(sigmoid(lo - hi))
    q = server.questions()[0]
    assert "from 1 (bad) to 9 (excellent)" in q and "{response}" not in q
    assert len(set(server.questions())) == server.calls  # each distinct response asked once


def test_llm_score_without_digits_is_invalid(serve):
    judge = judge_for(serve(lambda q: [("Sure", 0.9), ("5", 0.01)]).url, kind="llm_score")
    j = judge.judge(PAIRS[:1])[0]
    assert not j.valid and "digit mass 0.01" in j.detail
    assert all(math.isnan(s) for s in judge.score(["Hi"], ["x"]))


# --------------------------------------------------------------------------- retries, concurrency


@pytest.mark.parametrize("status", [500, 503, 429])
def test_retries_transient_failures(serve, status):
    server = serve(position_bias, fail_first=2, fail_status=status)
    j = judge_for(server.url, concurrency=1).judge(PAIRS[:1])[0]
    assert j.p_a == pytest.approx(0.5) and server.calls == 4


@pytest.mark.parametrize("concurrency", [1, 4])
def test_concurrency_bounds_requests_in_flight(serve, concurrency):
    server = serve(position_bias, delay=0.1)
    judge_for(server.url, concurrency=concurrency).judge(PAIRS)
    assert server.calls == 6
    assert server.max_in_flight == concurrency if concurrency == 1 else 2 <= server.max_in_flight <= concurrency


# --------------------------------------------------------------------------- errors


def test_unreachable_server_names_base_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = judge_for(f"http://127.0.0.1:{port}/v1", retries=1)
    with pytest.raises(LabelingError, match=f"127.0.0.1:{port}/v1.*2 attempts.*running"):
        judge.judge(PAIRS[:1])


def test_missing_model_names_it_and_what_is_served(serve):
    server = serve(models=("smol",))
    with pytest.raises(LabelingError, match=r"does not serve model 'judge'; it serves \['smol'\]"):
        judge_for(server.url).judge(PAIRS[:1])
    assert server.calls == 0


def test_server_without_a_model_listing_is_still_asked(serve):
    server = serve(position_bias, models=None)
    assert judge_for(server.url).judge(PAIRS[:1])[0].p_a == pytest.approx(0.5)
    assert server.calls == 2


def test_no_logprobs_in_the_answer_is_a_clear_error(serve):
    with pytest.raises(LabelingError, match="without token log-probs"):
        judge_for(serve(logprobs=False).url).judge(PAIRS[:1])


def test_client_errors_quote_the_server_and_are_not_retried(serve):
    server = serve(status=400, message="top_logprobs 50 > max allowed 20")
    with pytest.raises(LabelingError, match="HTTP 400: top_logprobs 50 > max allowed 20"):
        judge_for(server.url, concurrency=1).judge(PAIRS[:1])
    assert server.calls == 1
    server = serve(status=401, message="invalid key")
    with pytest.raises(LabelingError, match="HTTP 401: invalid key.*api_key_env"):
        judge_for(server.url).judge(PAIRS[:1])


def test_api_key_from_the_named_variable(serve, monkeypatch):
    monkeypatch.delenv("ALIGNLOOP_TEST_JUDGE_KEY", raising=False)
    with pytest.raises(LabelingError, match=r"\$ALIGNLOOP_TEST_JUDGE_KEY, which is not set"):
        judge_for("http://127.0.0.1:1/v1", api_key_env="ALIGNLOOP_TEST_JUDGE_KEY")
    monkeypatch.setenv("ALIGNLOOP_TEST_JUDGE_KEY", "s3cret")
    assert judge_for("http://127.0.0.1:1/v1", api_key_env="ALIGNLOOP_TEST_JUDGE_KEY").model.api_key == "s3cret"


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("fields, key", [
    ({"kind": "python", "function": "m:f", "base_url": "http://x/v1"}, "base_url"),
    ({"kind": "llm_pairwise", "models": ("m",), "base_url": "localhost:8000"}, "base_url"),
    ({"kind": "llm_score", "models": ("m",), "score_range": (3, 3)}, "score_range"),
    ({"kind": "llm_score", "models": ("m",), "score_range": (1, 2, 3)}, "score_range"),
    ({"kind": "llm_score", "models": ("m",), "score_template": "{prompt} only"}, "score_template"),
    ({"kind": "llm_score", "models": ()}, "models"),
    ({"kind": "llm_pairwise", "models": ("m",), "concurrency": 0}, "concurrency"),
])
def test_bad_judge_fields_are_refused_by_name(fields, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        JudgeSpec(**fields)


def test_served_config_loads():
    cfg = load_config(ROOT / "configs" / "served.yaml")
    assert cfg.generation.backend == "vllm"
    kinds = {j.kind: j for j in cfg.labeling.judges}
    assert set(kinds) == {"llm_pairwise", "llm_score"}
    assert all(j.base_url.startswith("http://127.0.0.1:") for j in kinds.values())
    judges = Ensemble.from_specs(cfg.labeling.judges)  # builds without asking the server
    assert all(isinstance(m.judge.model, ServedVerdictModel) for m in judges.members)


def test_llm_score_runs_locally_without_base_url():
    """The same judge on a local model (tiny-random through transformers): the rating is the
    expected digit of that model's next-token probabilities."""
    import numpy as np
    from alignloop.labeling.llm_score import fill_score_template

    judge = make_judge(JudgeSpec(kind="llm_score", models=("builtin:tiny-random",),
                                 score_range=(2, 6), min_verdict_mass=0.0))
    digits = np.arange(2, 7)
    ids = judge.model.verdict_token_ids(tuple(str(d) for d in digits))
    q = fill_score_template(judge.template, "Hi", "good reply", 2, 6)
    probs = judge.model.first_token_probs([q], ids)[0]
    assert judge.score(["Hi"], ["good reply"]) == pytest.approx([float(digits @ probs / probs.sum())])
    assert judge.usage is None and 2 <= judge.score(["Hi"], ["bad"])[0] <= 6
