"""The queue's smaller defects of issue 17 (item 7), each pinned over real HTTP on SQLite and
PostgreSQL (`store_url`) or in real Chromium: strict JSON types and unknown fields, a web
comment over the limit, expired leases purged, `queue.db` mode 0600, a cookie-less GET that
must not sign the browser out, bidi controls in text, very long responses, and the per-IP
limit on failed authentication."""

from __future__ import annotations

import re
import stat
import time

import pytest
from alignloop.labeling.handoff import QueueItem
from alignloop.labeling.queue.leases import MAX_COMMENT, PURGE_AFTER
from alignloop.labeling.queue.store import QueueStore

from .queue_helpers import label_count
from .test_queue_browser import _sign_in as _browser_sign_in
from .test_queue_browser import browser  # noqa: F401 (the fixture)
from .test_queue_hardening import COOKIE, LOGIN_COOKIE, _csrf, _http, _items, _label_body, _sign_in

RLO = "\u202e"


@pytest.fixture
def site(store_url, serve_queue):
    store = QueueStore(store_url)
    tokens = {"ann": store.add_annotator("ann")}
    store.submit(_items(6))
    yield store, serve_queue(store, auth_cache_seconds=0, auth_failures=5), tokens
    store.close()


@pytest.mark.parametrize("field,value", [("confidence", "3"), ("confidence", True),
                                         ("confidence", "2"), ("choice", 1),
                                         ("item_id", 7), ("shoe_size", 42)])
def test_label_fields_are_strict_and_unknown_fields_refused(site, field, value):
    store, url, tokens = site
    item = _http(url, "POST", "/api/next", token=tokens["ann"]).json()
    answer = _http(url, "POST", "/api/labels", token=tokens["ann"],
                   body={**_label_body(item), field: value})
    assert answer.status == 422, answer
    body = answer.json()
    assert body["field"] == field and field in body["detail"]
    assert [e["field"] for e in body["errors"]] == [field]
    assert label_count(store, 0) == 0
    ok = _http(url, "POST", "/api/labels", token=tokens["ann"], body=_label_body(item))
    assert ok.status == 201 and label_count(store, 0) == 1


def test_web_comment_over_the_limit_is_422_not_cut(site):
    store, url, tokens = site
    cookie = _sign_in(url, tokens["ann"])
    page = _http(url, "GET", "/label", cookie=cookie)
    fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', page.text))
    answer = {**fields, "slot": "left", "confidence": "2", "comment": "x" * (MAX_COMMENT + 1)}
    refused = _http(url, "POST", "/label", form=answer, cookie=cookie)
    assert refused.status == 422 and "comment" in refused.text and label_count(store, 0) == 0
    kept = _http(url, "POST", "/label", form={**answer, "comment": "x" * MAX_COMMENT},
                 cookie=cookie)
    assert kept.status == 303 and label_count(store, 0) == 1
    assert store.export_raw()[0]["comment"] == "x" * MAX_COMMENT


def test_expired_leases_are_purged_and_labeled_ones_kept(store_url):
    now = [1_000_000.0]
    with QueueStore(store_url, clock=lambda: now[0]) as store:
        store.submit(_items(3))
        ann = store.authenticate(store.add_annotator("ann")).id
        done = store.next_item(ann, lease_seconds=60)
        store.record_label(ann, item_id=done.item.item_id, lease_id=done.lease_id,
                           choice="a", idempotency_key="k1")
        store.next_item(ann, lease_seconds=60)           # abandoned
        now[0] += 60 + PURGE_AFTER - 1
        assert store.read("SELECT COUNT(*) FROM leases")[0][0] == 2   # not old enough yet
        now[0] += 2
        store.next_item(ann, lease_seconds=60)           # purges on the way (then leases)
        rows = store.read("SELECT lease_id, completed_at FROM leases ORDER BY issued_at")
        assert rows[0].lease_id == done.lease_id and rows[0].completed_at is not None
        assert len(rows) == 2 and rows[1].completed_at is None     # the new one, not the old
        assert len(store.export_raw()) == 1


