"""The labeling page for people: sign in with a token (`/`, `/login`, `/logout`), then
`/label` shows one item at a time and takes the answer as a form POST.

Every form carries the session's CSRF token (checked on every POST: 403 otherwise); the
sign-in form's session is a cookie of its own (`deps.LOGIN_COOKIE`), so that no GET ever
replaces the signed-in session cookie (a cross-site link arrives without it).
A signed-in session must also still stand in the store (`QueueWeb.signed_in`) on every
request; signing out ends it there.
The two responses are shown in the assignment's display order; the hidden `order_sig`
lets the server map the clicked side (left/right) back to a/b without trusting the
browser or looking the lease up (see `app` for the whole design).
"""

from __future__ import annotations

import uuid

from alignloop.labeling.queue import guidelines
from alignloop.labeling.queue.contract import PAGES
from alignloop.labeling.queue.controls import bidi_segments
from alignloop.labeling.queue.deps import (
    LOGIN_COOKIE,
    SESSION_MAX_AGE,
    QueueWeb,
    Web,
    client_ip,
    new_session,
)
from alignloop.labeling.queue.skips import REASONS
from alignloop.labeling.queue.stats import nothing_left, waiting_items
from alignloop.labeling.queue.store import AnnotatorAccount, Assignment, QueueError
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

router = APIRouter()

SLOTS = ("left", "right", "tie", "both_bad")
NOTES = {"conflict": "That item was already settled; here is the next one.",
         "gone": "That item is no longer in the queue; here is the next one.",
         "skipped": "Skipped; that item goes to someone else. Here is the next one."}
FORM_FIELDS = ("item_id", "lease_id", "display_order", "order_sig", "slot", "confidence",
               "comment", "idempotency_key")


def _turns(prompt) -> list[dict]:
    """A prompt as turns for the template: chat messages, or one block of plain text."""
    if isinstance(prompt, str):
        return [{"role": "prompt", "css": "user", "content": bidi_segments(prompt)}]
    out = []
    for m in prompt:
        role = str(m.get("role", "user")) if isinstance(m, dict) else "user"
        content = m.get("content", "") if isinstance(m, dict) else str(m)
        css = role if role in ("system", "user", "assistant") else "other"
        out.append({"role": role, "css": css, "content": bidi_segments(str(content))})
    return out


def _page(web: QueueWeb, request: Request, template: str, status: int = 200,
          **context) -> Response:
    return web.templates.TemplateResponse(request, template, context, status_code=status)


def _error(web: QueueWeb, request: Request, status: int, title: str, message: str) -> Response:
    return _page(web, request, "error.html", status, title=title, message=message)


def _forbidden(web: QueueWeb, request: Request) -> Response:
    return _error(web, request, 403, "Form refused",
                  "This form has expired or did not come from this site. "
                  "Reload the page and try again.")


async def _posted_form(web: QueueWeb, request: Request, cookie: str | None = None):
    """(form, session) of a POSTed page form whose CSRF token matches its session (the
    session cookie, or `cookie`), else (None, None): the caller answers `_forbidden`."""
    form = await request.form()
    session = web.sessions.read(request, *(cookie,) if cookie else ())
    if not web.sessions.csrf_ok(session, form.get("csrf")):
        return None, None
    return form, session


def _signed_out(web: QueueWeb) -> Response:
    response = RedirectResponse("/", status_code=303)
    web.sessions.clear(response)
    return response


@router.get("/", **PAGES["GET /"])
async def index(request: Request, web: Web):
    session = web.sessions.read(request)
    if session and session.get("aid"):
        return RedirectResponse("/label", status_code=303)
    login = web.sessions.read(request, LOGIN_COOKIE)
    fresh = login is None
    login = login or new_session()
    response = _page(web, request, "index.html", csrf=web.sessions.csrf(login), error="")
    if fresh:   # never the session cookie: see the module docstring
        web.sessions.write(response, login, LOGIN_COOKIE)
    return response


@router.post("/login", **PAGES["POST /login"])
async def login(request: Request, web: Web):
    form, login = await _posted_form(web, request, LOGIN_COOKIE)
    if form is None:
        return _forbidden(web, request)
    ip = client_ip(request)
    async with web.failures.attempt(ip) as wait:   # see `Failures`: bursts count too
        if wait:
            response = _page(web, request, "index.html", 429, csrf=web.sessions.csrf(login),
                             error=f"Too many failed sign-ins. Try again in {wait} s.")
            response.headers["Retry-After"] = str(wait)
            return response
        token = str(form.get("token") or "").strip()
        annotator = await run_in_threadpool(web.store.authenticate, token) if token else None
        if annotator is None:
            web.failures.failed(ip)
            return _page(web, request, "index.html", 401, csrf=web.sessions.csrf(login),
                         error="That token is not valid.")
    # a new session id at sign-in: a session id planted before it is worth nothing
    # no role in the cookie: pages read it from the store (`QueueWeb.session_account`)
    session = new_session(aid=annotator.id, name=annotator.name)
    await run_in_threadpool(web.store.start_session, annotator.id, session["sid"],
                            SESSION_MAX_AGE)
    response = RedirectResponse("/label", status_code=303)
    web.sessions.write(response, session)
    web.sessions.clear(response, LOGIN_COOKIE)
    return response


