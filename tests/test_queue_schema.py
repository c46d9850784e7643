"""The queue's published contract (`/openapi.json`, `labeling/queue/contract.py`) tested
with schemathesis on SQLite and PostgreSQL: generated requests, valid and invalid, go to
every route of the real app (ASGI, a real store); any response whose status, content
type, headers or body the schema does not document fails, as does any 5xx.

Every request carries an admin's bearer token (schemathesis also tries without); every
valid case an admin's signed-in session cookie, and the admin forms' valid cases the
session's real CSRF token, so they reach the handlers (add, disable, rotate, guidelines,
verdicts) instead of stopping at the CSRF check (the labeling forms' cannot get past their
order signature, an HMAC, and check the refusals). Invalid cases keep the cookie
schemathesis made (none, or a forged one): a signed-in page refuses them with 303 to the
sign-in page, which this test counts as a refusal, as browsers need it to be.

Bounded: `EXAMPLES` valid and `EXAMPLES` invalid cases per JSON route (`PAGE_EXAMPLES` per
HTML page, `FEWER` for some) and database, derandomized (the same cases every run). The
cases are generated once, for the first database, and the same cases go to the second
(`GENERATED`): generating them is more than half of the test's time."""

from __future__ import annotations

import os
import re
import time

import pytest

try:
    import schemathesis
except ImportError:   # the dev extra has it; CI must run these tests
    if os.environ.get("CI"):
        raise
    pytest.skip("schemathesis is not installed (pip install -e '.[dev]')",
                allow_module_level=True)
from alignloop.labeling.queue.app import create_app  # noqa: E402
from alignloop.labeling.queue.deps import COOKIE  # noqa: E402
from alignloop.labeling.queue.store import QueueStore  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.config import SchemathesisConfig  # noqa: E402
from schemathesis.config._checks import NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from .test_queue_hardening import _items  # noqa: E402

EXAMPLES = 100
PAGE_EXAMPLES = 25
# The guideline form's 50,000-character body makes its cases slow to generate
FEWER = {("POST", "/admin/guidelines"): 10}
# Routes left out of the contract check (none: every /api route is checked).
NOT_YET: set[tuple[str, str]] = set()
# (method, path, mode) -> the cases generated for the first database, sent to the next one
GENERATED: dict[tuple[str, str, str], list] = {}


def _sign_in(app, token: str) -> tuple[str, str]:
    """(session cookie, CSRF token) of a web session signed in with `token`."""
    with TestClient(app, base_url="http://testserver") as client:
        page = client.get("/").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        assert client.post("/login", data={"token": token, "csrf": csrf},
                           follow_redirects=False).status_code == 303
        page = client.get("/admin")
        assert page.status_code == 200
        return client.cookies[COOKIE], re.search(r'name="csrf" value="([^"]+)"',
                                                 page.text).group(1)


@pytest.fixture
def api(store_url):
    """(schema, headers, session): the app over a fresh store with items and an admin,
    whose token goes with every generated request, and the admin's web session
    (cookie, CSRF token)."""
    store = QueueStore(store_url)
    token = store.add_annotator("boss", "admin")
    store.add_annotator("ann")
    store.submit(_items(EXAMPLES * 8))
    # the app's real defaults, but for the per-IP limit on 401s: schemathesis sends many
    # unauthenticated requests on purpose (from one "IP")
    app = create_app(store, secret="schema-test", auth_failures=10**9)
    session = _sign_in(app, token)
    config = SchemathesisConfig.from_dict({"checks": {"negative_data_rejection": {
        "expected-statuses": [*NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES, "303", "413"]}}})
    yield (schemathesis.openapi.from_asgi("/openapi.json", app, config=config),
           {"Authorization": f"Bearer {token}"}, session)
    store.close()


def _check(operation, mode, headers: dict, session: tuple[str, str],
           seen: set[tuple[str, str, int]]) -> str | None:
    """Run the generated cases of one operation; the first failure's report, or None.
    Adds (method, path, status) of every response to `seen`."""
    admin_form = operation.method.upper() == "POST" and operation.path.startswith("/admin")
    html = operation.path.startswith(("/admin", "/label")) or operation.path == "/"
    examples = FEWER.get((operation.method.upper(), operation.path),
                         PAGE_EXAMPLES if html else EXAMPLES)
    key, cases = (operation.method.upper(), operation.path, mode.value), []

    def send(case):
        """To this database's app (a case generated for another holds that one's)."""
        if mode == GenerationMode.POSITIVE:
            case.cookies = {**(case.cookies or {}), COOKIE: session[0]}
            if admin_form and isinstance(case.body, dict):
                case.body["csrf"] = session[1]
        response = case.call_and_validate(headers=headers, app=operation.schema.app)
        seen.add((operation.method.upper(), operation.path, response.status_code))

    @given(case=operation.as_strategy(mode))
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    def run(case):
        cases.append(case)
        send(case)

    start = time.perf_counter()
    try:
        if key in GENERATED:
            for case in GENERATED[key]:
                send(case)
        else:
            run()
            GENERATED[key] = cases
    except Unsatisfiable:   # negative mode on a route without parameters: nothing to send
        GENERATED[key] = []
        return None
    except Exception as e:  # noqa: BLE001 (a schemathesis failure report, kept whole)
        return f"{operation.method.upper()} {operation.path} ({mode.value}): {e}"[:3000]
    finally:
        print(f"{operation.method.upper()} {operation.path} {mode.value}: "
              f"{time.perf_counter() - start:.1f} s")
    return None


