"""A cheap offline judge for the demo task: VADER sentiment minus a length penalty.

It is deliberately an imperfect stand-in for the demo's annotator panel (which
also weighs topicality and disagrees among itself): good enough to label the
clear cases, wrong often enough that routing uncertain pairs to people pays.
Use it as `kind: python, function: alignloop.demo.judge:heuristic_score`.
"""

from __future__ import annotations

from functools import lru_cache

WORDS_FREE = 40
"""Responses up to this many words pay no length penalty."""


# Customer-support words whose general-purpose VADER valence points the wrong way here:
# an apology is a kind reply, and blame or dismissal is not (VADER's own lexicon scores
# "sorry" -0.3 and negates "not our fault" into a positive).
SUPPORT_LEXICON = {
    "sorry": 1.5, "apologise": 2.0, "apologize": 2.0, "apologies": 2.0, "apology": 1.5,
    "unfortunately": 0.0, "sadly": 0.0, "replacement": 1.0, "refund": 1.0,
    "fault": 0.0, "blame": -2.0, "whatever": -2.0, "bother": -1.5, "hassle": -1.0,
    "yourself": -0.5, "eventually": -1.0, "nobody": -1.5,
}


@lru_cache(maxsize=1)
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    analyzer.lexicon.update(SUPPORT_LEXICON)
    return analyzer


def sentiment(text: str) -> float:
    """VADER compound sentiment in [-1, 1] (Hutto & Gilbert 2014), with SUPPORT_LEXICON."""
    return float(_analyzer().polarity_scores(text)["compound"])


def heuristic_score(prompt, response: str) -> float:
    """Utility of `response`: 2 x sentiment, minus 1 per 40 words beyond WORDS_FREE."""
    words = len(response.split())
    return 2.0 * sentiment(response) - max(0, words - WORDS_FREE) / 40.0