@router.post("/logout", **PAGES["POST /logout"])
async def logout(request: Request, web: Web):
    form, session = await _posted_form(web, request)
    if form is None:
        return _forbidden(web, request)

    def end() -> None:   # on the server: a copy of the cookie opens nothing after this
        if session.get("aid") and web.signed_in(session):
            if session.get("lease"):
                web.store.release(session["aid"], session["lease"])
            web.store.end_session(session["sid"])

    await run_in_threadpool(end)
    return _signed_out(web)


def _show(web: QueueWeb, request: Request, session: dict, who: AnnotatorAccount,
          assignment: Assignment | None, labeled: int, note: str,
          guide: dict | None = None, why: str | None = None) -> Response:
    """The next item's page (or "done", saying `why`) for `who` (the store's account of the
    session: its role picks the nav links), with the session's lease updated to match;
    `guide` is the item's guideline (`guidelines.shown`)."""
    common = {"csrf": web.sessions.csrf(session), "name": who.name,
              "role": who.role, "labeled": labeled,
              "note": NOTES.get(note, ""), "guide": guide, "skip_reasons": REASONS}
    if assignment is None:
        response = _page(web, request, "done.html", **common, why=why)
        session = {k: v for k, v in session.items() if k != "lease"}
    else:
        it, order = assignment.item, assignment.display_order
        left, right = (it.a, it.b) if order == "ab" else (it.b, it.a)
        response = _page(web, request, "label.html", **common, turns=_turns(it.prompt),
                         left=bidi_segments(left), right=bidi_segments(right), item_id=it.item_id,
                         lease_id=assignment.lease_id, display_order=order,
                         order_sig=web.sessions.order_sig(assignment.lease_id, it.item_id, order),
                         idempotency_key=f"web-{uuid.uuid4().hex}")
        session = {**session, "lease": assignment.lease_id}
    web.sessions.write(response, session)
    return response


@router.get("/label", **PAGES["GET /label"])
async def label_page(request: Request, web: Web, note: str = ""):
    session = web.sessions.read(request)
    if not session or not session.get("aid"):
        return RedirectResponse("/", status_code=303)
    aid = session["aid"]

    def work():
        who = web.session_account(session)
        if who is None:
            return None
        if session.get("lease"):   # a reload: hand back the item on screen before
            web.store.release(aid, session["lease"])
        assignment = web.next_item(aid)
        why = None if assignment else nothing_left(waiting_items(web.store))
        return (who, assignment, web.store.labeled(aid), guidelines.shown(web.store, assignment),
                why)

    got = await run_in_threadpool(work)
    if got is None:
        return _signed_out(web)
    who, assignment, labeled, guide, why = got
    return _show(web, request, session, who, assignment, labeled, note, guide, why)


def _refusal(web: QueueWeb, f: dict[str, str]) -> tuple[str, str] | None:
    """(title, message) of why an answer form is refused, or None when it is sound."""
    if not web.sessions.order_ok(f["lease_id"], f["item_id"], f["display_order"],
                                 f["order_sig"]):
        return "Form altered", "The form did not match the item shown. Reload the page."
    if f["slot"] not in SLOTS or f["confidence"] not in ("1", "2", "3"):
        return "Incomplete answer", "Pick one of the four answers and a confidence of 1 to 3."
    return None


@router.post("/label", **PAGES["POST /label"])
async def label_submit(request: Request, web: Web):
    form, session = await _posted_form(web, request)
    if form is None:
        return _forbidden(web, request)
    if not session.get("aid"):
        return RedirectResponse("/", status_code=303)
    f = {k: str(form.get(k) or "") for k in FORM_FIELDS}
    refused = _refusal(web, f)
    if refused is not None:
        return _error(web, request, 400, *refused)
    choice = {"left": f["display_order"][0], "right": f["display_order"][1]}.get(
        f["slot"], f["slot"])
    if not await run_in_threadpool(web.signed_in, session):
        return _signed_out(web)
    try:
        await run_in_threadpool(
            lambda: web.store.record_label(
                session["aid"], item_id=f["item_id"], lease_id=f["lease_id"], choice=choice,
                confidence=int(f["confidence"]),
                idempotency_key=f["idempotency_key"] or f"web-{uuid.uuid4().hex}",
                comment=f["comment"]))   # too long: 422, like the API
    except QueueError as e:
        if e.status in (404, 409):
            return RedirectResponse(f"/label?note={'gone' if e.status == 404 else 'conflict'}",
                                    status_code=303)
        return _error(web, request, 422 if e.status == 422 else 400, "Not recorded", str(e))
    response = RedirectResponse("/label", status_code=303)
    web.sessions.write(response, {k: v for k, v in session.items() if k != "lease"})
    return response
