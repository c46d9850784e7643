"""The `openai` backend: any OpenAI-compatible completions server (`vllm serve`, SGLang, TGI).

One request per sample (n=1, its own seed) to `POST {base_url}/completions`,
with the prompt rendered through the model's chat template here so every
backend sees the same text. Requests run `concurrency` at a time; a 5xx, a 408 or
429, a connection error or a timeout is retried with exponential backoff, and after
`retries` attempts the call fails naming the server and the last error.
Completions received are appended to `cache_path` (JSONL) as they arrive, so a
rerun after a failure only asks for the missing ones. Standard library HTTP
only: no client package to install.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from alignloop.generation import (
    Completion,
    GenerationError,
    PromptItem,
    SamplingParams,
    sample_seed,
)


def request_body(model: str, prompt_text: str, params: SamplingParams, seed: int) -> dict[str, Any]:
    body = {"model": model, "prompt": prompt_text, "n": 1, "temperature": params.temperature,
            "top_p": params.top_p, "max_tokens": params.max_new_tokens, "seed": seed,
            "logprobs": 0, "stop": list(params.stop) or None,
            # vLLM extension: tokens come back as "token_id:N", so ids need no re-tokenising
            "return_tokens_as_token_ids": True}
    if params.top_k > 0:
        body["top_k"] = params.top_k  # an extension most servers accept
    return {k: v for k, v in body.items() if v is not None}


def completion_from_choice(prompt_id: str, index: int, seed: int, choice: dict, tokenizer) -> Completion:
    lp = choice.get("logprobs") or {}
    tokens, logps = lp.get("tokens"), lp.get("token_logprobs")
    if tokens is None or logps is None:
        raise GenerationError(f"server returned no token log-probs for prompt {prompt_id!r}")
    if all(isinstance(t, str) and t.startswith("token_id:") for t in tokens):
        ids = tuple(int(t.split(":", 1)[1]) for t in tokens)  # the end token included (vLLM)
    else:  # no ids: re-tokenise the text, which never holds the end token the server counted
        ids = tuple(tokenizer(choice["text"], add_special_tokens=False)["input_ids"])
        if tokens and tokens[-1] == tokenizer.eos_token:
            ids += (tokenizer.eos_token_id,)
    reason = "length" if choice.get("finish_reason") == "length" else "stop"
    logps = tuple(float(x) for x in logps)
    return Completion(prompt_id, index, choice["text"], ids, reason, float(sum(logps)), logps, seed)


RETRY_STATUS = (408, 429)
"""HTTP answers worth asking again (besides every 5xx): a timeout and "too many requests"."""


class HTTPFailure(Exception):
    """An HTTP error answer that retrying cannot fix: its status `code` and `body`."""

    def __init__(self, code: int, body: bytes):
        super().__init__(f"HTTP {code}")
        self.code, self.body = code, body


class Unreachable(Exception):
    """No answer after every attempt; `last` says what the last attempt got."""

    def __init__(self, last: str):
        super().__init__(last)
        self.last = last


def request_json(url: str, body: dict | None = None, *, method: str = "POST", api_key: str = "",
                 timeout: float, retries: int, backoff: float, retry_http: bool = True) -> Any:
    """The JSON answer of one request. A connection error, a timeout, a 5xx, a 408 or a
    429 is retried `retries` times with exponential backoff (`backoff` s, doubling), then
    raises `Unreachable`; any other HTTP error (every one when `retry_http` is False)
    raises `HTTPFailure` at once. A non-JSON answer raises json.JSONDecodeError."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            req = urllib.request.Request(url, data=data, headers=headers, method=method)
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}"
            if not retry_http or (e.code < 500 and e.code not in RETRY_STATUS):
                raise HTTPFailure(e.code, e.read()) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
    raise Unreachable(last)


class OpenAIGenerator:
    name = "openai"

    def __init__(self, model: str, *, base_url: str, served_model: str = "", api_key: str = "",
                 concurrency: int = 8, timeout: float = 60.0, retries: int = 4,
                 backoff: float = 0.5, cache_path: str | Path | None = None,
                 chat_template: str = "auto"):
        from alignloop.models import load_tokenizer

        self.tokenizer = load_tokenizer(model, chat_template)
        self.url = base_url.rstrip("/") + "/completions"
        self.served_model = served_model or model
        self.api_key = api_key
        self.concurrency, self.timeout, self.retries, self.backoff = concurrency, timeout, retries, backoff
        self.cache_path = Path(cache_path) if cache_path else None
        self._lock = threading.Lock()

    def _post(self, body: dict) -> dict:
        try:
            return request_json(self.url, body, api_key=self.api_key, timeout=self.timeout,
                                retries=self.retries, backoff=self.backoff)
        except HTTPFailure as e:  # our request is wrong: retrying will not help
            raise GenerationError(f"{self.url}: HTTP {e.code}: {e.body[:300]!r}") from None
        except Unreachable as e:
            raise GenerationError(f"{self.url}: no answer after {self.retries + 1} attempts "
                                  f"({e.last})") from None

    def _key(self, prompt_id: str, index: int, body: dict) -> str:
        blob = json.dumps([prompt_id, index, body], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:20]

    def _load_cache(self) -> dict[str, Completion]:
        if not self.cache_path or not self.cache_path.exists():
            return {}
        from alignloop.artifacts import iter_jsonl

        out = {}
        for _, row, bad in iter_jsonl(self.cache_path):
            if bad:   # a line cut by a crash: ask again
                continue
            c = row["completion"]
            out[row["key"]] = Completion(**{**c, "token_ids": tuple(c["token_ids"]),
                                            "token_logprobs": tuple(c["token_logprobs"])})
        return out

    def sample(self, prompts: list[PromptItem], params: SamplingParams) -> list[Completion]:
        from alignloop.chat import render_prompt

        if not prompts:
            raise GenerationError("no prompts to generate from")
        jobs = []
        for it in prompts:
            text = render_prompt(self.tokenizer, it.prompt)
            for k in range(params.n):
                seed = sample_seed(params.seed, it.prompt_id, k)
                body = request_body(self.served_model, text, params, seed)
                jobs.append((it.prompt_id, k, seed, body, self._key(it.prompt_id, k, body)))
        done = self._load_cache()

        def run(job):
            prompt_id, k, seed, body, key = job
            if key in done:
                return done[key]
            choice = self._post(body)["choices"][0]
            c = completion_from_choice(prompt_id, k, seed, choice, self.tokenizer)
            if self.cache_path:
                with self._lock:
                    self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                    with open(self.cache_path, "a") as f:
                        f.write(json.dumps({"key": key, "completion": asdict(c)}) + "\n")
            return c

        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(run, jobs))
