"""The web app's published contract: the JSON bodies it sends and, per route, every status
it answers with, as FastAPI `responses=` tables. `/openapi.json` is built from these
(with the `bearer` security scheme declared in `deps`), and `tests/test_queue_schema.py`
runs schemathesis against it, so a response that contradicts this module fails the tests.

Errors are one JSON shape, `Problem` `{"detail": str, "field": str | null}`; a 422 adds
`errors` (`Invalid`), one `{field, message}` per invalid field, `field` naming the first.
Unlike FastAPI's default 422, `detail` is a sentence, not a list.
The pages answer HTML; their refusals (400/401/403/404/409/422/429) are HTML pages too.
They take urlencoded forms (documented as request bodies), each with the page's `csrf`
field, and the signed-in ones declare the `session` security scheme: the session cookie
(`deps.COOKIE`) as an API key in a cookie. `/admin/adjudicate` is for admins and
reviewers, the other `/admin` routes for admins (see `routes_dashboard`).
"""

from __future__ import annotations

from typing import Any, Literal

from alignloop.labeling.queue.accounts import ROLES
from alignloop.labeling.queue.deps import COOKIE
from fastapi import Depends
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.security import APIKeyCookie
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
    """201/200 of POST /api/labels; `next` only when the label asked for it, and
    `waiting_items` only when that `next` is null (as the 204's header of POST /api/next)."""

    label_id: int
    created: bool
    next: Lease | None = None
    waiting_items: int | None = None


class Health(BaseModel):
    ok: bool


def _json(model: type[BaseModel], description: str) -> dict:
    return {"model": model, "description": description}


def _html(description: str) -> dict:
    return {"description": description,
            "content": {"text/html": {"schema": {"type": "string"}}}}