def test_every_response_matches_the_published_schema(api):
    schema, headers, session = api
    seen: set[tuple[str, str, int]] = set()
    operations = [op for r in schema.get_all_operations()
                  if ((op := r.ok()).method.upper(), op.path) not in NOT_YET]
    assert len(operations) >= 17  # every route in /openapi.json, the admin pages included
    failures = [f for op in operations for mode in (GenerationMode.POSITIVE,
                                                    GenerationMode.NEGATIVE)
                if (f := _check(op, mode, headers, session, seen))]
    assert not failures, "\n\n".join(failures)
    # the admin forms' cases got past the session and CSRF checks to the handlers
    for reached in (("GET", "/admin", 200), ("GET", "/admin/adjudicate", 200),
                    ("POST", "/admin/annotators", 200), ("POST", "/admin/guidelines", 303),
                    ("POST", "/admin/adjudicate", 404), ("GET", "/label", 200)):
        assert reached in seen, (reached, sorted(x for x in seen if x[1] == reached[1]))


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


def test_the_schema_documents_the_pages_session_cookie_and_csrf(api):
    spec = api[0].raw_schema
    assert spec["components"]["securitySchemes"]["session"] == {
        "type": "apiKey", "in": "cookie", "name": COOKIE,
        "description": spec["components"]["securitySchemes"]["session"]["description"]}
    paths = spec["paths"]
    statuses = {(m.upper(), p): set(op["responses"]) for p, ops in paths.items()
                for m, op in ops.items()}
    assert statuses[("GET", "/admin")] == {"200", "303", "403"}
    assert statuses[("GET", "/admin/adjudicate")] == {"200", "303", "403"}
    assert statuses[("POST", "/admin/annotators")] == {"200", "303", "400", "403", "404",
                                                       "409", "413", "422"}
    assert statuses[("POST", "/admin/guidelines")] == {"303", "400", "403", "413", "422"}
    assert statuses[("POST", "/admin/adjudicate")] == {"303", "400", "403", "404", "413",
                                                       "422"}
    assert statuses[("POST", "/label/skip")] >= {"303", "400", "403", "422"}
    for path, method in (("/admin", "get"), ("/admin/adjudicate", "post"), ("/label", "get"),
                         ("/label", "post"), ("/label/skip", "post"), ("/logout", "post")):
        assert {"session": []} in paths[path][method]["security"], path
    for path in ("/login", "/logout", "/label", "/label/skip", "/admin/annotators",
                 "/admin/guidelines", "/admin/adjudicate"):
        form = paths[path]["post"]["requestBody"]["content"][
            "application/x-www-form-urlencoded"]["schema"]
        assert "csrf" in form["required"], path
    roles = paths["/admin/annotators"]["post"]["requestBody"]["content"][
        "application/x-www-form-urlencoded"]["schema"]["properties"]["role"]["enum"]
    assert roles == ["annotator", "reviewer", "admin"]


def test_a_non_ascii_csrf_token_or_order_signature_is_refused_not_a_crash(store_url):
    """`hmac.compare_digest` raises on non-ASCII text: a forged form field must be a 403
    (CSRF) or 400 (order signature), never a server error."""
    store = QueueStore(store_url)
    token = store.add_annotator("ann")
    store.submit(_items(2))
    app = create_app(store, secret="schema-test")
    with TestClient(app, base_url="http://testserver") as client:
        page = client.get("/").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        assert client.post("/login", data={"token": token, "csrf": "é" + csrf[1:]},
                           follow_redirects=False).status_code == 403
        assert client.post("/login", data={"token": token, "csrf": csrf},
                           follow_redirects=False).status_code == 303
        page = client.get("/label").text
        form = dict(re.findall(r'name="(\w+)" value="([^"]*)"', page))
        for path, extra in (("/label", {"slot": "left", "confidence": "2"}),
                            ("/label/skip", {"reason": "other"})):
            r = client.post(path, data={**form, **extra, "csrf": "ü"}, follow_redirects=False)
            assert r.status_code == 403, path
            r = client.post(path, data={**form, **extra, "order_sig": "ü" * 64},
                            follow_redirects=False)
            assert r.status_code == 400 and "Form altered" in r.text, path
    store.close()
