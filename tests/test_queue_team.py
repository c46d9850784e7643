"""What annotation teams expect of the queue, on SQLite and PostgreSQL: versioned
guidelines recorded with every label, skips with a reason that send the item to someone
else, adjudicated verdicts counted as strong votes (in the queue's exports, in
labels.parquet and in the loop's aggregation), the dashboard's numbers and token
rotation."""

from __future__ import annotations

import pytest
from alignloop.labeling.aggregate import Vote, aggregate_votes
from alignloop.labeling.handoff import QueueError, QueueItem
from alignloop.labeling.labeler import human_posteriors
from alignloop.labeling.labels import read_labels, vote_label, write_labels
from alignloop.labeling.queue import adjudication, dashboard, guidelines, migrations, skips
from alignloop.labeling.queue.store import QueueStore
from sqlalchemy import text

from .queue_helpers import Clock


@pytest.fixture
def team(store_url):
    clock = Clock()
    store = QueueStore(store_url, clock=clock, seed=0)
    ids = {}
    for name, role in (("ann", "annotator"), ("bea", "annotator"), ("cy", "annotator"),
                       ("boss", "admin")):
        ids[name] = store.authenticate(store.add_annotator(name, role)).id
    yield store, ids, clock
    store.close()


def _items(n: int, round: int = 0, votes: int = 1, prefix: str = "it") -> list[QueueItem]:
    return [QueueItem(f"{prefix}{round}-{i}", round, f"prompt {i}", f"a{i}", f"b{i}",
                      votes_required=votes, max_votes=votes) for i in range(n)]


def _label(store, aid: int, choice: str, key: str) -> str:
    got = store.next_item(aid)
    assert got is not None
    store.record_label(aid, item_id=got.item.item_id, lease_id=got.lease_id, choice=choice,
                       idempotency_key=key)
    return got.item.item_id


def test_migration_5_applies_after_3_with_4_left_free(team):
    store, _, _ = team
    done = migrations.applied(store.engine)
    assert 5 in done and done == sorted(done) and done[:3] == [1, 2, 3]
    assert migrations.migrate(store._writer) == []   # again: nothing to do


def test_guideline_versions_per_round_are_recorded_with_each_label(team):
    store, ids, _ = team
    store.submit(_items(2, round=0) + _items(2, round=1))
    assert guidelines.current(store) is None
    first = _label(store, ids["ann"], "a", "k0")          # before any guideline
    v1 = guidelines.set_guideline(store, "# Rules\n- prefer **honest** answers", author="boss")
    v2 = guidelines.set_guideline(store, "Round one: judge `code` only.", round=1)
    assert (v1, v2) == (1, 2)
    assert guidelines.current(store, 0).version == v1     # no round-0 guideline: the queue's
    assert guidelines.current(store, 1).version == v2
    assert guidelines.current(store).version == v1
    labeled = [_label(store, ids["ann"], "b", f"k{n}") for n in range(1, 4)]
    version = {r["item_id"]: r["guideline_version"] for r in store.export_raw()}
    assert version[first] is None
    for item_id in labeled:
        assert version[item_id] == (v2 if item_id.startswith("it1") else v1)
    v3 = guidelines.set_guideline(store, "Queue rules, revised")
    assert [g.version for g in guidelines.history(store)] == [v3, v2, v1]
    assert guidelines.current(store, 1).version == v2     # the round's own still wins
    with pytest.raises(QueueError) as e:
        guidelines.set_guideline(store, "bad \x00 byte")
    assert e.value.field == "guideline"


def test_guideline_markdown_becomes_data_never_html():
    body = "# Title <b>\n\nSome **bold <i>** and `x<y`\n- one\n* two\n\n<script>x</script>"
    blocks = guidelines.blocks(body)
    assert [b["kind"] for b in blocks] == ["h1", "p", "ul", "p"]
    assert blocks[0]["spans"] == [{"kind": "text", "text": "Title <b>"}]
    assert {"kind": "strong", "text": "bold <i>"} in blocks[1]["spans"]
    assert {"kind": "code", "text": "x<y"} in blocks[1]["spans"]
    assert [s[0]["text"] for s in blocks[2]["items"]] == ["one", "two"]
    assert blocks[3]["spans"][0]["text"] == "<script>x</script>"   # text, escaped when shown


