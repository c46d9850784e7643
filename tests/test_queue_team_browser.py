"""The team features in a real browser (Playwright + Debian's Chromium, as in
test_queue_browser.py): the guideline and skip on the labeling page, the admin dashboard
and adjudication, each at desktop width and at 390 px (a phone), with screenshots saved
to $ALIGNLOOP_SHOTS (default /tmp/h/shots) for a person to look at."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from alignloop.labeling.handoff import QueueItem
from alignloop.labeling.queue import adjudication, guidelines, skips
from alignloop.labeling.queue.store import QueueStore

from .test_queue_browser import HOSTILE, _sign_in, browser  # noqa: F401 (a fixture)

SHOTS = Path(os.environ.get("ALIGNLOOP_SHOTS", "/tmp/h/shots"))
WIDTHS = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}
GUIDE = f"# How to judge\n- Prefer **honest** answers\n- Code like `rm -rf` is bad\n\n{HOSTILE}"


@pytest.fixture
def team_site(tmp_path, serve_queue):
    store = QueueStore.open(tmp_path, seed=3)
    tokens = {n: store.add_annotator(n) for n in ("ada", "bob", "cy")}
    tokens["boss"] = store.add_annotator("boss", "admin")
    store.submit([QueueItem(f"item-{i}", 0, f"Prompt {i}: {HOSTILE}",
                            f"first answer {i} " + "long text " * 40, f"second answer {i}",
                            votes_required=3, max_votes=3) for i in range(4)])
    guidelines.set_guideline(store, GUIDE, author="boss")
    url = serve_queue(store)
    yield store, url, tokens
    store.close()


def _shot(page, name: str) -> None:
    """The whole page, and what the screen shows (sticky parts where a person sees them)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    page.screenshot(path=str(SHOTS / f"{name}-screen.png"))


def _fits(page, width: int) -> None:
    """Nothing wider than the viewport: no sideways scrolling of the page."""
    assert page.evaluate("document.documentElement.scrollWidth") <= width


@pytest.mark.parametrize("size", list(WIDTHS))
def test_guideline_and_skip_on_the_labeling_page(browser, team_site, size):  # noqa: F811
    store, url, tokens = team_site
    context = browser.new_context(viewport=WIDTHS[size])
    page = context.new_page()
    _sign_in(page, url, tokens["ada"])
    guide = page.locator("#guidelines")
    assert guide.is_visible() and "version 1" in page.inner_text("#guidelines summary")
    page.click("#guidelines summary")
    assert page.inner_text("#guidelines strong") == "honest"
    assert page.inner_text("#guidelines code") == "rm -rf"
    assert HOSTILE in page.inner_text("#guidelines")            # shown as text ...
    assert page.locator("#guidelines script").count() == 0      # ... never run
    assert page.evaluate("typeof window.pwned") == "undefined"
    _fits(page, WIDTHS[size]["width"])
    skip = page.locator("#skip")
    assert skip.is_visible()
    box = skip.bounding_box()
    assert box["x"] + box["width"] <= WIDTHS[size]["width"]
    _shot(page, f"label-guideline-skip-{size}")
    first = page.input_value("input[name=item_id]")
    page.select_option("#skip-reason", "needs_expertise")
    page.fill("#comment", "medical question")
    with page.expect_navigation():
        skip.click()
    assert "someone else" in page.inner_text(".note")
    assert page.input_value("input[name=item_id]") != first
    (recorded,) = skips.export_skips(store)
    assert (recorded["item_id"], recorded["annotator"], recorded["reason"],
            recorded["comment"]) == (first, "ada", "needs_expertise", "medical question")
    _shot(page, f"label-after-skip-{size}")
    context.close()


def _dispute(store, tokens) -> str:
    """item-0 voted a by ada and bob, b by cy (each comments)."""
    for name, choice in (("ada", "a"), ("bob", "a"), ("cy", "b")):
        who = store.authenticate(tokens[name])
        job = store.next_item(who.id)
        assert job.item.item_id == "item-0"
        store.record_label(who.id, item_id="item-0", lease_id=job.lease_id, choice=choice,
                           idempotency_key=f"k-{name}", comment=f"{name} thinks {choice} {HOSTILE}")
    return "item-0"


@pytest.mark.parametrize("size", list(WIDTHS))
def test_admin_dashboard_and_adjudication(browser, team_site, size):  # noqa: F811
    store, url, tokens = team_site
    item_id = _dispute(store, tokens)
    width = WIDTHS[size]["width"]
    annotator = browser.new_context(viewport=WIDTHS[size])
    page = annotator.new_page()
    _sign_in(page, url, tokens["ada"])
    assert page.locator(".admin-nav").count() == 0
    response = page.goto(url + "/admin")
    assert response.status == 403 and "Admins only" in page.inner_text("main")
    annotator.close()

    context = browser.new_context(viewport=WIDTHS[size])
    page = context.new_page()
    _sign_in(page, url, tokens["boss"])
    page.click(".admin-nav a[href='/admin']")
    page.wait_for_url(url + "/admin")
    assert page.inner_text("#total-labels") == "3"
    rows = page.locator("#annotators tr[data-name]")
    assert rows.count() == 4
    assert "1" in page.inner_text("#annotators tr[data-name=cy]")
    assert item_id in page.inner_text("#disputed")
    assert "honest" in page.inner_text("#guidelines .guide-preview strong")
    assert page.evaluate("typeof window.pwned") == "undefined"
    _fits(page, width)
    _shot(page, f"admin-dashboard-{size}")
    page.fill("#new-name", "dee")
    with page.expect_navigation():
        page.click("#add-annotator button[type=submit]")
    token = page.inner_text("#new-token code")
    assert store.authenticate(token).name == "dee"
    with page.expect_navigation():
        page.click("#annotators tr[data-name=bob] button[value=disable]")
    assert "(disabled)" in page.inner_text("#annotators tr[data-name=bob]")
    assert store.authenticate(tokens["bob"]) is None
    _fits(page, width)

    page.click(".admin-nav a[href='/admin/adjudicate']")
    page.wait_for_url(url + "/admin/adjudicate")
    card = page.locator(f"article[data-item='{item_id}']")
    assert card.is_visible()
    text = card.inner_text()
    for name in ("ada", "bob", "cy"):
        assert f"{name} thinks" in text
    assert HOSTILE in text and page.evaluate("typeof window.pwned") == "undefined"
    _fits(page, width)
    _shot(page, f"adjudicate-{size}")
    card.locator("input[name=comment]").fill("cy is right")
    with page.expect_navigation():
        card.locator("button[value=b]").click()
    assert "Verdict: b by boss" in page.locator(f"article[data-item='{item_id}'] .verdict"
                                                ).inner_text()
    assert adjudication.verdicts(store)[item_id]["comment"] == "cy is right"
    (pair,) = [p for p in store.export_pairs() if p.prompt.startswith("Prompt 0")]
    assert pair.chosen == "second answer 0"          # the verdict outweighs two votes
    _shot(page, f"adjudicate-after-verdict-{size}")
    context.close()
