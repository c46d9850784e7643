"""A reviewer in a real browser (Playwright + Debian's Chromium, as in
test_queue_team_browser.py), at desktop width and at 390 px: the navigation offers
labeling and adjudication but no dashboard, the dashboard answers 403, and a verdict
recorded on the adjudication page is stored and outweighs the votes. Screenshots go to
$ALIGNLOOP_SHOTS (default /tmp/h/shots) for a person to look at."""

from __future__ import annotations

import pytest
from alignloop.labeling.queue import adjudication

from .test_queue_browser import HOSTILE, _sign_in, browser  # noqa: F401 (a fixture)
from .test_queue_team_browser import WIDTHS, _dispute, _fits, _shot, team_site  # noqa: F401


@pytest.mark.parametrize("size", list(WIDTHS))
def test_reviewer_records_a_verdict(browser, team_site, size):  # noqa: F811
    store, url, tokens = team_site
    tokens["rita"] = store.add_annotator("rita", "reviewer")
    item_id = _dispute(store, tokens)
    width = WIDTHS[size]["width"]
    context = browser.new_context(viewport=WIDTHS[size])
    page = context.new_page()
    _sign_in(page, url, tokens["rita"])
    nav = page.locator(".admin-nav a")
    assert [nav.nth(i).get_attribute("href") for i in range(nav.count())] == [
        "/label", "/admin/adjudicate"]
    assert page.locator("input[name=item_id]").count() == 1      # she labels too
    _fits(page, width)
    _shot(page, f"reviewer-label-{size}")
    response = page.goto(url + "/admin")
    assert response.status == 403 and "Admins only" in page.inner_text("main")
    page.goto(url + "/label")
    page.click(".admin-nav a[href='/admin/adjudicate']")
    page.wait_for_url(url + "/admin/adjudicate")
    card = page.locator(f"article[data-item='{item_id}']")
    text = card.inner_text()
    assert all(f"{name} thinks" in text for name in ("ada", "bob", "cy"))
    assert HOSTILE in text and page.evaluate("typeof window.pwned") == "undefined"
    _fits(page, width)
    buttons = card.locator(".choices button")
    for i in range(buttons.count()):          # every verdict button on screen, none cut
        box = buttons.nth(i).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= width
    _shot(page, f"reviewer-adjudicate-{size}")
    card.locator("input[name=comment]").fill("cy is right: a dodges")
    with page.expect_navigation():
        card.locator("button[value=b]").click()
    verdict = page.locator(f"article[data-item='{item_id}'] .verdict").inner_text()
    assert "Verdict: b by rita" in verdict and "cy is right" in verdict
    stored = adjudication.verdicts(store)[item_id]
    assert (stored["reviewer"], stored["choice"]) == ("rita", "b")
    (pair,) = [p for p in store.export_pairs() if p.prompt.startswith("Prompt 0")]
    assert pair.chosen == "second answer 0"          # the verdict outweighs two votes
    _fits(page, width)
    _shot(page, f"reviewer-after-verdict-{size}")
    context.close()


def test_nav_follows_a_role_change_in_an_open_session(browser, team_site):  # noqa: F811
    """`queue set-role` while the admin's page is open: the next page's nav has the new
    role's links (no Dashboard for a reviewer, none for an annotator), same session."""
    from alignloop.labeling.queue import accounts

    store, url, tokens = team_site
    context = browser.new_context(viewport=WIDTHS["desktop"])
    page = context.new_page()
    _sign_in(page, url, tokens["boss"])

    def nav() -> list[str]:
        page.goto(url + "/label")
        links = page.locator(".admin-nav a")
        return [links.nth(i).get_attribute("href") for i in range(links.count())]

    assert nav() == ["/label", "/admin", "/admin/adjudicate"]
    store.transaction(lambda c: accounts.set_role(c, "boss", "reviewer"))
    assert nav() == ["/label", "/admin/adjudicate"]
    store.transaction(lambda c: accounts.set_role(c, "boss", "annotator"))
    assert nav() == [] and page.locator("input[name=item_id]").count() == 1
    context.close()