def test_a_skipped_item_goes_to_someone_else_and_never_back(team):
    store, ids, _ = team
    store.submit(_items(2, votes=1))
    got = store.next_item(ids["ann"])
    r = skips.record_skip(store, ids["ann"], item_id=got.item.item_id, lease_id=got.lease_id,
                          reason="needs_expertise", comment="medical")
    assert r.created
    again = skips.record_skip(store, ids["ann"], item_id=got.item.item_id,
                              lease_id=got.lease_id, reason="needs_expertise")
    assert not again.created and again.skip_id == r.skip_id
    other = store.next_item(ids["ann"])
    assert other.item.item_id != got.item.item_id       # not the skipped one
    store.record_label(ids["ann"], item_id=other.item.item_id, lease_id=other.lease_id,
                       choice="a", idempotency_key="k-ann")
    assert store.next_item(ids["ann"]) is None           # only the skipped one is left
    assert store.progress(ids["ann"])["available"] == 0
    theirs = store.next_item(ids["bea"])
    assert theirs.item.item_id == got.item.item_id       # it went to someone else
    assert skips.skip_counts(store) == {got.item.item_id: {"needs_expertise": 1}}
    assert skips.export_skips(store)[0]["comment"] == "medical"


def test_skip_refusals_name_the_field(team):
    store, ids, _ = team
    store.submit(_items(2))
    got = store.next_item(ids["ann"])
    cases = [(dict(reason="bored"), 422, "reason"),
             (dict(reason="other", comment="a\x00b"), 422, "comment"),
             (dict(reason="other", lease_id="nope"), 404, "lease_id"),
             (dict(reason="other", item_id="it0-1"), 404, "lease_id")]
    for extra, status, field in cases:
        kwargs = {"item_id": got.item.item_id, "lease_id": got.lease_id, **extra}
        with pytest.raises(QueueError) as e:
            skips.record_skip(store, ids["ann"], **kwargs)
        assert (e.value.status, e.value.field) == (status, field), extra
    store.record_label(ids["ann"], item_id=got.item.item_id, lease_id=got.lease_id,
                       choice="a", idempotency_key="k")
    with pytest.raises(QueueError) as e:
        skips.record_skip(store, ids["ann"], item_id=got.item.item_id, lease_id=got.lease_id,
                          reason="other")
    assert e.value.status == 409


def _disputed_item(store, ids) -> str:
    """One item with votes a, a, b (three annotators)."""
    store.submit(_items(1, votes=3))
    for name, choice in (("ann", "a"), ("bea", "a"), ("cy", "b")):
        item_id = _label(store, ids[name], choice, f"k-{name}")
    return item_id


def test_verdict_is_a_strong_vote_in_the_queue_export(team):
    store, ids, _ = team
    item_id = _disputed_item(store, ids)
    (pair,) = store.export_pairs()
    assert pair.chosen == "a0" and pair.p_chosen > 0.5     # two votes to one
    listed = adjudication.disputed(store)
    assert [d["item_id"] for d in listed] == [item_id]
    assert listed[0]["counts"] == {"a": 2, "b": 1} and len(listed[0]["votes"]) == 3
    adjudication.record_verdict(store, ids["boss"], item_id=item_id, choice="b",
                                comment="a0 is wrong")
    (pair,) = store.export_pairs()
    assert pair.chosen == "b0" and pair.p_chosen > 0.9      # the verdict outweighs them
    assert adjudication.disputed(store, include_settled=False) == []
    adjudication.record_verdict(store, ids["boss"], item_id=item_id, choice="a")   # replaced
    assert adjudication.verdicts(store)[item_id]["choice"] == "a"
    (pair,) = store.export_pairs()
    assert pair.chosen == "a0"
    with pytest.raises(QueueError) as e:
        adjudication.record_verdict(store, ids["boss"], item_id="nope", choice="a")
    assert e.value.status == 404


def test_verdict_reaches_labels_parquet_and_the_loops_aggregation(team, tmp_path):
    store, ids, _ = team
    item_id = _disputed_item(store, ids)
    adjudication.record_verdict(store, ids["boss"], item_id=item_id, choice="b")
    votes = store.votes(0)
    assert [v.source for v in votes] == ["human"] * 3 + ["adjudicated"]
    item = {"prompt": "prompt 0", "a": "a0", "b": "b0"}
    path = write_labels(tmp_path / "labels.parquet", [vote_label(item, v) for v in votes])
    labels = read_labels(path)
    assert [lab.source for lab in labels].count("adjudicated") == 1
    from alignloop.config import AggregationConfig

    p = human_posteriors(labels, AggregationConfig())
    without = human_posteriors([lab for lab in labels if lab.source == "human"],
                               AggregationConfig())
    assert without[item_id] > 0.5 > p[item_id]


