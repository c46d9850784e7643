"""A judge model behind any OpenAI-compatible server (vLLM, SGLang, TGI, OpenAI itself).

`ServedVerdictModel` is the `VerdictModel` of `llm_pairwise` (and `llm_score`) over HTTP:
each question is one user turn sent to `POST {base_url}/chat/completions` with
`max_tokens: 1`, `temperature: 0`, `logprobs: true` and `top_logprobs: K`, so the
server renders the model's own chat template. The verdict is read from the
distribution of that one answer token, never from the sampled text:

    P(verdict v) = sum of exp(logprob) over the top-K tokens t with strip(t) a
                   non-empty prefix of v        (" A" and "A" both count for "A")

A token that starts two verdicts counts for neither; a verdict outside the top K
counts as 0. Unlike the local `HFVerdictModel`, no tokenizer is needed here, so the
"token ids" this model hands out are positions in the list of verdict texts it
was asked about.

Every answer (its top-K list and the server's `usage` token counts) is kept in
memory and appended to a JSONL cache (`use_cache`) as it arrives, keyed by (judge, served model, question, K); the
question is the judge's template filled with the prompt and the responses, so a
resumed round asks nothing twice. Requests run `concurrency` at a time; a
connection error, a timeout, a 429 or a 5xx is retried with exponential backoff;
every other failure is a `LabelingError` naming the server and quoting its message.
Standard library HTTP only: no client package to install.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from alignloop.generation.openai import HTTPFailure, Unreachable, request_json
from alignloop.labeling import LabelingError
from alignloop.progress import tqdm

if TYPE_CHECKING:
    from alignloop.config.labeling import JudgeSpec

log = logging.getLogger(__name__)

PROGRESS_MIN_QUESTIONS = 50
"""Fewer questions than this are asked without a progress bar."""



def verdict_probs(top: list[dict], verdicts: tuple[str, ...]) -> list[float]:
    """P(each verdict) from one answer token's `top_logprobs` entries ({token, logprob})."""
    out = [0.0] * len(verdicts)
    for entry in top:
        text = str(entry.get("token", "")).strip()
        hits = [i for i, v in enumerate(verdicts) if text and v.strip().startswith(text)]
        if len(hits) == 1:  # a token that starts two verdicts tells nothing
            out[hits[0]] += math.exp(float(entry["logprob"]))
    return out


def server_message(raw: bytes) -> str:
    """The error text of a server's answer body (OpenAI shape `{"error": {"message"}}`,
    vLLM's `{"message"}`, or the raw text), shortened."""
    text = raw.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        return text.strip()[:300]
    err = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(err, dict):
        return str(err.get("message") or err)[:300]
    return str(err)[:300]


