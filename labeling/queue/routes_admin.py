"""Operating the queue: `GET /api/status` (admins only) and `GET /healthz`."""

from __future__ import annotations

import logging

from alignloop.labeling.queue.contract import API
from alignloop.labeling.queue.deps import BearerAnnotator, Web
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger("alignloop.queue")
router = APIRouter()


@router.get("/api/status", **API["GET /api/status"])
def api_status(web: Web, annotator: BearerAnnotator):
    if not annotator.is_admin:
        raise HTTPException(403, "admin only")
    return web.store.status()


@router.get("/healthz", **API["GET /healthz"])
def healthz(web: Web):
    try:
        web.store.ping()
    except Exception as e:  # noqa: BLE001 (any database failure is "not healthy")
        log.warning("health check failed: %s", e)
        return JSONResponse(status_code=503, content={"ok": False})
    return {"ok": True}
