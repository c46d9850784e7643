"""Judges, pair selection, routing and the human labeling queue. Not built yet."""
