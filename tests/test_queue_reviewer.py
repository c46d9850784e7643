"""The reviewer role over real HTTP (uvicorn on loopback; SQLite and PostgreSQL): a
reviewer labels like an annotator and adjudicates (page 200, verdict recorded and counted
as an adjudicated vote), but may not manage annotators, edit guidelines or open the
dashboard (403); a plain annotator may not adjudicate. The role is read from the store on
every request, so `queue set-role` applies at once. Also: the migration that allows the
role on a queue made before it, `queue add-annotator --role` and `queue set-role`."""

from __future__ import annotations

import re

import httpx
import pytest
from alignloop.cli import main
from alignloop.labeling.handoff import QueueItem
from alignloop.labeling.queue import accounts, adjudication, guidelines, migrations
from alignloop.labeling.queue.store import QueueError, QueueStore
from sqlalchemy import text

from .test_queue_team_web import _browser, _csrf


@pytest.fixture
def site(store_url, serve_queue):
    """Two annotators, a reviewer and an admin; item it0 voted a (ann) and b (bea)."""
    store = QueueStore(store_url, seed=1)
    tokens = {n: store.add_annotator(n, r) for n, r in (
        ("ann", "annotator"), ("bea", "annotator"), ("rev", "reviewer"), ("boss", "admin"))}
    store.submit([QueueItem(f"it{i}", 0, f"prompt {i}", f"a{i}", f"b{i}", votes_required=3,
                            max_votes=3) for i in range(3)])
    for name, choice in (("ann", "a"), ("bea", "b")):
        me = store.authenticate(tokens[name]).id
        job = store.next_item(me)
        assert job.item.item_id == "it0"
        store.record_label(me, item_id="it0", lease_id=job.lease_id, choice=choice,
                           confidence=2, idempotency_key=f"k-{name}", comment=f"{name} says")
    url = serve_queue(store, auth_cache_seconds=0)
    yield store, url, tokens
    store.close()


ADMIN_ONLY = [("/admin/annotators", {"action": "add", "name": "mallory"}),
              ("/admin/annotators", {"action": "add", "name": "mal2", "role": "admin"}),
              ("/admin/annotators", {"action": "disable", "name": "ann"}),
              ("/admin/annotators", {"action": "rotate", "name": "ann"}),
              ("/admin/guidelines", {"body": "reviewers rule"})]


def test_reviewer_adjudicates_but_does_not_administer(site):
    store, url, tokens = site
    rev, csrf = _browser(url, tokens["rev"])
    page = rev.get("/admin/adjudicate")
    assert page.status_code == 200 and 'data-item="it0"' in page.text
    assert "ann says" in page.text and "bea says" in page.text
    assert 'href="/admin/adjudicate"' in page.text and 'href="/admin"' not in page.text
    r = rev.post("/admin/adjudicate", data={"csrf": csrf, "item_id": "it0", "choice": "b",
                                            "comment": "b answers the question"})
    assert r.status_code == 303 and r.headers["location"] == "/admin/adjudicate"
    verdict = adjudication.verdicts(store)["it0"]
    assert (verdict["choice"], verdict["reviewer"]) == ("b", "rev")
    strong = [v for v in store.votes(0) if v.source == "adjudicated"]
    assert [(v.item_id, v.annotator, v.choice) for v in strong] == [("it0", "rev", "b")]
    # refused like any admin form: no CSRF token, an invalid choice, an unknown item
    assert rev.post("/admin/adjudicate", data={"item_id": "it0", "choice": "a"}
                    ).status_code == 403
    assert rev.post("/admin/adjudicate", data={"csrf": csrf, "item_id": "it0",
                                               "choice": "maybe"}).status_code == 422
    assert rev.post("/admin/adjudicate", data={"csrf": csrf, "item_id": "nope",
                                               "choice": "a"}).status_code == 404
    # ... but not the admin's pages
    r = rev.get("/admin")
    assert r.status_code == 403 and "Admins only" in r.text and "Progress per round" not in r.text
    for path, form in ADMIN_ONLY:
        r = rev.post(path, data={**form, "csrf": csrf})
        assert r.status_code == 403, (path, form)
    assert [(a.name, a.role) for a in store.annotators()] == [
        ("ann", "annotator"), ("bea", "annotator"), ("rev", "reviewer"), ("boss", "admin")]
    assert store.authenticate(tokens["ann"]) is not None and guidelines.current(store) is None
    r = httpx.get(url + "/api/status", headers={"Authorization": f"Bearer {tokens['rev']}"})
    assert r.status_code == 403
    assert adjudication.verdicts(store)["it0"]["choice"] == "b"   # the refusals changed nothing


