"""A cheap offline judge for the demo task: VADER sentiment minus a length penalty.

It is deliberately an imperfect stand-in for the demo's annotator panel (which
also weighs topicality and disagrees among itself): good enough to label the
clear cases, wrong often enough that routing uncertain pairs to people pays.
Use it as `kind: python, function: alignloop.demo_judge:heuristic_score`.
"""

from __future__ import annotations

from functools import lru_cache

WORDS_FREE = 40
"""Responses up to this many words pay no length penalty."""


@lru_cache(maxsize=1)
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment(text: str) -> float:
    """VADER compound sentiment in [-1, 1] (Hutto & Gilbert 2014)."""
    return float(_analyzer().polarity_scores(text)["compound"])


def heuristic_score(prompt, response: str) -> float:
    """Utility of `response`: 2 x sentiment, minus 1 per 40 words beyond WORDS_FREE."""
    words = len(response.split())
    return 2.0 * sentiment(response) - max(0, words - WORDS_FREE) / 40.0
