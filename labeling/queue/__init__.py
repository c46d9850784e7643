"""The human labeling queue: a SQL store (SQLite by default, PostgreSQL by URL)
grown by numbered migrations, a FastAPI app (server-rendered page + JSON API),
terminal labeling, and bot annotators for the demo. Implements the
`LabelQueue` protocol of `alignloop.labeling.handoff`."""