def test_reviewer_labels_like_an_annotator(site):
    store, url, tokens = site
    rev, csrf = _browser(url, tokens["rev"])
    page = rev.get("/label").text
    fields = {n: re.search(rf'name="{n}" value="([^"]*)"', page).group(1)
              for n in ("item_id", "lease_id", "display_order", "order_sig",
                        "idempotency_key")}
    r = rev.post("/label", data={**fields, "csrf": _csrf(page), "slot": "left",
                                 "confidence": "3", "comment": ""})
    assert r.status_code == 303 and r.headers["location"] == "/label"
    mine = [v for v in store.votes(0) if v.annotator == "rev"]
    assert [(v.item_id, v.source) for v in mine] == [(fields["item_id"], "human")]
    assert mine[0].choice == fields["display_order"][0]    # left = the first shown


def test_an_annotator_may_not_adjudicate(site):
    store, url, tokens = site
    ann, csrf = _browser(url, tokens["ann"])
    r = ann.get("/admin/adjudicate")
    assert r.status_code == 403 and "Reviewers only" in r.text and "ann says" not in r.text
    assert ann.post("/admin/adjudicate", data={"csrf": csrf, "item_id": "it0",
                                               "choice": "a"}).status_code == 403
    assert 'href="/admin/adjudicate"' not in ann.get("/label").text
    assert adjudication.verdicts(store) == {}


def _nav(client: httpx.Client) -> list[str]:
    """The nav links of the session's labeling page (a fresh GET /label)."""
    page = client.get("/label")
    assert page.status_code == 200
    nav = re.search(r'<nav class="admin-nav">(.*?)</nav>', page.text)
    return re.findall(r'href="([^"]+)"', nav.group(1)) if nav else []


def test_a_role_change_applies_to_the_next_request(site):
    store, url, tokens = site
    ann, csrf = _browser(url, tokens["ann"])
    rev, rev_csrf = _browser(url, tokens["rev"])
    boss, _ = _browser(url, tokens["boss"])
    assert ann.get("/admin/adjudicate").status_code == 403
    assert (_nav(ann), _nav(rev)) == ([], ["/label", "/admin/adjudicate"])
    assert _nav(boss) == ["/label", "/admin", "/admin/adjudicate"]
    assert store.transaction(lambda c: accounts.set_role(c, "ann", "reviewer")) == "annotator"
    assert store.transaction(lambda c: accounts.set_role(c, "rev", "annotator")) == "reviewer"
    assert store.transaction(lambda c: accounts.set_role(c, "boss", "reviewer")) == "admin"
    assert ann.get("/admin/adjudicate").status_code == 200      # same session, new role
    assert rev.get("/admin/adjudicate").status_code == 403
    # ... and the same sessions' pages offer the links of the new role, not the old one
    assert (_nav(ann), _nav(rev)) == (["/label", "/admin/adjudicate"], [])
    assert _nav(boss) == ["/label", "/admin/adjudicate"]
    assert boss.get("/admin").status_code == 403
    assert rev.post("/admin/adjudicate", data={"csrf": rev_csrf, "item_id": "it0",
                                               "choice": "a"}).status_code == 403
    with pytest.raises(QueueError, match="role must be one of") as e:
        store.transaction(lambda c: accounts.set_role(c, "ann", "owner"))
    assert (e.value.status, e.value.field) == (422, "role")
    with pytest.raises(QueueError, match="no annotator") as e:
        store.transaction(lambda c: accounts.set_role(c, "nobody", "admin"))
    assert e.value.status == 404


