"""The human labeling queue: a SQL store (SQLite by default, PostgreSQL by URL)
grown by numbered migrations, a FastAPI app (server-rendered page + JSON API),
terminal labeling, and bot annotators that label over HTTP. Implements the
`LabelQueue` protocol of `alignloop.labeling.handoff`.

    store.py         QueueStore, the entry point: annotators, items, leases, labels, reading
    leases.py        leasing the next item and recording a label (the concurrent SQL)
    accounts.py      annotators and their web sessions (revoked on the server)
    controls.py      which fields refuse control characters; showing them in a terminal
    stats.py         counts, agreement, progress, exports and waiting, read out
    migrations.py    the schema, one numbered migration at a time
    app.py           create_app: the routers below, the request guard, serving
    deps.py          what the routers share: settings, sessions, bearer authentication
    routes_pages.py  the labeling page (sign in, label, sign out)
    routes_api.py    the JSON API (/api/next, /api/labels)
    routes_admin.py  /api/status and /healthz
    simulate.py      bots: an HTTP client and a panel of answerers labeling through it
    guidelines.py    versioned labeling guidelines and their safe (data, not HTML) rendering
    skips.py         skipping an item with a reason (it goes to someone else)
    adjudication.py  disputed items and final verdicts (strong votes in aggregation)
    dashboard.py     the admin dashboard's numbers, token rotation
    export.py        the Hugging Face `datasets` export (TRL preference columns + votes)
    routes_skip.py   POST /label/skip, /api/skip, GET /api/guidelines
    routes_dashboard.py  the admin pages: /admin (dashboard, annotators, guidelines), /admin/adjudicate
    terminal.py      labeling in a terminal (`alignloop queue label`)
"""
