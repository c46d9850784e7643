"""The `openai` backend against a real HTTP server on loopback that serves the tiny model
(through the `hf` backend), including one that fails requests and one that times out."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from alignloop.generation import GenerationError, PromptItem, SamplingParams, make_generator

TINY = "builtin:tiny-random"
ITEMS = [PromptItem("a", [{"role": "user", "content": "Hi there"}]),
         PromptItem("b", [{"role": "user", "content": "My order is late"}])]


class Server:
    """A minimal OpenAI-style /v1/completions server; `fail_first` requests get
    `fail_status` (500), `slow_first` requests sleep past the client's timeout."""

    def __init__(self, fail_first=0, slow_first=0, fail_status=500):
        from alignloop.generation.hf import HFGenerator

        self.hf = HFGenerator(TINY, progress=False)
        self.calls, self.fail_first, self.slow_first = 0, fail_first, slow_first
        self.fail_status = fail_status
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.calls += 1
                    n = outer.calls
                if n <= outer.fail_first:
                    self.send_response(outer.fail_status)
                    self.end_headers()
                    return
                if n <= outer.fail_first + outer.slow_first:
                    time.sleep(1.5)
                with outer.lock:  # the tiny model is not thread-safe to share
                    c = outer.generate(body)
                payload = json.dumps({"choices": [{
                    "text": c.text, "finish_reason": c.finish_reason, "index": 0,
                    "logprobs": {"tokens": [f"token_id:{t}" for t in c.token_ids],
                                 "token_logprobs": list(c.token_logprobs)}}]}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def generate(self, body):
        # serve the rendered prompt text as a plain prompt; the seed picks the sample
        from alignloop.generation import PromptItem as P
        p = SamplingParams(n=1, temperature=body["temperature"], max_new_tokens=body["max_tokens"],
                           seed=body["seed"])
        return self.hf.sample([P(str(body["seed"]), body["prompt"])], p)[0]

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def server(request):
    s = Server(**getattr(request, "param", {}))
    yield s
    s.close()


def _gen(server, **kw):
    return make_generator("openai", TINY, base_url=server.url, backoff=0.05, **kw)


def test_samples_and_records(server):
    out = _gen(server).sample(ITEMS, SamplingParams(n=2, max_new_tokens=5, seed=3))
    assert [(c.prompt_id, c.sample_index) for c in out] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert all(len(c.token_ids) == len(c.token_logprobs) for c in out)
    assert server.calls == 4


@pytest.mark.parametrize("server", [{"fail_first": 2}, {"fail_first": 2, "fail_status": 429}],
                         indirect=True)
def test_retries_on_5xx_and_429(server):
    out = _gen(server, concurrency=1).sample(ITEMS[:1], SamplingParams(n=2, max_new_tokens=3))
    assert len(out) == 2 and server.calls == 4


@pytest.mark.parametrize("server", [{"fail_first": 1, "fail_status": 400}], indirect=True)
def test_a_bad_request_is_not_retried(server):
    with pytest.raises(GenerationError, match="HTTP 400"):
        _gen(server, concurrency=1).sample(ITEMS[:1], SamplingParams(n=1, max_new_tokens=3))
    assert server.calls == 1


@pytest.mark.parametrize("server", [{"slow_first": 1}], indirect=True)
def test_timeout_is_retried(server):
    out = _gen(server, concurrency=1, timeout=0.5).sample(ITEMS[:1], SamplingParams(n=1, max_new_tokens=3))
    assert len(out) == 1 and server.calls == 2


@pytest.mark.parametrize("server", [{"fail_first": 100}], indirect=True)
def test_clear_failure_after_retries_and_rerun_asks_only_for_missing(server, tmp_path):
    cache = tmp_path / "received.jsonl"
    with pytest.raises(GenerationError, match="no answer after 3 attempts.*HTTP 500"):
        _gen(server, retries=2, concurrency=1, cache_path=cache).sample(ITEMS[:1], SamplingParams(n=1))
    # a healthy server: first run fills the cache, the rerun asks nothing
    good = Server()
    try:
        g = _gen(good, cache_path=cache)
        first = g.sample(ITEMS, SamplingParams(n=2, max_new_tokens=3, seed=1))
        calls = good.calls
        again = g.sample(ITEMS, SamplingParams(n=2, max_new_tokens=3, seed=1))
        assert good.calls == calls == 4 and again == first
    finally:
        good.close()


def test_unreachable_server_fails_clearly():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there after the socket closes
    g = make_generator("openai", TINY, base_url=f"http://127.0.0.1:{port}/v1", retries=1, backoff=0.01)
    with pytest.raises(GenerationError, match=f"127.0.0.1:{port}.*2 attempts"):
        g.sample(ITEMS[:1], SamplingParams(n=1))


def test_end_token_kept_when_the_server_sends_token_text():
    """A server without `return_tokens_as_token_ids` sends token strings: the ids come from
    the text, and the end token it counted (with its log-prob) is kept, as vLLM's ids keep it."""
    from alignloop.generation.openai import completion_from_choice
    from alignloop.models import load_tokenizer

    tok = load_tokenizer(TINY)
    choice = {"text": "Hello", "finish_reason": "stop",
              "logprobs": {"tokens": ["Hello", tok.eos_token], "token_logprobs": [-1.5, -0.25]}}
    c = completion_from_choice("a", 0, 7, choice, tok)
    assert c.token_ids == (*tok("Hello", add_special_tokens=False)["input_ids"], tok.eos_token_id)
    assert len(c.token_ids) == len(c.token_logprobs) and c.logprob_sum == -1.75
    cut = {**choice, "finish_reason": "length",
           "logprobs": {"tokens": ["Hello"], "token_logprobs": [-1.5]}}
    assert completion_from_choice("a", 0, 7, cut, tok).token_ids == c.token_ids[:-1]
