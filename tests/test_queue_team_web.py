"""The team features over real HTTP (uvicorn on loopback; SQLite and PostgreSQL): the skip
and guideline API, the page's skip form, and the admin pages' refusals (anonymous users,
annotators: 403, missing CSRF token: 403) and actions (add, rotate, disable, guideline,
verdict), with all text escaped."""

from __future__ import annotations

import re

import httpx
import pytest
from alignloop.labeling.handoff import QueueItem
from alignloop.labeling.queue import adjudication, guidelines
from alignloop.labeling.queue.store import QueueStore

HOSTILE = "<script>window.pwned=1</script>"


@pytest.fixture
def site(store_url, serve_queue):
    store = QueueStore(store_url, seed=1)
    tokens = {"ann": store.add_annotator("ann"), "bea": store.add_annotator("bea"),
              "boss": store.add_annotator("boss", "admin")}
    store.submit([QueueItem(f"it{i}", 0, f"prompt {i} {HOSTILE}", f"a{i}", f"b{i}",
                            votes_required=3, max_votes=3) for i in range(3)])
    url = serve_queue(store, auth_cache_seconds=0)
    yield store, url, tokens
    store.close()


def _api(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def _csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def _browser(url: str, token: str | None) -> tuple[httpx.Client, str]:
    """A cookie-keeping client, signed in with `token` (None: anonymous), and the CSRF
    token of its current page."""
    c = httpx.Client(base_url=url, timeout=10)
    page = c.get("/")
    if token is None:
        return c, _csrf(page.text)
    r = c.post("/login", data={"token": token, "csrf": _csrf(page.text)})
    assert r.status_code == 303
    page = c.get("/label")
    return c, _csrf(page.text)


def test_api_skip_and_guidelines(site):
    store, url, tokens = site
    ann = _api(url, tokens["ann"])
    assert ann.get("/api/guidelines").json() == {"guideline": None}
    guidelines.set_guideline(store, "Be **fair**.")
    g = ann.get("/api/guidelines", params={"round": 0}).json()["guideline"]
    assert g == {"version": 1, "round": None, "body": "Be **fair**."}   # the queue's: null
    job = ann.post("/api/next").json()
    body = {"item_id": job["item_id"], "lease_id": job["lease_id"], "reason": "offensive"}
    assert ann.post("/api/skip", json={**body, "reason": "bored"}).status_code == 422
    assert ann.post("/api/skip", json={**body, "extra": 1}).status_code == 422
    assert ann.post("/api/skip", json={**body, "lease_id": "x"}).status_code == 404
    assert httpx.post(url + "/api/skip", json=body).status_code == 401
    r = ann.post("/api/skip", json=body)
    assert r.status_code == 201 and r.json()["created"] is True
    assert ann.post("/api/skip", json=body).status_code == 200   # replay
    nxt = ann.post("/api/next").json()
    assert nxt["item_id"] != job["item_id"]
    bea = _api(url, tokens["bea"]).post("/api/next").json()
    assert bea["item_id"] == job["item_id"]     # the skipped item went to someone else


def test_admin_pages_refuse_anonymous_and_annotators(site):
    store, url, tokens = site
    anon, anon_csrf = _browser(url, None)
    for path in ("/admin", "/admin/adjudicate"):
        r = anon.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/"
    ann, csrf = _browser(url, tokens["ann"])
    for path, title in (("/admin", "Admins only"), ("/admin/adjudicate", "Reviewers only")):
        r = ann.get(path)
        assert r.status_code == 403 and title in r.text
    posts = [("/admin/annotators", {"action": "add", "name": "mallory"}),
             ("/admin/annotators", {"action": "disable", "name": "bea"}),
             ("/admin/guidelines", {"body": "pwned"}),
             ("/admin/adjudicate", {"item_id": "it0", "choice": "a"})]
    for path, form in posts:
        assert ann.post(path, data={**form, "csrf": csrf}).status_code == 403   # not admin
        assert anon.post(path, data={**form, "csrf": anon_csrf}).status_code == 403
    boss, boss_csrf = _browser(url, tokens["boss"])
    for path, form in posts:
        assert boss.post(path, data=form).status_code == 403      # no CSRF token
    assert [a.name for a in store.annotators()] == ["ann", "bea", "boss"]
    assert guidelines.current(store) is None and adjudication.verdicts(store) == {}


def test_admin_manages_annotators_guidelines_and_verdicts(site):
    store, url, tokens = site
    boss, csrf = _browser(url, tokens["boss"])
    page = boss.get("/admin")
    assert page.status_code == 200 and "Progress per round" in page.text
    r = boss.post("/admin/annotators", data={"csrf": csrf, "action": "add",
                                             "name": "<i>eve</i>"})
    assert r.status_code == 200 and "&lt;i&gt;eve&lt;/i&gt;" in r.text and "<i>eve" not in r.text
    token = re.search(r'<code class="token">([^<]+)</code>', r.text).group(1)
    assert store.authenticate(token).name == "<i>eve</i>"
    r = boss.post("/admin/annotators", data={"csrf": csrf, "action": "rotate", "name": "ann"})
    new = re.search(r'<code class="token">([^<]+)</code>', r.text).group(1)
    assert store.authenticate(tokens["ann"]) is None and store.authenticate(new).name == "ann"
    r = boss.post("/admin/annotators", data={"csrf": csrf, "action": "disable", "name": "bea"})
    assert r.status_code == 303 and store.authenticate(tokens["bea"]) is None
    r = boss.post("/admin/annotators", data={"csrf": csrf, "action": "disable", "name": "boss"})
    assert r.status_code == 409                       # not yourself
    r = boss.post("/admin/guidelines", data={"csrf": csrf, "body": f"# Rules\n{HOSTILE}"})
    assert r.status_code == 303 and guidelines.current(store).author == "boss"
    page = boss.get("/admin").text
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in page and HOSTILE not in page
    assert boss.post("/admin/guidelines", data={"csrf": csrf, "body": "x", "round": "-2"}
                     ).status_code == 422
    # a disputed item: ann (new token) says a, eve says b
    for tok, choice in ((new, "a"), (token, "b")):
        api = _api(url, tok)
        job = api.post("/api/next").json()
        assert job["item_id"] == "it0", job      # both label it0 (queue order: it0 first)
        assert api.post("/api/labels", json={
            "item_id": "it0", "lease_id": job["lease_id"], "choice": choice,
            "confidence": 2, "idempotency_key": f"k-{choice}",
            "comment": HOSTILE}).status_code == 201
    page = boss.get("/admin/adjudicate").text
    assert 'data-item="it0"' in page and HOSTILE not in page
    assert page.count("&lt;script&gt;window.pwned=1&lt;/script&gt;") >= 3   # prompt + comments
    r = boss.post("/admin/adjudicate", data={"csrf": csrf, "item_id": "it0", "choice": "b",
                                             "comment": "b is right"})
    assert r.status_code == 303
    assert adjudication.verdicts(store)["it0"]["choice"] == "b"
    assert boss.post("/admin/adjudicate", data={"csrf": csrf, "item_id": "it0",
                                                "choice": "maybe"}).status_code == 422


def test_page_skip_form_needs_csrf_and_an_untampered_item(site):
    store, url, tokens = site
    guidelines.set_guideline(store, "Judge **facts** first.")
    ann, csrf = _browser(url, tokens["ann"])
    page = ann.get("/label").text
    assert "Guidelines" in page and "<strong>facts</strong>" in page and "version 1" in page
    fields = {n: re.search(rf'name="{n}" value="([^"]*)"', page).group(1)
              for n in ("item_id", "lease_id", "display_order", "order_sig")}
    form = {**fields, "reason": "cant_judge", "comment": "no idea"}
    assert ann.post("/label/skip", data=form).status_code == 403
    assert ann.post("/label/skip", data={**form, "csrf": csrf,
                                         "order_sig": "0" * 64}).status_code == 400
    r = ann.post("/label/skip", data={**form, "csrf": csrf, "reason": "nope"})
    assert r.status_code == 422
    r = ann.post("/label/skip", data={**form, "csrf": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/label?note=skipped"
    nxt = ann.get("/label?note=skipped").text
    assert "goes to someone else" in nxt
    assert f'value="{fields["item_id"]}"' not in nxt
