"""The JSON API for scripts and bots (bearer token; see `app` for the reference):
`POST /api/next` leases the next item, `POST /api/labels` records a label."""

from __future__ import annotations

from typing import Literal

from alignloop.labeling.queue.deps import BearerAnnotator, Web
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

router = APIRouter()


class LabelIn(BaseModel):
    """The body of POST /api/labels."""

    item_id: str = Field(min_length=1, max_length=200)
    lease_id: str = Field(min_length=1, max_length=200)
    choice: Literal["a", "b", "tie", "both_bad"]
    confidence: int = Field(ge=1, le=3)
    idempotency_key: str = Field(min_length=1, max_length=200)
    comment: str = Field(default="", max_length=4000)


@router.post("/api/next")
def api_next(web: Web, annotator: BearerAnnotator):
    a = web.next_item(annotator.id)
    if a is None:
        return Response(status_code=204)
    it = a.item
    return JSONResponse({"item_id": it.item_id, "lease_id": a.lease_id, "round": it.round,
                         "prompt": it.prompt, "a": it.a, "b": it.b,
                         "display_order": a.display_order, "expires_at": a.expires_at})


@router.post("/api/labels")
def api_labels(body: LabelIn, web: Web, annotator: BearerAnnotator):
    r = web.store.record_label(annotator.id, item_id=body.item_id, lease_id=body.lease_id,
                               choice=body.choice, confidence=body.confidence,
                               idempotency_key=body.idempotency_key, comment=body.comment)
    return JSONResponse(status_code=201 if r.created else 200,
                        content={"label_id": r.label_id, "created": r.created})