def test_queue_db_is_created_0600(tmp_path):
    with QueueStore.open(tmp_path / "run") as store:
        store.add_annotator("ann")
        for name in ("queue.db", "queue.db-wal"):
            path = tmp_path / "run" / name
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name


def test_a_get_without_the_cookie_keeps_the_session(site):
    """A cross-site link arrives without the SameSite=Strict cookie: the answers (the
    redirect and the sign-in page) must not replace the session cookie the browser holds."""
    store, url, tokens = site
    cookie = _sign_in(url, tokens["ann"])
    bare = _http(url, "GET", "/label")
    assert bare.status == 303 and COOKIE not in bare.cookies
    landing = _http(url, "GET", bare.location)
    assert landing.status == 200 and COOKIE not in landing.cookies
    assert LOGIN_COOKIE in landing.cookies                   # the sign-in form's own
    assert _http(url, "GET", "/label", cookie=cookie).status == 200   # still signed in


def test_failed_sign_ins_and_401s_are_limited_per_ip(site):
    store, url, tokens = site
    for _ in range(3):
        assert _http(url, "POST", "/api/next", token="guess").status == 401
    first = _http(url, "GET", "/")
    form = {"csrf": _csrf(first.text), "token": "guess"}
    login = {LOGIN_COOKIE: first.cookies[LOGIN_COOKIE]}
    for _ in range(2):
        assert _http(url, "POST", "/login", form=form, cookies=login).status == 401
    page = _http(url, "POST", "/login", form={**form, "token": tokens["ann"]}, cookies=login)
    assert page.status == 429 and 1 <= int(page.headers["retry-after"]) <= 60
    api = _http(url, "POST", "/api/next", token=tokens["ann"])   # a right token waits too
    assert api.status == 429 and api.json()["detail"].startswith("too many")
    assert int(api.headers["retry-after"]) >= 1


def test_a_burst_of_guesses_is_limited_like_guesses_one_by_one(site):
    """30 wrong tokens sent at once from one address: only the limit's 5 reach the
    database (the others saw no recorded failure yet when they were checked, before the
    gate), while 12 right tokens at once, another time, all get through."""
    from concurrent.futures import ThreadPoolExecutor

    store, url, tokens = site
    more = {f"ok{i}": store.add_annotator(f"ok{i}") for i in range(11)}
    good = [tokens["ann"], *more.values()]
    with ThreadPoolExecutor(12) as pool:
        assert {r.status for r in pool.map(
            lambda t: _http(url, "POST", "/api/next", token=t), good)} <= {200, 204}
        statuses = list(pool.map(lambda _: _http(url, "POST", "/api/next",
                                                 token="guess").status, range(30)))
    assert statuses.count(401) == 5 and statuses.count(429) == 25, statuses


def test_the_failure_table_forgets_old_addresses_first_never_all(monkeypatch):
    from alignloop.labeling.queue import deps

    failures = deps.Failures(limit=2, window=60)
    monkeypatch.setattr(deps.Failures, "MAX_IPS", 3)
    now = [0.0]
    monkeypatch.setattr(deps.time, "monotonic", lambda: now[0])
    for t, ip in ((0, "old"), (1, "a"), (100, "b"), (101, "c")):
        now[0] = t
        failures.failed(ip)                # at "c" the table is full: both aged-out go
    assert list(failures.seen) == ["b", "c"]
    for t, ip in ((102, "d"), (103, "e")):
        now[0] = t
        failures.failed(ip)                # at "e": full, none aged out: only "b" goes
    assert list(failures.seen) == ["c", "d", "e"]


