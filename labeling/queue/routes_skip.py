"""Skipping and guidelines for annotators: `POST /label/skip` (the page's skip form),
`POST /api/skip` and `GET /api/guidelines` (bearer token).

    POST /api/skip        {item_id, lease_id, reason, comment?}; reason is one of
                          cant_judge, offensive, needs_expertise, other. 201 {skip_id,
                          created: true}; 200 {created: false} when that item was skipped
                          by you already; 404 no such lease of yours on the item; 409 the
                          item is labeled already; 422 invalid field. The item is not
                          offered to you again; it goes to someone else.
    GET  /api/guidelines  ?round=K: {guideline: {version, round, body} or null}, the
                          guideline shown for that round's items (default: the queue's);
                          its round is null when it is the queue's, for every round.
"""

from __future__ import annotations

from typing import Literal

from alignloop.labeling.queue import guidelines
from alignloop.labeling.queue.contract import _AUTH, _BODY, PAGES, Invalid, Problem, _json
from alignloop.labeling.queue.deps import BearerAnnotator, Web
from alignloop.labeling.queue.routes_api import _ID, _TEXT  # no control characters
from alignloop.labeling.queue.routes_pages import _error, _forbidden, _posted_form, _signed_out
from alignloop.labeling.queue.skips import record_skip
from alignloop.labeling.queue.store import QueueError
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

router = APIRouter()


class SkipIn(BaseModel):
    """The body of POST /api/skip."""

    model_config = ConfigDict(extra="forbid", strict=True)

    item_id: str = Field(min_length=1, max_length=200, json_schema_extra=_ID)
    lease_id: str = Field(min_length=1, max_length=200, json_schema_extra=_ID)
    reason: Literal["cant_judge", "offensive", "needs_expertise", "other"]
    comment: str = Field(default="", max_length=4000, json_schema_extra=_TEXT)


class Skipped(BaseModel):
    skip_id: int
    created: bool


class GuidelineOut(BaseModel):
    version: int
    round: int | None          # null: the queue's guideline, for every round
    body: str


class Guide(BaseModel):
    guideline: GuidelineOut | None


# The statuses in the published contract (`contract.py`'s shapes)
_SKIP_RESPONSES = {
    201: _json(Skipped, "skipped: the item is not offered to you again"),
    200: _json(Skipped, "you had skipped this item already"),
    404: _json(Problem, "unknown item, or no lease of yours on it"),
    409: _json(Problem, "the item is labeled already"),
    422: _json(Invalid, "an invalid field"), **_BODY, **_AUTH}
_GUIDE_RESPONSES = {200: _json(Guide, "the guideline of that round's items (null: none)"),
                    422: _json(Invalid, "an invalid query parameter"), **_AUTH}


@router.post("/api/skip", status_code=201, responses=_SKIP_RESPONSES)
def api_skip(body: SkipIn, web: Web, annotator: BearerAnnotator):
    r = record_skip(web.store, annotator.id, item_id=body.item_id, lease_id=body.lease_id,
                    reason=body.reason, comment=body.comment)
    return JSONResponse(status_code=201 if r.created else 200,
                        content={"skip_id": r.skip_id, "created": r.created})


@router.get("/api/guidelines", responses=_GUIDE_RESPONSES)
def api_guidelines(request: Request, web: Web, annotator: BearerAnnotator,
                   round: int | None = Query(default=None, ge=0, le=2**31 - 1)):
    unknown = sorted(set(request.query_params) - {"round"})
    if unknown:   # strict, like the bodies: an unknown parameter is a mistake, said so
        raise QueueError(f"unknown query parameter {unknown[0]!r}", 422, unknown[0])
    given = request.query_params.getlist("round")
    if len(given) > 1 or (given and not given[0].isascii()) or (
            given and not given[0].isdigit()):   # "0.0", "1e3", " 2": not coerced
        raise QueueError(f"round must be one whole number, got {given!r}", 422, "round")
    g = guidelines.current(web.store, round)
    return {"guideline": None if g is None else {
        "version": g.version, "round": g.round if g.round >= 0 else None, "body": g.body}}


@router.post("/label/skip", **PAGES["POST /label/skip"])
async def label_skip(request: Request, web: Web):
    """The page's skip form: the same CSRF token and order signature as the answer form."""
    form, session = await _posted_form(web, request)
    if form is None:
        return _forbidden(web, request)
    if not session.get("aid"):
        return RedirectResponse("/", status_code=303)
    f = {k: str(form.get(k) or "") for k in ("item_id", "lease_id", "display_order",
                                             "order_sig", "reason", "comment")}
    if not web.sessions.order_ok(f["lease_id"], f["item_id"], f["display_order"],
                                 f["order_sig"]):
        return _error(web, request, 400, "Form altered",
                      "The form did not match the item shown. Reload the page.")
    if not await run_in_threadpool(web.signed_in, session):
        return _signed_out(web)
    try:
        await run_in_threadpool(lambda: record_skip(
            web.store, session["aid"], item_id=f["item_id"], lease_id=f["lease_id"],
            reason=f["reason"], comment=f["comment"]))
    except QueueError as e:
        if e.status in (404, 409):
            return RedirectResponse("/label?note=gone", status_code=303)
        return _error(web, request, 422, "Not skipped", str(e))
    response = RedirectResponse("/label?note=skipped", status_code=303)
    web.sessions.write(response, {k: v for k, v in session.items() if k != "lease"})
    return response