def test_admin_adds_a_reviewer_and_bad_admin_forms_are_422(site):
    store, url, tokens = site
    boss, csrf = _browser(url, tokens["boss"])
    assert 'value="reviewer"' in boss.get("/admin").text
    r = boss.post("/admin/annotators", data={"csrf": csrf, "action": "add", "name": "rita",
                                             "role": "reviewer"})
    assert r.status_code == 200
    token = re.search(r'<code class="token">([^<]+)</code>', r.text).group(1)
    assert store.authenticate(token).role == "reviewer"
    r = boss.post("/admin/annotators", data={"csrf": csrf, "action": "add", "name": "x",
                                             "role": "owner"})
    assert r.status_code == 422 and "role must be one of" in r.text
    assert "x" not in [a.name for a in store.annotators()]
    # found by schemathesis: each was a server error on PostgreSQL (NUL, integer overflow)
    # or on both (int("²")); each is now a 422 naming the field
    for action in ("add", "rotate", "disable"):
        r = boss.post("/admin/annotators", data={"csrf": csrf, "action": action,
                                                 "name": "ann\x00"})
        assert r.status_code == 422 and "name contains a control character" in r.text
    for bad in ("99999999999", "\u00b2", "1.0"):
        r = boss.post("/admin/guidelines", data={"csrf": csrf, "body": "x", "round": bad})
        assert r.status_code == 422 and "round must be a number" in r.text
    assert guidelines.current(store) is None


def test_a_long_guideline_in_any_script_fits_the_admin_form(site):
    """The form is URL-encoded: a CJK character costs 9 bytes, an emoji 12, so the
    queue-wide body limit (64 KiB) refused guidelines far below their 50,000 characters."""
    store, url, tokens = site
    boss, csrf = _browser(url, tokens["boss"])
    body = ("标注指南 😀 " * 10_000)[:guidelines.MAX_BODY]
    r = boss.post("/admin/guidelines", data={"csrf": csrf, "body": body})
    assert r.status_code == 303, r.text[:200]
    assert guidelines.current(store).body == body.strip()
    r = boss.post("/admin/guidelines", data={"csrf": csrf, "body": "x" * 700_000})
    assert r.status_code == 413                               # still bounded
    api = httpx.post(f"{url}/api/labels", headers={"Authorization": f"Bearer {tokens['ann']}"},
                     content=b"{" + b" " * 70_000 + b"}")
    assert api.status_code == 413                             # the rest keeps 64 KiB


def test_a_queue_made_before_the_reviewer_role_gets_it(store_url, monkeypatch):
    """m004 on a database migrated without it (every other number): applied afterwards,
    the rows and references kept, 'reviewer' allowed and other roles still refused."""
    every = list(migrations.MIGRATIONS)
    monkeypatch.setattr(migrations, "MIGRATIONS", [m for m in every if m[0] != 4])
    with QueueStore(store_url) as old:
        old.submit([QueueItem("it0", 0, "p", "a", "b")])
        ann = old.authenticate(old.add_annotator("ann")).id
        job = old.next_item(ann)
        old.record_label(ann, item_id="it0", lease_id=job.lease_id, choice="a",
                         confidence=2, idempotency_key="k")
        with pytest.raises(Exception, match="(?i)check"):
            old.add_annotator("early", "reviewer")
    monkeypatch.setattr(migrations, "MIGRATIONS", every)
    with QueueStore(store_url) as store:
        assert migrations.applied(store.engine) == [n for n, _ in every]   # 4 among them
        token = store.add_annotator("rev", "reviewer")
        assert store.authenticate(token).role == "reviewer"
        assert [(v.annotator, v.choice) for v in store.votes(0)] == [("ann", "a")]
        with pytest.raises(Exception, match="(?i)check"):
            store.transaction(lambda c: c.execute(text(
                "UPDATE annotators SET role = 'owner' WHERE name = 'rev'")))
        if store_url.startswith("sqlite"):
            assert store.read("PRAGMA integrity_check")[0][0] == "ok"
            assert store.read("PRAGMA foreign_key_check") == []
    with QueueStore(store_url) as again:   # reopening applies nothing
        assert migrations.migrate(again.engine) == []


