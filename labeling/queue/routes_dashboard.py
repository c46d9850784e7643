"""The admin pages (a signed-in web session only): the dashboard (`/admin`:
progress, throughput, annotators, agreement, disputed items), annotator management
(add, disable, rotate a token), the guideline editor, and adjudication
(`/admin/adjudicate`: disputed items with every vote and comment, and a form for the
final verdict).

Who may: adjudication is for admins and reviewers (`accounts.ROLES`), everything else
for admins only. Refusals: no session -> 303 to the sign-in page; a session that no
longer stands -> signed out; a role that may not -> 403. Every POST checks the CSRF token
first (403). The role is read from the store on every request, not trusted from the
cookie.
All text goes through Jinja's autoescape; guidelines are rendered as data
(`guidelines.blocks`), never as HTML.
"""

from __future__ import annotations

import re

from alignloop.labeling.queue import adjudication, controls, dashboard, guidelines
from alignloop.labeling.queue.contract import ADMIN
from alignloop.labeling.queue.deps import QueueWeb, Web
from alignloop.labeling.queue.store import QueueError
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

router = APIRouter()
REFUSED = {"title": "Admins only", "message": "This page is for queue admins."}
REFUSED_ADJUDICATE = {"title": "Reviewers only",
                      "message": "Adjudication is for queue admins and reviewers."}


def _page(web: QueueWeb, request: Request, template: str, status: int = 200,
          **context) -> Response:
    return web.templates.TemplateResponse(request, template, context, status_code=status)


async def _admin(web: QueueWeb, request: Request, session: dict | None, *,
                 adjudicate: bool = False):
    """(session, account), or the Response refusing the request: the account must be an
    admin's (with `adjudicate`: an admin's or a reviewer's)."""
    if not session or not session.get("aid"):
        return RedirectResponse("/", status_code=303)
    who = await run_in_threadpool(web.store.session_annotator, session["sid"])
    if who is None or who.id != session.get("aid"):
        response = RedirectResponse("/", status_code=303)
        web.sessions.clear(response)
        return response
    if adjudicate and not who.can_adjudicate:
        return _page(web, request, "error.html", 403, **REFUSED_ADJUDICATE)
    if not adjudicate and not who.is_admin:
        return _page(web, request, "error.html", 403, **REFUSED)
    return session, who


async def _posted(web: QueueWeb, request: Request, *, adjudicate: bool = False):
    """(form, session, account) of a CSRF-checked form (`_admin` says who may), or the
    refusing Response."""
    form = await request.form()
    session = web.sessions.read(request)
    if not web.sessions.csrf_ok(session, form.get("csrf")):
        return _page(web, request, "error.html", 403, title="Form refused",
                     message="This form has expired or did not come from this site. "
                             "Reload the page and try again.")
    got = await _admin(web, request, session, adjudicate=adjudicate)
    if isinstance(got, Response):
        return got
    return form, got[0], got[1]


def _common(web: QueueWeb, session: dict, who) -> dict:
    return {"csrf": web.sessions.csrf(session), "name": who.name, "role": who.role}


async def _dashboard(web: QueueWeb, request: Request, session: dict, who, *,
                     status: int = 200, new_token: dict | None = None,
                     error: str = "") -> Response:
    data = await run_in_threadpool(dashboard.overview, web.store)
    guide = data["guideline"]
    return _page(web, request, "admin.html", status, **_common(web, session, who), data=data,
                 new_token=new_token, error=error,
                 guide_blocks=guidelines.blocks(guide["body"]) if guide else [])


@router.get("/admin", **ADMIN["GET /admin"])
async def admin_page(request: Request, web: Web):
    got = await _admin(web, request, web.sessions.read(request))
    if isinstance(got, Response):
        return got
    return await _dashboard(web, request, *got)


@router.post("/admin/annotators", **ADMIN["POST /admin/annotators"])
async def admin_annotators(request: Request, web: Web):
    """action=add (name, role), disable (name) or rotate (name)."""
    got = await _posted(web, request)
    if isinstance(got, Response):
        return got
    form, session, who = got
    # a row's buttons post its exact name: stripping it could act on a look-alike account
    # ("alice " is refused as a new name, but an older queue may hold one)
    action, name = str(form.get("action") or ""), str(form.get("name") or "")
    store = web.store
    try:
        controls.check(name, "name", "id")
        if action == "add":
            name = name.strip()            # what the add form's user typed
            role = str(form.get("role") or "annotator")
            token = await run_in_threadpool(store.add_annotator, name, role)
            return await _dashboard(web, request, session, who,
                                    new_token={"name": name, "token": token, "added": True})
        if action == "rotate":
            token = await run_in_threadpool(dashboard.rotate_token, store, name)
            web.tokens.clear()   # this worker forgets cached tokens at once
            return await _dashboard(web, request, session, who,
                                    new_token={"name": name, "token": token, "added": False})
        if action == "disable":
            if name == who.name:
                raise QueueError("you cannot disable yourself", 409, "name")
            await run_in_threadpool(store.disable_annotator, name)
            web.tokens.clear()
            return RedirectResponse("/admin", status_code=303)
        raise QueueError(f"unknown action {action!r}", 422, "action")
    except QueueError as e:
        return await _dashboard(web, request, session, who, status=e.status, error=str(e))


@router.post("/admin/guidelines", **ADMIN["POST /admin/guidelines"])
async def admin_guidelines(request: Request, web: Web):
    got = await _posted(web, request)
    if isinstance(got, Response):
        return got
    form, session, who = got
    raw_round = str(form.get("round") or "").strip()
    try:
        if raw_round and not re.fullmatch(r"[0-9]{1,9}", raw_round):
            raise QueueError(f"round must be a number from 0 to 999999999 or empty, got "
                             f"{raw_round!r}", 422, "round")
        await run_in_threadpool(lambda: guidelines.set_guideline(
            web.store, str(form.get("body") or ""), author=who.name,
            round=int(raw_round) if raw_round else None))
    except QueueError as e:
        return await _dashboard(web, request, session, who, status=e.status, error=str(e))
    return RedirectResponse("/admin#guidelines", status_code=303)


async def _adjudicate_page(web: QueueWeb, request: Request, session: dict, who, *,
                           status: int = 200, error: str = "") -> Response:
    items = await run_in_threadpool(lambda: adjudication.disputed(web.store, limit=100))
    return _page(web, request, "adjudicate.html", status, **_common(web, session, who),
                 items=items, error=error)


@router.get("/admin/adjudicate", **ADMIN["GET /admin/adjudicate"])
async def adjudicate_page(request: Request, web: Web):
    got = await _admin(web, request, web.sessions.read(request), adjudicate=True)
    if isinstance(got, Response):
        return got
    return await _adjudicate_page(web, request, *got)


@router.post("/admin/adjudicate", **ADMIN["POST /admin/adjudicate"])
async def adjudicate_submit(request: Request, web: Web):
    got = await _posted(web, request, adjudicate=True)
    if isinstance(got, Response):
        return got
    form, session, who = got
    item_id = str(form.get("item_id") or "")
    try:
        await run_in_threadpool(lambda: adjudication.record_verdict(
            web.store, who.id, item_id=item_id, choice=str(form.get("choice") or ""),
            comment=str(form.get("comment") or "")))
    except QueueError as e:
        return await _adjudicate_page(web, request, session, who, status=e.status,
                                      error=str(e))
    return RedirectResponse("/admin/adjudicate", status_code=303)
