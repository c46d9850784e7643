"""The queue's published contract (`/openapi.json`, `labeling/queue/contract.py`) tested
with schemathesis on SQLite and PostgreSQL: generated requests, valid and invalid, go to
every route of the real app (ASGI, a real store); any response whose status, content
type, headers or body the schema does not document fails, as does any 5xx.

Bounded: `EXAMPLES` valid and `EXAMPLES` invalid cases per route and database, derandomized
(the same cases every run; about a minute in all on 2 cores)."""

from __future__ import annotations

import os

import pytest

try:
    import schemathesis
except ImportError:   # the dev extra has it; CI must run these tests
    if os.environ.get("CI"):
        raise
    pytest.skip("schemathesis is not installed (pip install -e '.[dev]')",
                allow_module_level=True)
from alignloop.labeling.queue.app import create_app  # noqa: E402
from alignloop.labeling.queue.store import QueueStore  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

from .test_queue_hardening import _items  # noqa: E402

EXAMPLES = 100
# Routes left out of the contract check (none: every /api route is checked).
NOT_YET: set[tuple[str, str]] = set()


@pytest.fixture
def api(store_url):
    """(schema, headers): the app over a fresh store with items and an admin, whose
    token goes with every generated request (schemathesis also tries them without)."""
    store = QueueStore(store_url)
    token = store.add_annotator("boss", "admin")
    store.add_annotator("ann")
    store.submit(_items(EXAMPLES * 8))
    # the app's real defaults, but for the per-IP limit on 401s: schemathesis sends many
    # unauthenticated requests on purpose (from one "IP")
    app = create_app(store, secret="schema-test", auth_failures=10**9)
    yield (schemathesis.openapi.from_asgi("/openapi.json", app),
           {"Authorization": f"Bearer {token}"})
    store.close()


def _check(operation, mode, headers: dict) -> str | None:
    """Run `EXAMPLES` generated cases of one operation; the first failure's report, or None."""

    @given(case=operation.as_strategy(mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    def run(case):
        case.call_and_validate(headers=headers)

    try:
        run()
    except Unsatisfiable:   # negative mode on a route without parameters: nothing to send
        return None
    except Exception as e:  # noqa: BLE001 (a schemathesis failure report, kept whole)
        return f"{operation.method.upper()} {operation.path} ({mode.value}): {e}"
    return None


def test_every_response_matches_the_published_schema(api):
    schema, headers = api
    operations = [op for r in schema.get_all_operations()
                  if ((op := r.ok()).method.upper(), op.path) not in NOT_YET]
    assert len(operations) >= 11  # every route in /openapi.json, skip and guidelines included
    failures = [f for op in operations for mode in (GenerationMode.POSITIVE,
                                                    GenerationMode.NEGATIVE)
                if (f := _check(op, mode, headers))]
    assert not failures, "\n\n".join(failures)


def test_the_schema_documents_bearer_auth_and_every_status(api):
    spec = api[0].raw_schema
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["HTTPBearer"]["description"]}
    paths = spec["paths"]
    statuses = {(m.upper(), p): set(op["responses"]) for p, ops in paths.items()
                for m, op in ops.items()}
    assert statuses[("POST", "/api/labels")] >= {"200", "201", "401", "404", "409", "413",
                                                  "422", "429"}
    assert statuses[("POST", "/api/next")] >= {"200", "204", "401", "413", "429"}
    assert statuses[("GET", "/api/status")] >= {"200", "401", "403"}
    assert statuses[("POST", "/label")] >= {"303", "400", "403", "422"}
    assert {"HTTPBearer": []} in paths["/api/labels"]["post"]["security"]
    invalid = paths["/api/labels"]["post"]["responses"]["422"]["content"]["application/json"]
    assert invalid["schema"]["$ref"].endswith("/Invalid")    # ours, `detail` a string
    assert spec["components"]["schemas"]["Invalid"]["properties"]["detail"]["type"] == "string"
    assert spec["components"]["schemas"]["LabelIn"]["additionalProperties"] is False