class ServedVerdictModel:
    """Verdict probabilities from a served chat model's first answer token."""

    def __init__(self, base_url: str, model: str, *, judge: str = "", api_key: str = "",
                 concurrency: int = 8, timeout: float = 60.0, retries: int = 4,
                 backoff: float = 0.5, top_logprobs: int = 20,
                 cache_path: str | Path | None = None, progress: bool = True):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.judge = judge or model
        self.api_key = api_key
        self.concurrency, self.timeout, self.retries = concurrency, timeout, retries
        self.backoff, self.top_logprobs, self.progress = backoff, top_logprobs, progress
        self.cache_path = Path(cache_path) if cache_path else None
        self._texts: list[str] = []
        self._lock = threading.Lock()
        self._checked = False
        self._memo: dict[str, list[dict]] = {}  # answers of this process, by key
        self.usage = self._fresh_usage()

    @classmethod
    def from_spec(cls, spec: JudgeSpec) -> ServedVerdictModel:
        key = ""
        if spec.api_key_env:
            key = os.environ.get(spec.api_key_env, "")
            if not key:
                raise LabelingError(f"judge {spec.label!r}: api_key_env names "
                                    f"${spec.api_key_env}, which is not set")
        return cls(spec.base_url, spec.models[0], judge=spec.label, api_key=key,
                   concurrency=spec.concurrency, timeout=spec.timeout_s, retries=spec.retries,
                   top_logprobs=spec.top_logprobs)

    # ------------------------------------------------------------------ VerdictModel

    def verdict_token_ids(self, verdicts: tuple[str, ...]) -> tuple[int, ...]:
        """Positions of `verdicts` in this model's list of verdict texts (not tokenizer ids:
        a served model is matched by text)."""
        for v in verdicts:
            clash = [w for w in verdicts if w != v and w.startswith(v.strip())]
            if not v.strip() or clash:
                raise LabelingError(
                    f"judge {self.judge!r}: verdict {v!r} is empty or starts another verdict "
                    f"({clash}); a served judge matches answer tokens by text, so each verdict "
                    "must begin differently")
        ids = []
        for v in verdicts:
            if v not in self._texts:
                self._texts.append(v)
            ids.append(self._texts.index(v))
        return tuple(ids)

    def first_token_probs(self, questions: list[str], token_ids: tuple[int, ...]) -> np.ndarray:
        """(N, len(token_ids)): P(each verdict) as the first answer token of each question."""
        verdicts = tuple(self._texts[i] for i in token_ids)
        tops = self.top_tokens(questions)
        return np.array([verdict_probs(t, verdicts) for t in tops], dtype=float).reshape(
            len(questions), len(verdicts))

    # ------------------------------------------------------------------ cache and usage

    def use_cache(self, path: str | Path | None) -> None:
        """Keep answers in `path` (JSONL) from now on, and start counting usage afresh."""
        self.cache_path = Path(path) if path else None
        self.usage = self._fresh_usage()

    @staticmethod
    def _fresh_usage() -> dict[str, int]:
        return {"questions": 0, "from_cache": 0, "requests": 0, "prompt_tokens": 0,
                "completion_tokens": 0}

    def key(self, question: str) -> str:
        blob = json.dumps([self.judge, self.model, question, self.top_logprobs]).encode()
        return hashlib.sha256(blob).hexdigest()[:24]

    def _load_cache(self) -> dict[str, list[dict]]:
        if not self.cache_path or not self.cache_path.exists():
            return {}
        from alignloop.artifacts import iter_jsonl

        # a line cut by a crash is unreadable: that question is asked again
        return {row["key"]: row["top"] for _, row, bad in iter_jsonl(self.cache_path) if not bad}

    def _remember(self, key: str, question: str, top: list[dict], usage: dict) -> None:
        with self._lock:
            self._memo[key] = top
            self.usage["requests"] += 1
            self.usage["prompt_tokens"] += int(usage.get("prompt_tokens") or 0)
            self.usage["completion_tokens"] += int(usage.get("completion_tokens") or 0)
            if self.cache_path:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                row = {"key": key, "judge": self.judge, "model": self.model,
                       "question_sha256": hashlib.sha256(question.encode()).hexdigest(),
                       "top": top, "usage": usage}
                with open(self.cache_path, "a") as f:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")

    # ------------------------------------------------------------------ asking

    def top_tokens(self, questions: list[str]) -> list[list[dict]]:
        """The first answer token's top-K alternatives for each question (cached ones are
        not asked again; each distinct question is asked once)."""
        keys = [self.key(q) for q in questions]
        done = self._memo
        done.update(self._load_cache())
        todo = {k: q for k, q in zip(keys, questions, strict=True) if k not in done}
        self.usage["questions"] += len(questions)
        self.usage["from_cache"] += sum(k in done for k in keys)
        if todo:
            self.check_server()
            bar = tqdm(total=len(todo), desc=f"judge {self.judge}", unit="question",
                       disable=not self.progress or len(todo) < PROGRESS_MIN_QUESTIONS)

            failed, errors = threading.Event(), []

            def ask(item: tuple[str, str]) -> tuple[str, list[dict]]:
                key, question = item
                if failed.is_set():  # an earlier question failed: ask nothing more
                    raise LabelingError("cancelled")
                try:
                    top, usage = self.ask(question)
                except BaseException as e:
                    errors.append(e)
                    failed.set()
                    raise
                self._remember(key, question, top, usage)
                bar.update(1)
                return key, top

            with ThreadPoolExecutor(self.concurrency) as pool:
                futures = [pool.submit(ask, item) for item in todo.items()]
                try:
                    done.update(f.result() for f in as_completed(futures))
                except BaseException as e:  # answers that arrived are kept (memo, cache file)
                    for f in futures:
                        f.cancel()
                    raise (errors[0] if errors else e) from None
                finally:
                    bar.close()
        return [done[k] for k in keys]

    def ask(self, question: str) -> tuple[list[dict], dict]:
        """One question -> (the answer token's top-K list, the server's usage)."""
        body = {"model": self.model, "messages": [{"role": "user", "content": question}],
                "max_tokens": 1, "temperature": 0, "logprobs": True,
                "top_logprobs": self.top_logprobs}
        answer = self._request("POST", "/chat/completions", body)
        try:
            content = answer["choices"][0]["logprobs"]["content"]
            top = [{"token": e["token"], "logprob": float(e["logprob"])}
                   for e in content[0]["top_logprobs"]]
        except (KeyError, IndexError, TypeError, ValueError):
            raise LabelingError(
                f"judge {self.judge!r}: {self.base_url} answered without token log-probs "
                "(choices[0].logprobs.content[0].top_logprobs); the judge needs a server that "
                "returns `logprobs`/`top_logprobs` for chat completions") from None
        if not top:
            raise LabelingError(f"judge {self.judge!r}: {self.base_url} returned an empty "
                                "top_logprobs list; is top_logprobs allowed on this server?")
        return top, answer.get("usage") or {}

    def check_server(self) -> None:
        """Once: the server answers and serves `model` (GET /models), or a clear error. A
        server without the listing (an HTTP error) is left to answer the questions."""
        if self._checked:
            return
        listed = self._request("GET", "/models", http_errors=False)
        names = [m.get("id") for m in listed.get("data", []) if isinstance(m, dict)]
        if names and self.model not in names:
            raise LabelingError(f"judge {self.judge!r}: the server at {self.base_url} does "
                                f"not serve model {self.model!r}; it serves {names} (set the "
                                "judge's `models` to the served name)")
        self._checked = True

    def _request(self, method: str, path: str, body: dict | None = None, *,
                 http_errors: bool = True) -> dict[str, Any]:
        """The JSON answer; retried as the module says. `http_errors=False`: an HTTP error
        answer gives {} (the server is there), connection failures still raise."""
        url = self.base_url + path
        try:
            return request_json(url, body, method=method, api_key=self.api_key,
                                timeout=self.timeout, retries=self.retries, backoff=self.backoff,
                                retry_http=http_errors)
        except HTTPFailure as e:
            if not http_errors:
                return {}
            raise LabelingError(self._http_error(e.code, url, server_message(e.body))) from None
        except Unreachable as e:
            raise LabelingError(f"judge {self.judge!r}: no answer from the judge server at "
                                f"{self.base_url} ({method} {path}) after {self.retries + 1} "
                                f"attempts ({e.last}); is the server running there?") from None
        except json.JSONDecodeError:
            raise LabelingError(f"judge {self.judge!r}: {url} did not answer with JSON; "
                                "is base_url an OpenAI-compatible /v1 endpoint?") from None

    def _http_error(self, code: int, url: str, msg: str) -> str:
        if code == 404 and "model" in msg.lower():
            return (f"judge {self.judge!r}: the server at {self.base_url} does not know model "
                    f"{self.model!r} ({msg})")
        if code in (401, 403):
            return (f"judge {self.judge!r}: {url} refused the request (HTTP {code}: {msg}); "
                    "set api_key_env to the variable holding the server's key")
        return f"judge {self.judge!r}: {url} answered HTTP {code}: {msg}"