def _html_or_json(description: str) -> dict:
    """A page's refusal (HTML), or the same status from the body guard (JSON `Problem`)."""
    return {"description": description, "content": {
        "text/html": {"schema": {"type": "string"}},
        "application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}


_SEE_OTHER = {"description": "redirect (to the next page, or to sign-in)",
              "headers": {"Location": {"schema": {"type": "string"}}}}
_BODY = {400: _json(Problem, "invalid Content-Length"),
         413: _json(Problem, "request body over max_body_bytes")}

# The session cookie, declared as the `session` security scheme of the signed-in pages
# (the check is the route's own: a missing or ended session is a 303 to sign-in).
_SESSION = APIKeyCookie(name=COOKIE, scheme_name="session", auto_error=False,
                        description="the signed-in session (`POST /login` sets it)")
SIGNED_IN = [Depends(_SESSION)]

# Form fields. The patterns say what the server refuses with 422 (`controls`): no control
# character in an id or a name, none but tab, LF and CR in free text.
_ID = r"^[^\x00-\x1f\x7f]*$"
_TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
_CSRF = {"type": "string", "description": "the CSRF token of the page the form is on "
                                          "(missing or wrong: 403)"}
_STR = {"type": "string"}
WAITING_HEADER = "X-Queue-Waiting-Items"   # on POST /api/next's 204: open items left to others


def _form(*required: str, **fields: dict) -> dict:
    """`openapi_extra` documenting an urlencoded form body with `csrf` and `fields`."""
    schema = {"type": "object", "properties": {"csrf": _CSRF, **fields},
              "required": ["csrf", *required]}
    return {"requestBody": {"required": True, "content": {
        "application/x-www-form-urlencoded": {"schema": schema}}}}


_SHOWN_ITEM = {"item_id": _STR, "lease_id": _STR, "display_order": _STR, "order_sig": _STR}
_AUTH = {401: _json(Problem, "missing, unknown or disabled bearer token"),
         429: _json(Problem, "too many failed authentications from this address "
                             "(see the Retry-After header)")}

API = {
    "POST /api/next": {"responses": {
        200: _json(Lease, "an item leased to you (or the lease you hold, at the cap)"),
        204: {"description": "nothing left for you to label; the X-Queue-Waiting-Items "
                     "header counts the open items that wait for other annotators' votes "
                     "(0: the queue is done)",
              "headers": {WAITING_HEADER: {"schema": {"type": "integer", "minimum": 0}}}},
        **_BODY, **_AUTH}},
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
    "POST /login": {"status_code": 303, "response_class": RedirectResponse,
                    "openapi_extra": _form("token", token=_STR), "responses": {
        303: _SEE_OTHER, 401: _html("the token is not valid"),
        403: _html("CSRF token missing or wrong (that of the sign-in page)"),
        429: _html("too many failed sign-ins (see Retry-After)"), **_BODY}},
    "POST /logout": {"status_code": 303, "response_class": RedirectResponse,
                     "dependencies": SIGNED_IN, "openapi_extra": _form(), "responses": {
        303: _SEE_OTHER, 403: _html("CSRF token missing or wrong"), **_BODY}},
    "GET /label": {"response_class": HTMLResponse, "dependencies": SIGNED_IN, "responses": {
        200: _html("the next item, or nothing left"), 303: _SEE_OTHER,
        422: _json(Invalid, "an invalid query parameter")}},
    "POST /label": {"status_code": 303, "response_class": RedirectResponse,
                    "dependencies": SIGNED_IN,
                    "openapi_extra": _form(*_SHOWN_ITEM, "slot", "confidence", **_SHOWN_ITEM,
                                           slot={"enum": ["left", "right", "tie", "both_bad"]},
                                           confidence={"enum": ["1", "2", "3"]},
                                           comment=_STR, idempotency_key=_STR),
                    "responses": {
        303: _SEE_OTHER, 400: _html_or_json("the form was altered or incomplete"),
        403: _html("CSRF token missing or wrong"), 413: _BODY[413],
        422: _html("an invalid field (e.g. a comment over 4000 characters)")}},
    "POST /label/skip": {"status_code": 303, "response_class": RedirectResponse,
                         "dependencies": SIGNED_IN,
                         "openapi_extra": _form(*_SHOWN_ITEM, "reason", **_SHOWN_ITEM,
                                                reason={"enum": ["cant_judge", "offensive",
                                                                 "needs_expertise", "other"]},
                                                comment=_STR),
                         "responses": {
        303: _SEE_OTHER, 400: _html_or_json("the form was altered"),
        403: _html("CSRF token missing or wrong"), 413: _BODY[413],
        422: _html("an invalid field (e.g. an unknown reason)")}},
}

# The admin pages (`routes_dashboard`): HTML, signed-in session and CSRF token. A refused
# action shows the page again with the error and its status.
_NOT_ALLOWED = {403: _html("CSRF token missing or wrong, or a role that may not (admins "
                           "only; adjudication: admins and reviewers)")}
_NAME = {"type": "string", "maxLength": 100,
         "pattern": r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"}
_DASHBOARD = {"response_class": HTMLResponse, "dependencies": SIGNED_IN}
_REDIRECTS = {"status_code": 303, "response_class": RedirectResponse}   # on success

ADMIN = {
    "GET /admin": {**_DASHBOARD, "responses": {
        200: _html("the dashboard"), 303: _SEE_OTHER, **_NOT_ALLOWED}},
    "POST /admin/annotators": {
        **_DASHBOARD, "openapi_extra": _form(
            "action", "name", action={"enum": ["add", "disable", "rotate"]}, name=_NAME,
            role={"enum": list(ROLES), "description": "of a new annotator (default: "
                                                      "annotator)"}),
        "responses": {
            200: _html("added, or the token rotated: the dashboard with the new token "
                       "(shown once)"),
            303: {**_SEE_OTHER, "description": "disabled (or not signed in): redirect"},
            404: _html("no annotator of that name"),
            409: _html("an annotator of that name exists, or disabling yourself"),
            422: _html("an invalid field (name, role or action)"), **_NOT_ALLOWED, **_BODY,
            400: _html_or_json("a form that cannot be read")}},
    "POST /admin/guidelines": {
        **_DASHBOARD, **_REDIRECTS, "openapi_extra": _form(
            "body", body={"type": "string", "minLength": 1, "maxLength": 50_000,
                          "pattern": r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*"
                                     r"[^\s\x00-\x1f\x7f]"
                                     r"[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"},
            round={"type": "string", "pattern": r"^[0-9]{0,9}$",
                   "description": "only this round's items (empty: every round)"}),
        "responses": {
            303: {**_SEE_OTHER, "description": "stored (or not signed in): redirect"},
            422: _html("an invalid field (body or round)"), **_NOT_ALLOWED, **_BODY,
            400: _html_or_json("a form that cannot be read")}},
    "GET /admin/adjudicate": {**_DASHBOARD, "responses": {
        200: _html("the disputed items with their votes"), 303: _SEE_OTHER, **_NOT_ALLOWED}},
    "POST /admin/adjudicate": {
        **_DASHBOARD, **_REDIRECTS, "openapi_extra": _form(
            "item_id", "choice",
            item_id={"type": "string", "minLength": 1, "maxLength": 200, "pattern": _ID},
            choice={"enum": ["a", "b", "tie", "both_bad"]},
            comment={"type": "string", "maxLength": 4000, "pattern": _TEXT}),
        "responses": {
            303: {**_SEE_OTHER, "description": "recorded (or not signed in): redirect"},
            404: _html("no such regular item"), 422: _html("an invalid field"),
            **_NOT_ALLOWED, **_BODY, 400: _html_or_json("a form that cannot be read")}},
}