def test_aggregation_verdict_math():
    # a verdict alone: L = logit(r_adj), so p_a = r_adj exactly
    only = aggregate_votes([], verdicts={"x": "a"}, verdict_reliability=0.9)
    assert only.posteriors["x"].p_a == pytest.approx(0.9)
    assert only.posteriors["x"].verdict == "a"
    # one new annotator's "a" is a fixed point at rho (module docstring); a "b" verdict at
    # 0.99 (4.6 log-odds) overturns it, and the annotator's reliability drops below rho
    votes = [Vote("x", "ann", "a")]
    assert aggregate_votes(votes).posteriors["x"].p_a == pytest.approx(0.75)
    with_verdict = aggregate_votes(votes, verdicts={"x": "b"})
    assert with_verdict.posteriors["x"].p_a < 0.1
    assert with_verdict.reliability["ann"] < 0.75
    # a tie verdict adds no log-odds: the votes alone decide
    assert aggregate_votes(votes, verdicts={"x": "tie"}).posteriors["x"].p_a == pytest.approx(0.75)


def test_dashboard_numbers_and_token_rotation(team):
    store, ids, clock = team
    store.submit(_items(4, votes=2))
    _label(store, ids["ann"], "a", "k1")
    clock.t += 7200                                   # two hours later
    _label(store, ids["ann"], "b", "k2")
    _label(store, ids["bea"], "a", "k3")
    data = dashboard.overview(store)
    t = {w["window"]: w["labels"] for w in data["throughput"]}
    assert t == {"last hour": 2, "last 24 h": 3}
    rows = {a["name"]: a for a in data["annotators"]}
    assert (rows["ann"]["labels"], rows["ann"]["last_hour"], rows["bea"]["labels"]) == (2, 1, 1)
    assert data["status"]["rounds"][0]["labels"] == 3
    old = store.add_annotator("dee")
    dee = store.authenticate(old).id
    store.start_session(dee, "session-1", 3600)
    token = dashboard.rotate_token(store, "dee")
    assert store.authenticate(old) is None and store.authenticate(token).name == "dee"
    assert store.session_annotator("session-1") is None      # its web sessions ended
    store.disable_annotator("cy")
    assert {a["name"]: a["active"] for a in dashboard.annotator_table(store)}["cy"] is False
    with pytest.raises(QueueError) as e:
        dashboard.rotate_token(store, "nobody")
    assert e.value.status == 404


def test_a_queue_from_before_migration_5_upgrades_in_place(store_url, monkeypatch):
    before = [m for m in migrations.MIGRATIONS if m[0] <= 3]
    monkeypatch.setattr(migrations, "MIGRATIONS", before)
    with QueueStore(store_url) as old:
        aid = old.authenticate(old.add_annotator("ann")).id
        old.submit(_items(2))
        # today's leasing needs today's schema (skips): the old label's rows by hand
        old.transaction(lambda conn: [conn.execute(text(sql), {"a": aid}) for sql in (
            "INSERT INTO leases VALUES ('l0', 'it0-0', :a, 'ab', 0, 1e12, 1)",
            "INSERT INTO labels (item_id, annotator_id, lease_id, choice, display_order, "
            "idempotency_key, created_at) VALUES ('it0-0', :a, 'l0', 'a', 'ab', 'k-old', 1)",
            "UPDATE items SET n_labels = 1, is_open = 0, first_choice = 'a' "
            "WHERE item_id = 'it0-0'")])
        assert 5 not in migrations.applied(old.engine)
    monkeypatch.undo()
    with QueueStore(store_url) as store:
        assert 5 in migrations.applied(store.engine)
        (row,) = store.export_raw()
        assert row["guideline_version"] is None            # given before any guideline
        guidelines.set_guideline(store, "now there are rules")
        _label(store, aid, "b", "k-new")
        assert [r["guideline_version"] for r in store.export_raw()] == [None, 1]