def test_cli_add_annotator_role_and_set_role(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["-q", "queue", "add-annotator", "--run-dir", run, "rita", "--role",
                 "reviewer"]) == 0
    token = capsys.readouterr().out.strip()
    assert main(["-q", "queue", "add-annotator", "--run-dir", run, "al", "--admin"]) == 0
    with QueueStore.open(run) as store:
        assert store.authenticate(token).role == "reviewer"
        assert [(a.name, a.role) for a in store.annotators()] == [("rita", "reviewer"),
                                                                  ("al", "admin")]
    capsys.readouterr()
    assert main(["-q", "queue", "set-role", "--run-dir", run, "rita", "admin"]) == 0
    assert "'rita': reviewer -> admin" in capsys.readouterr().out
    with QueueStore.open(run) as store:
        assert store.authenticate(token).role == "admin"
    with pytest.raises(SystemExit):
        main(["-q", "queue", "add-annotator", "--run-dir", run, "x", "--role", "owner"])
    assert "invalid choice: 'owner'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["-q", "queue", "add-annotator", "--run-dir", run, "x", "--role", "admin",
              "--admin"])
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["queue", "set-role", "--run-dir", run, "nobody", "admin"]) != 0
    assert "no annotator named 'nobody'" in capsys.readouterr().err


def test_cli_role_choices_are_the_stores_roles():
    from alignloop.cli import build_parser

    queue = build_parser()._subparsers._group_actions[0].choices["queue"]
    commands = queue._subparsers._group_actions[0].choices
    for command, dest in (("add-annotator", "role"), ("set-role", "role")):
        action = next(a for a in commands[command]._actions if a.dest == dest)
        assert tuple(action.choices) == accounts.ROLES, command


RLO = "\u202e"


def test_adjudication_page_shows_bidi_controls_as_marks(store_url, serve_queue):
    # an annotator's comment (and the item's text) with U+202E must not reverse how the
    # reviewer reads the rest of the line: shown as the mark, as on the labeling page
    store = QueueStore(store_url, seed=1)
    tokens = {n: store.add_annotator(n, r) for n, r in (
        ("ann", "annotator"), ("bea", "annotator"), ("rev", "reviewer"))}
    store.submit([QueueItem("it0", 0, f"prompt {RLO}here", f"a{RLO}x", f"b{RLO}y",
                            votes_required=2, max_votes=2)])
    for name, choice in (("ann", "a"), ("bea", "b")):
        me = store.authenticate(tokens[name]).id
        job = store.next_item(me)
        store.record_label(me, item_id="it0", lease_id=job.lease_id, choice=choice,
                           idempotency_key=f"k-{name}", comment=f"{name} {RLO}evil")
    url = serve_queue(store, auth_cache_seconds=0)
    rev, _ = _browser(url, tokens["rev"])
    page = rev.get("/admin/adjudicate")
    assert page.status_code == 200 and 'data-item="it0"' in page.text
    assert RLO not in page.text
    assert page.text.count('<span class="bidi-mark"') == 5      # prompt, a, b, two comments
    assert "ann U+202E" not in page.text and 'ann <span class="bidi-mark"' in page.text
    store.close()


@pytest.mark.parametrize("name", ["adm\u200b", f"ev{RLO}il", "\ufeffboss", "a\u2066b"])
def test_annotator_names_refuse_invisible_formatting_characters(tmp_path, name):
    # "adm\u200b" would pass for "adm" on the dashboard; a bidi control reorders the header
    with QueueStore.open(tmp_path) as store, pytest.raises(QueueError, match="control character"):
        store.add_annotator(name)
