"""The holes found by attacking the queue (issue 17), each pinned on SQLite and PostgreSQL
(`store_url`), over real HTTP where the hole was in the web app: one annotator leasing the
whole queue, an idempotency key replayed with another label, a session cookie that
outlives sign-out, control characters in fields and imported rows, an old database
upgraded in place, and eight annotators storming `/api/next` at once."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.cookies import SimpleCookie

import pytest
from alignloop.cli import main
from alignloop.labeling.handoff import QueueItem
from alignloop.labeling.queue import migrations
from alignloop.labeling.queue.store import QueueError, QueueStore
from sqlalchemy import text

from .queue_helpers import disable, label_count, pending

COOKIE = "alignloop_session"
LOGIN_COOKIE = "alignloop_login"


def _items(n: int, *, votes: int = 1, prefix: str = "it") -> list[QueueItem]:
    return [QueueItem(f"{prefix}{i:04d}", 0, f"prompt {i}", f"answer a {i}", f"answer b {i}",
                      votes_required=votes, max_votes=votes) for i in range(n)]


@dataclass
class Answer:
    status: int
    location: str | None
    cookie: str | None        # the session cookie set by the answer ("" when deleted)
    text: str
    cookies: dict[str, str]   # every cookie the answer set
    headers: dict[str, str]

    def json(self):
        return json.loads(self.text) if self.text else None


def _http(url: str, method: str, path: str, *, token: str | None = None, body=None,
          form: dict | None = None, cookie: str | None = None,
          cookies: dict | None = None) -> Answer:
    """One request on its own connection; the session cookie (and `cookies`) are sent only
    when given."""
    conn = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=30)
    headers, data = {}, None
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    jar_out = {**(cookies or {}), **({COOKIE: cookie} if cookie else {})}
    if jar_out:
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in jar_out.items())
    conn.request(method, path, body=data, headers=headers)
    r = conn.getresponse()
    text = r.read().decode()
    jar = SimpleCookie()
    for header in r.headers.get_all("set-cookie") or []:
        jar.load(header)
    conn.close()
    return Answer(r.status, r.getheader("location"),
                  jar[COOKIE].value if COOKIE in jar else None, text,
                  {k: m.value for k, m in jar.items()}, dict(r.headers.items()))


def _csrf(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def _sign_in(url: str, token: str) -> str:
    """The session cookie of a fresh sign-in with `token`."""
    first = _http(url, "GET", "/")
    signed = _http(url, "POST", "/login", form={"csrf": _csrf(first.text), "token": token},
                   cookies={LOGIN_COOKIE: first.cookies[LOGIN_COOKIE]})
    assert signed.status == 303 and signed.location == "/label", signed
    return signed.cookie


@pytest.fixture
def site(store_url, serve_queue):
    store = QueueStore(store_url)
    tokens = {"ann": store.add_annotator("ann"), "other": store.add_annotator("other")}
    store.submit(_items(12))
    yield store, serve_queue(store, auth_cache_seconds=0), tokens
    store.close()


def _label_body(item: dict, **kw) -> dict:
    return {"item_id": item["item_id"], "lease_id": item["lease_id"], "choice": "a",
            "confidence": 2, "idempotency_key": f"key-{item['lease_id']}", **kw}


# --------------------------------------------------------------------------- 1. lease cap


def test_one_token_cannot_lease_the_whole_queue(site):
    store, url, tokens = site
    got = [_http(url, "POST", "/api/next", token=tokens["ann"]) for _ in range(60)]
    assert {a.status for a in got} == {200}
    assert len({a.json()["lease_id"] for a in got}) == 1    # the same lease, handed back
    other = _http(url, "POST", "/api/next", token=tokens["other"])
    assert other.status == 200 and other.json()["item_id"] != got[0].json()["item_id"]


def test_lease_cap_hands_back_the_oldest_lease(store):
    store.submit(_items(6))
    ann = store.authenticate(store.add_annotator("ann")).id
    first, second = (store.next_item(ann, max_leases=2) for _ in range(2))
    assert first.item.item_id != second.item.item_id
    again = store.next_item(ann, max_leases=2)
    assert (again.lease_id, again.item, again.display_order, again.expires_at) == (
        first.lease_id, first.item, first.display_order, first.expires_at)
    store.record_label(ann, item_id=first.item.item_id, lease_id=first.lease_id, choice="a",
                       idempotency_key="k1")
    third = store.next_item(ann, max_leases=2)               # a slot freed by the label
    assert third.lease_id not in (first.lease_id, second.lease_id)
    assert store.next_item(ann, max_leases=2).lease_id == second.lease_id
    assert store.next_item(ann).lease_id == second.lease_id   # the default cap is 1
    with pytest.raises(ValueError, match="max_leases"):
        store.next_item(ann, max_leases=0)


def test_lease_cap_holds_under_concurrent_calls(store):
    store.submit(_items(40))
    ann = store.authenticate(store.add_annotator("ann")).id
    barrier = threading.Barrier(16)

    def grab(_):
        barrier.wait()
        return store.next_item(ann, max_leases=2).lease_id

    with ThreadPoolExecutor(16) as pool:
        leases = set(pool.map(grab, range(16)))
    assert len(leases) == 2
    live = store.read("SELECT COUNT(*) FROM leases WHERE annotator_id = :a", {"a": ann})
    assert live[0][0] == 2


@pytest.fixture
def store(store_url):
    s = QueueStore(store_url, seed=0)
    yield s
    s.close()


# --------------------------------------------------------------------------- 2. replays


def test_replay_with_a_different_label_is_refused(store):
    store.submit(_items(1))
    ann = store.authenticate(store.add_annotator("ann")).id
    got = store.next_item(ann)
    sent = dict(item_id=got.item.item_id, lease_id=got.lease_id, choice="a", confidence=2,
                idempotency_key="k", comment="")
    first = store.record_label(ann, **sent)
    for change in ({"choice": "b"}, {"confidence": 3}, {"comment": "second thoughts"}):
        with pytest.raises(QueueError, match="different") as e:
            store.record_label(ann, **{**sent, **change})
        assert (e.value.status, e.value.field) == (409, "idempotency_key")
    assert store.record_label(ann, **sent) == type(first)(first.label_id, False)
    assert [(v.choice, v.confidence) for v in store.votes(0)] == [("a", 2)]


def test_api_replay_with_a_different_choice_is_409(site):
    store, url, tokens = site
    item = _http(url, "POST", "/api/next", token=tokens["ann"]).json()
    assert _http(url, "POST", "/api/labels", token=tokens["ann"],
                 body=_label_body(item)).status == 201
    changed = _http(url, "POST", "/api/labels", token=tokens["ann"],
                    body=_label_body(item, choice="b"))
    assert changed.status == 409, changed
    assert changed.json()["field"] == "idempotency_key" and "different" in changed.json()["detail"]
    same = _http(url, "POST", "/api/labels", token=tokens["ann"], body=_label_body(item))
    assert same.status == 200 and same.json()["created"] is False
    assert [v.choice for v in store.votes(0)] == ["a"]


# --------------------------------------------------------------------------- 3. sessions


def test_sign_out_ends_the_session_on_the_server(site):
    store, url, tokens = site
    copied = _sign_in(url, tokens["ann"])
    elsewhere = _sign_in(url, tokens["ann"])            # the same person on another device
    page = _http(url, "GET", "/label", cookie=copied)
    assert page.status == 200 and "answer" in page.text
    out = _http(url, "POST", "/logout", form={"csrf": _csrf(page.text)}, cookie=copied)
    assert out.status == 303 and out.cookie == ""
    replayed = _http(url, "GET", "/label", cookie=copied)   # the cookie copied before
    assert replayed.status == 303 and replayed.location == "/", replayed
    assert _http(url, "GET", "/label", cookie=elsewhere).status == 200   # only that session
    # a form posted with the revoked cookie (and its valid CSRF token) records nothing
    fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', page.text))
    post = _http(url, "POST", "/label", form={**fields, "slot": "left", "confidence": "2"},
                 cookie=copied)
    assert post.status == 303 and post.location == "/" and label_count(store, 0) == 0


def test_disabling_an_annotator_ends_its_sessions(site):
    store, url, tokens = site
    cookie = _sign_in(url, tokens["ann"])
    page = _http(url, "GET", "/label", cookie=cookie)
    assert page.status == 200
    disable(store, "ann")
    assert store.read("SELECT COUNT(*) FROM sessions")[0][0] == 0
    assert _http(url, "GET", "/label", cookie=cookie).location == "/"
    fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', page.text))
    post = _http(url, "POST", "/label", form={**fields, "slot": "left", "confidence": "2"},
                 cookie=cookie)
    assert post.location == "/" and label_count(store, 0) == 0


# --------------------------------------------------------------------------- 4. controls


@pytest.mark.parametrize("bad", ["\x00", "\x1b[2J", "\x07"])
def test_control_characters_in_label_fields_are_422_naming_the_field(site, bad):
    store, url, tokens = site
    item = _http(url, "POST", "/api/next", token=tokens["ann"]).json()
    for field in ("comment", "idempotency_key", "item_id", "lease_id"):
        body = _label_body(item, comment="")
        body[field] = body[field] + bad
        answer = _http(url, "POST", "/api/labels", token=tokens["ann"], body=body)
        assert answer.status == 422, (field, answer)
        assert answer.json()["field"] == field and "control character" in answer.json()["detail"]
    assert label_count(store, 0) == 0
    ok = _http(url, "POST", "/api/labels", token=tokens["ann"],
               body=_label_body(item, comment="two\nlines,\ta tab\r\n"))
    assert ok.status == 201                                 # newline and tab are free text


def test_control_characters_in_a_web_comment_are_422(site):
    store, url, tokens = site
    cookie = _sign_in(url, tokens["ann"])
    page = _http(url, "GET", "/label", cookie=cookie)
    fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', page.text))
    answer = {**fields, "slot": "left", "confidence": "2", "comment": "nul \x00 here"}
    refused = _http(url, "POST", "/label", form=answer, cookie=cookie)
    assert refused.status == 422 and "comment" in refused.text and label_count(store, 0) == 0
    kept = _http(url, "POST", "/label", form={**answer, "comment": "fine\r\nreally"},
                 cookie=cookie)
    assert kept.status == 303 and label_count(store, 0) == 1


def test_store_refuses_control_characters_naming_the_field(store):
    ann = store.authenticate(store.add_annotator("ann")).id
    bad_items = {"item_id": QueueItem("i\x1b1", 0, "p", "a", "b"),
                 "a": QueueItem("i1", 0, "p", "a\x00", "b"),
                 "prompt": QueueItem("i1", 0, [{"role": "user", "content": "\x00"}], "a", "b")}
    for field, item in bad_items.items():
        with pytest.raises(QueueError, match="control character") as e:
            store.submit([item])
        assert (e.value.status, e.value.field) == (422, field)
    # model output may hold other control characters: kept, and shown escaped
    assert store.submit([QueueItem("i1", 0, "p\x1b[2J", "a\x07", "b")]) == 1
    with pytest.raises(QueueError, match="control character") as e:
        store.add_annotator("eve\x1b]0;x\x07")
    assert e.value.field == "name"
    got = store.next_item(ann)
    with pytest.raises(QueueError) as e:
        store.record_label(ann, item_id=got.item.item_id, lease_id=got.lease_id, choice="a",
                           idempotency_key="k", comment="\x00")
    assert (e.value.status, e.value.field) == (422, "comment")


def test_import_names_the_file_and_row_of_a_control_character(store_url, tmp_path, capsys):
    rows = [{"prompt": "fine", "chosen": "yes", "rejected": "no"},
            {"prompt": "p", "chosen": "nul\x00inside", "rejected": "no"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["-q", "queue", "import", "--db", store_url, str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path} row 2" in err and "chosen" in err and "control character" in err
    assert "Traceback" not in err
    with QueueStore(store_url) as store:
        assert pending(store, 0) == 0                        # nothing half-imported
    assert main(["-q", "queue", "import", "--db", store_url, str(path),
                 "--on-invalid", "skip"]) == 0
    assert "queued 1 new items" in capsys.readouterr().out


def test_import_refuses_a_pair_id_the_queue_cannot_hold_naming_the_row(tmp_path, capsys):
    rows = [{"pair_id": "ok", "prompt": "fine", "chosen": "yes", "rejected": "no"},
            {"pair_id": "x" * 201, "prompt": "p", "chosen": "a", "rejected": "b"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    assert main(["-q", "queue", "import", "--run-dir", str(run), str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path} row 2" in err and "pair_id must be 1-200 characters, got 201" in err
    assert not run.exists()                                  # refused: no queue made
    assert main(["-q", "queue", "import", "--run-dir", str(run), str(path),
                 "--on-invalid", "skip"]) == 0
    assert "queued 1 new items" in capsys.readouterr().out


def test_an_invalid_import_row_points_to_the_commands_own_flag(store_url, tmp_path, capsys):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "p", "chosen": "same", "rejected": "same"}\n')
    assert main(["-q", "queue", "import", "--db", store_url, str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path} row 1" in err and "(add --on-invalid skip to drop invalid rows)" in err
    assert "data.on_invalid" not in err          # a config key this command does not read


# --------------------------------------------------------------------------- migrations


def test_a_queue_from_before_sessions_upgrades_in_place(store_url, monkeypatch):
    first = migrations.MIGRATIONS[:1]
    monkeypatch.setattr(migrations, "MIGRATIONS", first)
    with QueueStore(store_url) as old:
        token = old.add_annotator("ann")
        old.submit(_items(3))
        # a lease as the old code wrote it (today's leasing SQL reads newer tables)
        with old.engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO leases (lease_id, item_id, annotator_id, display_order, "
                "issued_at, expires_at) VALUES ('old-lease', 'it0000', :a, 'ab', :t, :e)"),
                {"a": old.authenticate(token).id, "t": time.time(), "e": time.time() + 600})
        assert migrations.applied(old.engine) == [1]
    monkeypatch.undo()
    with QueueStore(store_url) as store:
        assert migrations.applied(store.engine) == [n for n, _ in migrations.MIGRATIONS]
        me = store.authenticate(token)
        assert me is not None and pending(store, 0) == 3
        assert store.next_item(me.id).lease_id == "old-lease"   # the old lease counts
        store.start_session(me.id, "sid-1", 60)
        assert store.session_annotator("sid-1") == me


# --------------------------------------------------------------------------- storms


def test_eight_annotators_storming_next_cannot_starve_each_other(store_url, serve_queue):
    """Each annotator fires its `/api/next` calls from four threads at once, all eight
    together: while items remain, every annotator gets one (never 204), and a storm hands
    out one lease however many calls it makes. Then they label with a storm before each
    label until the queue is empty; a 204 comes only when every item left is leased to
    someone else."""
    n_ann, n_items, cap = 8, 40, 1
    store = QueueStore(store_url)
    tokens = [store.add_annotator(f"storm-{i}") for i in range(n_ann)]
    store.submit(_items(n_items))
    url = serve_queue(store, auth_cache_seconds=5)
    barrier = threading.Barrier(n_ann * 4)
    got: dict[int, list[tuple[int, str | None]]] = {i: [] for i in range(n_ann)}
    lock = threading.Lock()

    def storm(i: int) -> None:
        barrier.wait()
        for _ in range(5):
            a = _http(url, "POST", "/api/next", token=tokens[i])
            with lock:
                got[i].append((a.status, a.json()["lease_id"] if a.status == 200 else None))

    threads = [threading.Thread(target=storm, args=(i,)) for i in range(n_ann) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, answers in got.items():
        assert {s for s, _ in answers} == {200}, f"annotator {i} starved: {answers}"
        assert len({lease for _, lease in answers}) == cap

    labeled, idle_pending, errors = [0] * n_ann, [], []

    def label_until_empty(i: int) -> None:
        try:
            while True:
                with ThreadPoolExecutor(3) as pool:
                    answers = list(pool.map(lambda _: _http(url, "POST", "/api/next",
                                                            token=tokens[i]), range(3)))
                if any(a.status == 204 for a in answers):
                    idle_pending.append(pending(store, 0))
                    return
                leases = {a.json()["lease_id"] for a in answers}
                assert len(leases) == cap, answers
                item = answers[0].json()
                done = _http(url, "POST", "/api/labels", token=tokens[i], body=_label_body(item))
                assert done.status == 201, done
                labeled[i] += 1
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(f"annotator {i}: {e!r}")

    threads = [threading.Thread(target=label_until_empty, args=(i,)) for i in range(n_ann)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sum(labeled) == n_items and min(labeled) >= 1, labeled
    # pending only falls, so a later count bounds the one at the 204 from above
    assert max(idle_pending) <= (n_ann - 1) * cap, idle_pending
    assert pending(store, 0) == 0
    store.close()


# --------------------------------------------------------------------------- Host header


def test_no_redirect_takes_its_host_from_the_request(site):
    """Starlette's trailing-slash redirect built an absolute URL from the Host header, so a
    link to `/label/` with a forged Host sent the browser to another site."""
    _, url, _ = site
    for path in ("/label/", "/admin/", "/login/", "/api/next/", "/static"):
        conn = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=30)
        conn.request("GET", path, headers={"Host": "evil.example"})
        r = conn.getresponse()
        r.read()
        conn.close()
        assert "evil.example" not in (r.getheader("location") or ""), path
        assert r.status == 404, (path, r.status)
    assert _http(url, "GET", "/").status == 200


# --------------------------------------------------------------------------- second audit


def _hidden(page: str) -> dict[str, str]:
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page))


def _two_tabs(url: str, token: str) -> tuple[str, dict, dict]:
    """Sign in, then load /label twice (a second tab): (cookie, tab 1's form, tab 2's).
    The reload gives the first lease back and leases the same item anew."""
    cookie = _sign_in(url, token)
    first = _http(url, "GET", "/label", cookie=cookie)
    cookie = first.cookie or cookie           # the session remembers the lease on screen
    second = _http(url, "GET", "/label", cookie=cookie)
    tab1, tab2 = _hidden(first.text), _hidden(second.text)
    assert tab1["item_id"] == tab2["item_id"] and tab1["lease_id"] != tab2["lease_id"]
    return second.cookie or cookie, tab1, tab2


def _skip(url: str, token: str, form: dict) -> Answer:
    return _http(url, "POST", "/api/skip", token=token, body={
        "item_id": form["item_id"], "lease_id": form["lease_id"], "reason": "cant_judge"})


def test_a_skip_gives_back_every_lease_the_annotator_holds_on_the_item(site):
    """Skipping through tab 1's (released) lease left tab 2's live: /api/next kept handing
    the skipped item back, which could be neither labeled nor skipped again until the lease
    ran out, and it kept a slot from the others."""
    store, url, tokens = site
    _, tab1, _ = _two_tabs(url, tokens["ann"])
    assert _skip(url, tokens["ann"], tab1).status == 201
    nxt = _http(url, "POST", "/api/next", token=tokens["ann"])
    assert nxt.status == 200 and nxt.json()["item_id"] != tab1["item_id"]
    other = _http(url, "POST", "/api/next", token=tokens["other"])
    assert other.json()["item_id"] == tab1["item_id"]        # its slot went to someone else


def test_an_item_labeled_in_another_tab_cannot_be_skipped(site):
    """A skip through tab 1's lease after tab 2 labeled the item stored a skip and a label
    for the same annotator and item; it is a 409 now, as for the lease that labeled."""
    store, url, tokens = site
    cookie, tab1, tab2 = _two_tabs(url, tokens["ann"])
    labeled = _http(url, "POST", "/label", cookie=cookie,
                    form={**tab2, "slot": "left", "confidence": "2"})
    assert labeled.status == 303, labeled.text[:300]
    refused = _skip(url, tokens["ann"], tab1)
    assert refused.status == 409 and "labeled already" in refused.json()["detail"]
    assert store.read("SELECT COUNT(*) FROM skips")[0][0] == 0


def test_dashboard_buttons_act_on_the_exact_name(site):
    """The dashboard stripped the posted name, so Disable on an "alice " row (which a page
    shows as "alice") disabled alice. New names with a space at either end are refused."""
    store, url, tokens = site
    admin = store.add_annotator("boss", role="admin")
    store.add_annotator("alice")
    with pytest.raises(QueueError, match="starts or ends with a space"):
        store.add_annotator("alice ")
    with store.engine.begin() as conn:             # an older queue may hold such a name
        conn.execute(text("INSERT INTO annotators (name, role, token_hash, created_at, active) "
                          "VALUES ('alice ', 'annotator', 'x', 0, 1)"))
    cookie = _sign_in(url, admin)
    page = _http(url, "GET", "/admin", cookie=cookie).text
    done = _http(url, "POST", "/admin/annotators", cookie=cookie,
                 form={"csrf": _csrf(page), "name": "alice ", "action": "disable"})
    assert done.status == 303
    active = dict(store.read("SELECT name, active FROM annotators WHERE name LIKE 'alice%'"))
    assert active == {"alice": 1, "alice ": 0}


def test_a_lone_carriage_return_in_a_guideline_cannot_reach_the_terminal(tmp_path, capsys):
    """A CR stored from the web editor made `queue guidelines` print one sentence over the
    other. It is stored as a line end now, and one stored before is shown escaped."""
    from alignloop.labeling.queue import guidelines

    store = QueueStore(f"sqlite:///{tmp_path}/queue.db")
    guidelines.set_guideline(store, "Pick the SAFER answer.\rNever the other.", round=3)
    assert guidelines.current(store, 3).body == "Pick the SAFER answer.\nNever the other."
    with store.engine.begin() as conn:
        conn.execute(text("INSERT INTO guidelines (round, version, body, author, created_at) "
                          "VALUES (4, 9, 'Pick the SAFER one.\rNever it.', '', 0)"))
    store.close()
    assert main(["-q", "queue", "guidelines", "--run-dir", str(tmp_path), "--round", "4"]) == 0
    out = capsys.readouterr().out
    assert "\r" not in out and "Pick the SAFER one.\\rNever it." in out


@pytest.mark.parametrize("where", ["env", "file", "mode"])
def test_a_weak_or_exposed_signing_key_is_refused(tmp_path, monkeypatch, where):
    from alignloop.labeling.queue.app import SECRET_ENV, resolve_secret

    url = f"sqlite:///{tmp_path}/q.db"
    secret = tmp_path / "q.db.secret"
    monkeypatch.delenv(SECRET_ENV, raising=False)
    assert len(resolve_secret(url)) == 64 and secret.stat().st_mode & 0o777 == 0o600
    if where == "env":
        monkeypatch.setenv(SECRET_ENV, "x")
        match = f"{SECRET_ENV}: the key that signs sessions has 1 bytes"
    elif where == "file":
        secret.write_text("")
        match = "q.db.secret: the key that signs sessions has 0 bytes"
    else:
        secret.chmod(0o644)
        match = "can be read by other users: chmod 600"
    with pytest.raises(QueueError, match=match):
        resolve_secret(url)
