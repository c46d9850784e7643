"""The labeling page in a real browser: Playwright driving Debian's Chromium (headless,
`/usr/bin/chromium`; Playwright's own browser downloads are not used). Without Chromium
or Playwright the tests skip, or fail when CI is set (CI must run them)."""

from __future__ import annotations

import os
import shutil

import pytest
from alignloop.labeling.handoff import QueueItem
from alignloop.labeling.queue.store import QueueStore

from .queue_helpers import disable, label_count

CHROMIUM = os.environ.get("ALIGNLOOP_CHROMIUM", "/usr/bin/chromium")
HOSTILE = "<script>window.pwned=1</script> and <b>bold</b>"


def _require_browser():
    problem = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = "playwright is not installed (pip install playwright)"
    if problem is None and not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        problem = f"{CHROMIUM} not found (apt-get install -y chromium)"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"{problem}; CI must run the browser tests", pytrace=False)
        pytest.skip(problem)


@pytest.fixture(scope="module")
def browser():
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        b.new_context = _fast_failing(b.new_context)
        yield b
        b.close()


@pytest.fixture
def site(tmp_path, serve_queue):
    store = QueueStore.open(tmp_path)
    token = store.add_annotator("ada")
    chat = [{"role": "system", "content": "Be kind."},
            {"role": "user", "content": HOSTILE}]
    store.submit([QueueItem(f"item-{i}", 0, chat if i == 0 else f"Prompt {i}: {HOSTILE}",
                            f"first answer {i} <img src=x onerror=window.pwned=2>",
                            f"second answer {i}", votes_required=1, max_votes=1)
                  for i in range(3)])
    url = serve_queue(store)
    yield store, url, token
    store.close()


def _fast_failing(new_context):
    """Contexts whose waits fail after 10 s instead of Playwright's 30 s."""
    def make(**kwargs):
        context = new_context(**kwargs)
        context.set_default_timeout(10_000)
        return context
    return make


def _sign_in(page, url: str, token: str) -> None:
    page.goto(url + "/")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(url + "/label")


def _labeled(page) -> int:
    return int(page.get_attribute("#progress", "data-labeled"))


def test_sign_in_label_three_items_with_the_keyboard(browser, site):
    store, url, token = site
    context = browser.new_context()
    page = context.new_page()
    page.goto(url + "/label")
    assert page.url == url + "/"   # not signed in: back to the sign-in page
    page.fill("#token", "wrong-token")
    page.click("button[type=submit]")
    assert "not valid" in page.inner_text(".error")
    _sign_in(page, url, token)
    assert _labeled(page) == 0 and "0 labeled" in page.inner_text("#progress")
    shown = []
    for n, key in enumerate(["1", "2", "3"], start=1):
        shown.append((page.input_value("input[name=item_id]"),
                      page.input_value("input[name=display_order]"),
                      page.inner_text("#response-left .text")))
        with page.expect_navigation():
            page.keyboard.press(key)
        if n < 3:
            assert _labeled(page) == n and f"{n} labeled" in page.inner_text("#progress")
    assert page.locator("#done").is_visible() and _labeled(page) == 3
    assert page.inner_text("#why") == "Nothing to label: every item has its votes."
    votes = {v.item_id: v for v in store.votes(0)}
    assert len(votes) == 3 and all(v.annotator == "ada" for v in votes.values())
    for (item_id, order, left_text), key in zip(shown, ["1", "2", "3"], strict=True):
        v = votes[item_id]
        assert v.display_order == order
        # the choice is relative to the item's a/b whatever side it was shown on
        expected = {"1": order[0], "2": order[1], "3": "tie"}[key]
        assert v.choice == expected and v.confidence == 2
        assert left_text.startswith("first" if order == "ab" else "second")
    disable(store, "ada")   # a disabled annotator's web session ends at once
    page.goto(url + "/label")
    assert page.url == url + "/" and page.locator("#token").is_visible()
    context.close()


def test_prompt_and_responses_are_shown_as_text_and_run_nothing(browser, site):
    store, url, token = site
    context = browser.new_context()
    page = context.new_page()
    _sign_in(page, url, token)
    prompt = page.inner_text("section.prompt")
    assert HOSTILE in prompt
    assert page.locator("section.prompt b").count() == 0
    assert page.locator("section.prompt script, .response script, .response img").count() == 0
    assert "<img src=x onerror=window.pwned=2>" in page.inner_text(".pair")
    assert page.evaluate("typeof window.pwned") == "undefined"
    # chat prompts are rendered as turns (item-0, the first queued, is a chat)
    assert page.input_value("input[name=item_id]") == "item-0"
    assert page.locator(".turn").count() == 2
    assert page.inner_text(".turn-system .role").lower() == "system"
    assert page.inner_text(".turn-user .text") == HOSTILE
    context.close()


def test_post_without_csrf_token_is_refused(browser, site):
    store, url, token = site
    context = browser.new_context()
    page = context.new_page()
    _sign_in(page, url, token)
    fields = {n: page.input_value(f"input[name={n}]")
              for n in ("item_id", "lease_id", "display_order", "order_sig", "idempotency_key")}
    answer = {**fields, "slot": "left", "confidence": "2"}
    r = page.request.post(url + "/label", form=answer)   # the session cookie, no CSRF token
    assert r.status == 403
    r = page.request.post(url + "/label", form={**answer, "csrf": "forged"})
    assert r.status == 403
    assert page.request.post(url + "/logout", form={}).status == 403
    assert label_count(store, 0) == 0
    csrf = page.input_value("input[name=csrf]")
    r = page.request.post(url + "/label", form={**answer, "csrf": csrf, "slot": "right",
                                                "display_order": "ab" if fields["display_order"] == "ba" else "ba"})
    assert r.status == 400 and label_count(store, 0) == 0   # a tampered display order
    r = page.request.post(url + "/label", form={**answer, "csrf": csrf})
    assert r.ok and label_count(store, 0) == 1
    context.close()


def test_phone_width_stacks_the_responses_and_cookie_flags(browser, site):
    store, url, token = site
    context = browser.new_context(viewport={"width": 375, "height": 800})
    page = context.new_page()
    _sign_in(page, url, token)
    left, right = page.locator("#response-left"), page.locator("#response-right")
    assert left.is_visible() and right.is_visible()
    a, b = left.bounding_box(), right.bounding_box()
    assert b["y"] >= a["y"] + a["height"] - 1   # stacked, not side by side
    assert a["x"] >= 0 and a["x"] + a["width"] <= 375 and b["x"] + b["width"] <= 375
    assert page.evaluate("document.documentElement.scrollWidth") <= 375   # no sideways scroll
    cookie = next(c for c in context.cookies() if c["name"] == "alignloop_session")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""
    wide = browser.new_context(viewport={"width": 1200, "height": 800})
    page = wide.new_page()
    _sign_in(page, url, token)
    a = page.locator("#response-left").bounding_box()
    b = page.locator("#response-right").bounding_box()
    assert abs(a["y"] - b["y"]) < 1 and b["x"] > a["x"] + a["width"]   # side by side
    wide.close()
    context.close()
