"""The demo's simulated annotator panel and its latent utility (the ground truth).

Each annotator's utility of a response y to a prompt x is

    u_j(x, y) = ws_j * sentiment(y) - wl_j * overlength(y) + wt_j * topicality(x, y)

with sentiment the VADER compound score in [-1, 1] (Hutto & Gilbert 2014),
overlength = max(0, words - 30) / 30, and topicality the cosine similarity of
the all-MiniLM-L6-v2 embeddings of the last user message and the response.
Annotators weigh the three differently (systematic disagreement) and vote by
Bradley-Terry: P(a preferred) = sigmoid((u_j(a) - u_j(b)) / noise_j). The
latent reward reported as ground truth is the utility with the panel's mean
weights.
"""

from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass

from alignloop.demo.judge import sentiment
from alignloop.records import Prompt

FREE_WORDS = 30
FEATURE_CACHE = 200_000     # (prompt, response) features a Panel keeps


@dataclass(frozen=True)
class Annotator:
    name: str
    w_sentiment: float
    w_length: float
    w_topic: float
    noise: float = 0.25
    """Bradley-Terry temperature: smaller is more decisive."""


PANELS: dict[str, tuple[Annotator, ...]] = {
    "demo": (
        Annotator("warm", 1.4, 0.4, 0.6),
        Annotator("brief", 0.8, 1.4, 0.6),
        Annotator("on_topic", 0.8, 0.6, 1.6),
        Annotator("balanced", 1.0, 0.8, 1.0),
        Annotator("hasty", 1.0, 0.8, 0.8, noise=0.8),
    ),
}


def last_user_message(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


class Panel:
    """Scores and votes of a named panel. The encoder is loaded on first use (once, even
    when several bot threads score their first item at the same moment). A response's
    features are computed once per (prompt, response) and kept (up to `FEATURE_CACHE`):
    every annotator's vote on a pair reads the same two, and the encoder gives the same
    numbers for the same input, so votes do not change."""

    def __init__(self, name: str = "demo", encoder=None):
        if name not in PANELS:
            raise ValueError(f"unknown panel {name!r}; known: {sorted(PANELS)}")
        self.name = name
        self.annotators = PANELS[name]
        self._encoder = encoder
        self._encoder_lock = threading.Lock()
        self._features: dict[tuple[str, str], tuple[float, float, float]] = {}
        n = len(self.annotators)
        self.mean = Annotator("truth", *(sum(getattr(a, f) for a in self.annotators) / n
                                         for f in ("w_sentiment", "w_length", "w_topic")))

    @property
    def encoder(self):
        if self._encoder is None:
            with self._encoder_lock:
                if self._encoder is None:
                    from alignloop.embeddings import shared_encoder

                    self._encoder = shared_encoder()
        return self._encoder

    def features(self, prompt: Prompt, response: str) -> tuple[float, float, float]:
        """(sentiment, overlength, topicality) of a response."""
        key = (last_user_message(prompt), response)
        if (known := self._features.get(key)) is not None:
            return known
        words = len(response.split())
        e = self.encoder.encode(list(key))
        out = sentiment(response), max(0, words - FREE_WORDS) / FREE_WORDS, float(e[0] @ e[1])
        if len(self._features) >= FEATURE_CACHE:
            self._features.clear()
        self._features[key] = out
        return out

    def utility(self, prompt: Prompt, response: str, annotator: Annotator | None = None) -> float:
        a = annotator or self.mean
        s, over, topic = self.features(prompt, response)
        return a.w_sentiment * s - a.w_length * over + a.w_topic * topic

    def latent_reward(self, prompt: Prompt, response: str) -> float:
        """The ground truth: utility under the panel's mean weights."""
        return self.utility(prompt, response)

    def p_prefers_a(self, prompt: Prompt, a: str, b: str, annotator: Annotator) -> float:
        d = (self.utility(prompt, a, annotator) - self.utility(prompt, b, annotator)) / annotator.noise
        return 1.0 / (1.0 + math.exp(-max(min(d, 50.0), -50.0)))

    def vote(self, prompt: Prompt, a: str, b: str, annotator: Annotator, rng: random.Random) -> str:
        return "a" if rng.random() < self.p_prefers_a(prompt, a, b, annotator) else "b"