def test_the_sign_in_cookie_expires_after_its_own_hour(monkeypatch):
    """The sign-in form's cookie is set for an hour; read back, it was trusted for the
    session's 12 hours."""
    import itsdangerous.timed
    from alignloop.labeling.queue import deps
    from starlette.requests import Request

    sessions = deps.Sessions(b"k" * 32, secure=False)
    signed = sessions.serializer.dumps({"sid": "s1"})
    later = int(time.time()) + 2 * 3600
    monkeypatch.setattr(itsdangerous.timed.TimestampSigner, "get_timestamp", lambda self: later)

    def read(cookie: str):
        request = Request({"type": "http", "headers": [
            (b"cookie", f"{cookie}={signed}".encode())]})
        return sessions.read(request, cookie)

    assert read(deps.COOKIE) == {"sid": "s1"}              # 2 h: within the session's 12
    assert read(deps.LOGIN_COOKIE) is None                 # past the sign-in form's hour


# --------------------------------------------------------------------------- in Chromium


@pytest.fixture
def hostile_page(tmp_path, serve_queue):
    store = QueueStore.open(tmp_path)
    token = store.add_annotator("ada")
    words = ("a response that goes on and on " * 7 + "\n") * 900       # ~200 KB
    store.submit([QueueItem("big", 0, f"Rate {RLO}these two", words + "end",
                            f"abc{RLO}def", votes_required=1, max_votes=1)])
    yield store, serve_queue(store), token
    store.close()


@pytest.mark.parametrize("width,height", [(1280, 800), (390, 844)])
def test_bidi_controls_are_isolated_and_long_text_keeps_buttons_on_screen(
        browser, hostile_page, width, height):  # noqa: F811
    store, url, token = hostile_page
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    t0 = time.perf_counter()
    _browser_sign_in(page, url, token)
    page.wait_for_load_state("load")
    assert page.locator("button[value=left]").is_visible()
    elapsed = time.perf_counter() - t0
    assert elapsed < 10, f"a 200 KB item took {elapsed:.1f} s to show"
    for button in ("left", "right", "tie", "both_bad"):     # on screen without scrolling
        box = page.locator(f"button[value={button}]").bounding_box()
        assert box["y"] >= 0 and box["y"] + box["height"] <= height, (button, box)
    blocks = page.locator(".text")
    assert blocks.count() == 3
    for i in range(3):
        block = blocks.nth(i)
        assert block.get_attribute("dir") == "auto"
        assert block.evaluate("e => getComputedStyle(e).unicodeBidi") == "isolate"
    # U+202E is shown as a mark, not applied: "def" still reads left to right
    short = page.locator(".text", has_text="abc")
    assert RLO not in short.inner_text() and "U+202E" in short.inner_text()
    xs = short.evaluate("""e => { const t = e.lastChild, r = document.createRange();
        return [0, 1, 2].map(i => { r.setStart(t, i); r.setEnd(t, i + 1);
                                   return r.getBoundingClientRect().x; }); }""")
    assert xs == sorted(xs) and xs[0] < xs[2], xs
    page.screenshot(path=str(store.url.removeprefix("sqlite:///")) + f".{width}.png")
    context.close()


def test_a_cross_site_link_to_label_does_not_sign_out(browser, hostile_page):  # noqa: F811
    """From a page of another site (localhost is not 127.0.0.1), a link to /label arrives
    without the SameSite=Strict cookie; the browser must keep its session all the same."""
    store, url, token = hostile_page
    context = browser.new_context()
    page = context.new_page()
    _browser_sign_in(page, url, token)
    session = next(c["value"] for c in context.cookies() if c["name"] == COOKIE)
    page.goto(url.replace("127.0.0.1", "localhost") + "/")          # another site
    with page.expect_navigation():
        page.evaluate(f"location.href = {url + '/label'!r}")         # its link to us
    assert page.url == url + "/"              # no cookie came along: the sign-in page
    assert [c["value"] for c in context.cookies() if c["name"] == COOKIE] == [session]
    page.click("text=Continue labeling")      # a same-site link: the session is there
    page.wait_for_url(url + "/label")
    assert page.locator("button[value=left]").is_visible()
    context.close()
