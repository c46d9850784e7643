"""The JSON API for scripts and bots (bearer token; see `app` for the reference):
`POST /api/next` leases the next item, `POST /api/labels` records a label (and, with
`"next": true`, leases the next item in the same request).

The store calls run through `QueueWeb.call` (inline on the event loop for SQLite, see
`create_app`): these two routes are the queue's hot path."""

from __future__ import annotations

from typing import Literal

from alignloop.labeling.queue.contract import API, WAITING_HEADER
from alignloop.labeling.queue.deps import BearerAnnotator, Web
from alignloop.labeling.queue.leases import MAX_COMMENT
from alignloop.labeling.queue.stats import waiting_items
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

router = APIRouter()


# Documented in the schema, checked by `controls` (whose 422 names the character): no
# control character in an id, none but tab, LF and CR in a comment.
_ID = {"pattern": r"^[^\x00-\x1f\x7f]*$"}
_TEXT = {"pattern": r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"}


class LabelIn(BaseModel):
    """The body of POST /api/labels. Strict: a field of the wrong JSON type (`confidence`
    "3" or true, `item_id` 7) or one the API does not know is refused (422), never coerced
    or ignored. (`confidence` 2.0 is the integer 2, as in JSON Schema.)"""

    model_config = ConfigDict(strict=True, extra="forbid")
    item_id: str = Field(min_length=1, max_length=200, json_schema_extra=_ID)
    lease_id: str = Field(min_length=1, max_length=200, json_schema_extra=_ID)
    choice: Literal["a", "b", "tie", "both_bad"]
    confidence: int = Field(ge=1, le=3, strict=False)
    idempotency_key: str = Field(min_length=1, max_length=200, json_schema_extra=_ID)
    comment: str = Field(default="", max_length=MAX_COMMENT, json_schema_extra=_TEXT)
    next: bool = Field(default=False, description="also lease the next item: the answer's "
                       "`next` is what `POST /api/next` would answer (null for its 204)")

    @field_validator("confidence", mode="before")
    @classmethod
    def _a_json_number(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("confidence must be a JSON integer 1-3")
        return value


def _lease(a) -> dict | None:
    if a is None:
        return None
    it = a.item
    return {"item_id": it.item_id, "lease_id": a.lease_id, "round": it.round,
            "prompt": it.prompt, "a": it.a, "b": it.b, "display_order": a.display_order,
            "expires_at": a.expires_at}


@router.post("/api/next", **API["POST /api/next"])
async def api_next(web: Web, annotator: BearerAnnotator):
    lease = _lease(await web.call(web.next_item, annotator.id))
    if lease is not None:
        return JSONResponse(lease)
    # 204 has no body: a header says whether the queue is done (0) or items wait for others
    waiting = await web.call(waiting_items, web.store)
    return Response(status_code=204, headers={WAITING_HEADER: str(waiting)})


@router.post("/api/labels", **API["POST /api/labels"])
async def api_labels(body: LabelIn, web: Web, annotator: BearerAnnotator):
    r = await web.call(web.store.record_label, annotator.id, item_id=body.item_id,
                       lease_id=body.lease_id, choice=body.choice,
                       confidence=body.confidence, idempotency_key=body.idempotency_key,
                       comment=body.comment)
    content = {"label_id": r.label_id, "created": r.created}
    if body.next:   # a label and the next lease: one request per label instead of two
        content["next"] = _lease(await web.call(web.next_item, annotator.id))
        if content["next"] is None:
            content["waiting_items"] = await web.call(waiting_items, web.store)
    return JSONResponse(status_code=201 if r.created else 200, content=content)
