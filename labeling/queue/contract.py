"""The web app's published contract: the JSON bodies it sends and, per route, every status
it answers with, as FastAPI `responses=` tables. `/openapi.json` is built from these
(with the `bearer` security scheme declared in `deps`), and `tests/test_queue_schema.py`
runs schemathesis against it, so a response that contradicts this module fails the tests.

Errors are one JSON shape, `Problem` `{"detail": str, "field": str | null}`; a 422 adds
`errors` (`Invalid`), one `{field, message}` per invalid field, `field` naming the first.
Unlike FastAPI's default 422, `detail` is a sentence, not a list.
The pages answer HTML; their refusals (400/401/403/422/429) are HTML pages too.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel


class Problem(BaseModel):
    """Every error but a 422: what went wrong, and the request field it concerns if any."""

    detail: str
    field: str | None = None


class FieldError(BaseModel):
    field: str
    message: str


class Invalid(BaseModel):
    """422: `field` names the first invalid field ("body" for JSON that does not parse)."""

    detail: str
    field: str
    errors: list[FieldError]


class Lease(BaseModel):
    """200 of POST /api/next: the leased item. `choice` in a label is relative to `a`/`b`;
    `display_order` is the left-to-right order to show them in."""

    item_id: str
    lease_id: str
    round: int
    prompt: str | list[dict[str, Any]]
    a: str
    b: str
    display_order: Literal["ab", "ba"]
    expires_at: float


class Recorded(BaseModel):
    label_id: int
    created: bool


class Health(BaseModel):
    ok: bool


def _json(model: type[BaseModel], description: str) -> dict:
    return {"model": model, "description": description}


def _html(description: str) -> dict:
    return {"description": description,
            "content": {"text/html": {"schema": {"type": "string"}}}}


_SEE_OTHER = {"description": "redirect (to the next page, or to sign-in)",
              "headers": {"Location": {"schema": {"type": "string"}}}}
_BODY = {400: _json(Problem, "invalid Content-Length"),
         413: _json(Problem, "request body over max_body_bytes")}
_AUTH = {401: _json(Problem, "missing, unknown or disabled bearer token"),
         429: _json(Problem, "too many failed authentications from this address "
                             "(see the Retry-After header)")}

API = {
    "POST /api/next": {"responses": {
        200: _json(Lease, "an item leased to you (or the lease you hold, at the cap)"),
        204: {"description": "nothing left for you to label"}, **_BODY, **_AUTH}},
    "POST /api/labels": {"status_code": 201, "responses": {
        201: _json(Recorded, "a new label"),
        200: _json(Recorded, "a replay of an idempotency key already used: the label it "
                             "recorded"),
        404: _json(Problem, "unknown item, or no lease of yours on it"),
        409: _json(Problem, "already labeled, lease used or expired with the item full, or "
                            "an idempotency key reused for another label"),
        422: _json(Invalid, "an invalid field"), **_BODY, **_AUTH}},
    "GET /api/status": {"responses": {
        200: {"description": "counts per round and agreement (`QueueStore.status`)"},
        403: _json(Problem, "not an admin"), **_AUTH}},
    "GET /healthz": {"responses": {200: _json(Health, "the database answers"),
                                   503: _json(Health, "the database does not answer")}},
}

PAGES = {
    "GET /": {"response_class": HTMLResponse, "responses": {
        200: _html("the sign-in page"), 303: _SEE_OTHER}},
    "POST /login": {"status_code": 303, "response_class": RedirectResponse, "responses": {
        303: _SEE_OTHER, 401: _html("the token is not valid"),
        403: _html("CSRF token missing or wrong"),
        429: _html("too many failed sign-ins (see Retry-After)"), **_BODY}},
    "POST /logout": {"status_code": 303, "response_class": RedirectResponse, "responses": {
        303: _SEE_OTHER, 403: _html("CSRF token missing or wrong"), **_BODY}},
    "GET /label": {"response_class": HTMLResponse, "responses": {
        200: _html("the next item, or nothing left"), 303: _SEE_OTHER,
        422: _json(Invalid, "an invalid query parameter")}},
    "POST /label": {"status_code": 303, "response_class": RedirectResponse, "responses": {
        303: _SEE_OTHER, 400: _html("the form was altered or incomplete"),
        403: _html("CSRF token missing or wrong"), 413: _BODY[413],
        422: _html("an invalid field (e.g. a comment over 4000 characters)")}},
}
