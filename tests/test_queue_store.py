"""The human queue's store, on SQLite and on a real PostgreSQL server (`store_url`).

Semantics: migrations, hashed tokens, adaptive redundancy, no item twice to one
annotator, lease expiry, idempotent submissions, randomised display order, gold
items, priority, soft-label export, waiting; and many threads labeling at once
with retried and duplicated submissions: no label lost or duplicated, every item
at exactly the votes it needs.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest
from alignloop.labeling.handoff import QueueItem
from alignloop.labeling.queue import migrations
from alignloop.labeling.queue.store import QueueError, QueueStore, WaitingForLabels
from alignloop.records import Pair

from .queue_helpers import Clock, disable, pending


@pytest.fixture
def store(store_url):
    s = QueueStore(store_url, seed=0)
    yield s
    s.close()


def items(n: int, *, round: int = 0, prefix: str = "i", **kw) -> list[QueueItem]:
    return [QueueItem(f"{prefix}{k}", round, f"prompt {k}", f"a{k}", f"b{k}", "s", **kw)
            for k in range(n)]


def annotators(store: QueueStore, n: int) -> list[int]:
    return [store.authenticate(store.add_annotator(f"ann{k}")).id for k in range(n)]


def label(store: QueueStore, ann: int, choice: str = "a", key: str | None = None, **kw):
    got = store.next_item(ann, **kw)
    assert got is not None
    store.record_label(ann, item_id=got.item.item_id, lease_id=got.lease_id, choice=choice,
                       idempotency_key=key or f"{ann}:{got.item.item_id}")
    return got


def test_migrations_are_recorded_and_idempotent(store, store_url):
    assert migrations.applied(store.engine) == [n for n, _ in migrations.MIGRATIONS]
    assert migrations.migrate(store.engine.execution_options(queue_write=True)) == []
    again = QueueStore(store_url)              # a second opener applies nothing
    assert migrations.applied(again.engine) == [n for n, _ in migrations.MIGRATIONS]
    again.close()
    names = {r[0] for r in store.read("SELECT name FROM _migrations")}
    assert names == {fn.__name__ for _, fn in migrations.MIGRATIONS}
    assert {"m001_initial", "m002_sessions", "m003_open_leases_by_annotator",
            "m005_annotation_team"} <= names


def test_token_is_stored_only_as_its_hash(store):
    token = store.add_annotator("alice")
    admin = store.add_annotator("root", role="admin")
    who = store.authenticate(token)
    assert who is not None and who.name == "alice" and who.role == "annotator"
    assert store.authenticate(admin).is_admin
    assert store.authenticate(token + "x") is None and store.authenticate("") is None
    rows = [tuple(r) for r in store.read("SELECT * FROM annotators")]
    assert not any(token in str(v) or admin in str(v) for row in rows for v in row)
    hashes = {r[0] for r in store.read("SELECT token_hash FROM annotators")}
    assert hashlib.sha256(token.encode()).hexdigest() in hashes
    with pytest.raises(QueueError) as e:
        store.add_annotator("alice")
    assert e.value.status == 409
    disable(store, "alice")
    assert store.authenticate(token) is None


def test_disabling_gives_the_annotators_items_back(store):
    store.submit(items(1))
    a1, a2 = annotators(store, 2)
    assert store.next_item(a1) is not None and store.next_item(a2) is None
    disable(store, "ann0")                          # not after the lease's 10 minutes: now
    assert store.next_item(a2).item.item_id == "i0"


def test_adaptive_redundancy(store):
    store.submit(items(2, votes_required=2, max_votes=3))
    a1, a2, a3, a4 = annotators(store, 4)
    for ann, choice in ((a1, "a"), (a2, "a")):      # i0: two agreeing votes complete it
        assert label(store, ann, choice).item.item_id == "i0"
    assert pending(store, 0) == 1
    for ann, choice in ((a1, "a"), (a2, "b")):      # i1: disagreement asks for a third
        assert label(store, ann, choice).item.item_id == "i1"
    assert pending(store, 0) == 1
    assert label(store, a3, "b").item.item_id == "i1"
    assert pending(store, 0) == 0 and store.next_item(a4) is None
    assert Counter(v.item_id for v in store.votes(0)) == {"i0": 2, "i1": 3}


def test_never_the_same_item_twice(store):
    store.submit(items(3, votes_required=3, max_votes=3))
    (ann,) = annotators(store, 1)
    held = store.next_item(ann, max_leases=4)      # a live lease is not handed out again
    others = [store.next_item(ann, max_leases=4) for _ in range(2)]
    assert len({held.item.item_id, *(o.item.item_id for o in others)}) == 3
    assert store.next_item(ann, max_leases=4) is None
    for got in [held, *others]:
        store.record_label(ann, item_id=got.item.item_id, lease_id=got.lease_id, choice="a",
                           idempotency_key=got.lease_id)
    assert store.next_item(ann) is None and pending(store, 0) == 3


def test_expired_lease_returns_the_item(store_url):
    clock = Clock()
    store = QueueStore(store_url, clock=clock)
    store.submit(items(1))
    a1, a2 = annotators(store, 2)
    first = store.next_item(a1, lease_seconds=10)
    assert store.next_item(a2, lease_seconds=10) is None
    clock.t += 11
    second = store.next_item(a2, lease_seconds=10)
    assert second is not None and second.item.item_id == "i0"
    with pytest.raises(QueueError) as e:            # the late label finds its slot taken
        store.record_label(a1, item_id="i0", lease_id=first.lease_id, choice="a",
                           idempotency_key="late")
    assert e.value.status == 409
    clock.t += 11                                   # expired, but nobody took the slot:
    store.record_label(a2, item_id="i0", lease_id=second.lease_id, choice="b",
                       idempotency_key="kept")      # the work is kept
    assert pending(store, 0) == 0 and [v.choice for v in store.votes(0)] == ["b"]
    store.close()


def test_release_gives_the_item_back(store):
    store.submit(items(1))
    a1, a2 = annotators(store, 2)
    got = store.next_item(a1)
    assert store.next_item(a2) is None
    assert store.release(a1, got.lease_id) and not store.release(a1, got.lease_id)
    assert store.next_item(a2).item.item_id == "i0"


def test_idempotency_key_and_errors(store):
    store.submit(items(2, votes_required=2))
    a1, a2 = annotators(store, 2)
    got = store.next_item(a1)
    args = dict(item_id=got.item.item_id, lease_id=got.lease_id, choice="a")
    first = store.record_label(a1, idempotency_key="k1", **args)
    retry = store.record_label(a1, idempotency_key="k1", **args)
    assert first.created and not retry.created and retry.label_id == first.label_id
    assert store.read("SELECT COUNT(*) FROM labels")[0][0] == 1

    def status(ann, **kw):
        with pytest.raises(QueueError) as e:
            store.record_label(ann, **{**args, "idempotency_key": "k2", **kw})
        return e.value.status, e.value.field

    assert status(a1) == (409, "item_id")                       # labeled already
    assert status(a1, choice="maybe") == (422, "choice")
    assert status(a1, confidence=4) == (422, "confidence")
    assert status(a1, item_id="nope") == (404, "item_id")
    assert status(a2) == (404, "lease_id")                      # not a2's lease
    fresh = ({"i0", "i1"} - {got.item.item_id}).pop()
    assert status(a1, item_id=fresh, lease_id="nope") == (404, "lease_id")
    assert status(a1, item_id=fresh) == (404, "lease_id")      # a lease of another item
    mine = store.next_item(a1)                                  # a1's own key, reused
    assert status(a1, item_id=mine.item.item_id, lease_id=mine.lease_id,
                  idempotency_key="k1") == (409, "idempotency_key")
    # keys are each annotator's own: a2 may use "k1" too, and learns nothing of a1's
    assert status(a2, item_id=fresh, lease_id="nope", idempotency_key="k1") == (404, "lease_id")
    other = store.next_item(a2)
    theirs = store.record_label(a2, item_id=other.item.item_id, lease_id=other.lease_id,
                                choice="b", idempotency_key="k1")
    assert theirs.created and theirs.label_id != first.label_id


def test_a_reload_does_not_void_the_answer_on_screen(store):
    """The web page releases the lease on screen and leases again on every load, usually
    the same item: an answer from the first tab still counts (the annotator's own newer
    lease takes no slot from it), and the newer lease gives its slot back."""
    store.submit(items(1, votes_required=2))
    a1, a2, a3 = annotators(store, 3)
    tab1 = store.next_item(a1)
    assert store.release(a1, tab1.lease_id)
    tab2 = store.next_item(a1)
    assert tab2.item.item_id == tab1.item.item_id and tab2.lease_id != tab1.lease_id
    other = store.next_item(a2)                              # the item's second slot
    store.record_label(a1, item_id="i0", lease_id=tab1.lease_id, choice="a",
                       idempotency_key="tab1")
    with pytest.raises(QueueError) as e:                     # the second tab: labeled already
        store.record_label(a1, item_id="i0", lease_id=tab2.lease_id, choice="b",
                           idempotency_key="tab2")
    assert (e.value.status, e.value.field) == (409, "item_id")
    assert store.next_item(a3) is None                       # a2 holds the last slot
    assert store.release(a2, other.lease_id)
    assert store.next_item(a3).item.item_id == "i0"          # tab2's lease holds none
    assert [v.choice for v in store.votes(0)] == ["a"]


def test_a_skipped_item_cannot_be_labeled_through_its_lease(store):
    from alignloop.labeling.queue.skips import record_skip

    store.submit(items(1))
    (a1,) = annotators(store, 1)
    got = store.next_item(a1)
    assert record_skip(store, a1, item_id="i0", lease_id=got.lease_id, reason="cant_judge").created
    with pytest.raises(QueueError) as e:                     # e.g. the Back button after a skip
        store.record_label(a1, item_id="i0", lease_id=got.lease_id, choice="a",
                           idempotency_key="after-skip")
    assert (e.value.status, e.value.field) == (409, "item_id")
    assert store.votes(0) == [] and pending(store, 0) == 1


def test_m008_keeps_every_label_and_scopes_keys_to_their_annotator(store_url, monkeypatch):
    """A queue labeled under migrations 1-7 (queue-wide keys) upgrades in place: every
    label kept with its id and key; afterwards two annotators may use one key."""
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:7])
    with QueueStore(store_url, seed=0) as old:
        old.submit(items(3, votes_required=2))
        a1, a2 = annotators(old, 2)
        for ann in (a1, a1, a2):
            label(old, ann, key=f"{ann}-key-{len(old.votes(0))}")
        before = old.read("SELECT id, item_id, annotator_id, idempotency_key, choice, "
                          "guideline_version FROM labels ORDER BY id")
        assert migrations.applied(old.engine) == list(range(1, 8))
    monkeypatch.undo()
    with QueueStore(store_url, seed=0) as store:
        assert migrations.applied(store.engine)[-1] == 8
        after = store.read("SELECT id, item_id, annotator_id, idempotency_key, choice, "
                           "guideline_version FROM labels ORDER BY id")
        assert [tuple(r) for r in after] == [tuple(r) for r in before] and len(after) == 3
        got = store.next_item(a2)
        reused = store.record_label(a2, item_id=got.item.item_id, lease_id=got.lease_id,
                                    choice="a", idempotency_key=before[0].idempotency_key)
        assert reused.created and len(store.votes(0)) == 4


def test_display_order_is_random_and_recorded(store):
    store.submit(items(40))
    (ann,) = annotators(store, 1)
    rng = random.Random(1)
    shown = {}
    while (got := store.next_item(ann, rng=rng)) is not None:
        shown[got.item.item_id] = got.display_order
        store.record_label(ann, item_id=got.item.item_id, lease_id=got.lease_id, choice="a",
                           idempotency_key=got.lease_id)
    assert set(shown.values()) == {"ab", "ba"} and len(shown) == 40
    assert {r["item_id"]: r["display_order"] for r in store.export_raw()} == shown
    assert {v.item_id: v.display_order for v in store.votes(0)} == shown


def test_gold_items_mixed_in_at_the_rate(store):
    store.submit(items(300, votes_required=1))
    gold = items(100, prefix="g")
    answers = {it.item_id: "a" if k % 2 else "b" for k, it in enumerate(gold)}
    store.submit(gold, gold=answers)
    (ann,) = annotators(store, 1)
    rng = random.Random(3)
    n_gold = correct = 0
    for n in range(200):
        got = store.next_item(ann, gold_rate=0.25, rng=rng)
        choice = "a"
        if got.is_gold:
            n_gold += 1
            correct += answers[got.item.item_id] == choice
        store.record_label(ann, item_id=got.item.item_id, lease_id=got.lease_id, choice=choice,
                           idempotency_key=str(n))
    assert 30 <= n_gold <= 70                       # 50 expected; sd ~6
    p = store.progress(ann)
    assert p["gold_seen"] == n_gold and p["gold_correct"] == correct
    assert p["gold_accuracy"] == pytest.approx(correct / n_gold)
    assert p["labeled"] == 200 == store.labeled(ann) and p["available"] == 300 - (200 - n_gold)
    assert len(store.votes(0)) == 200 - n_gold      # gold votes are not the round's votes
    status = store.status()
    assert status["gold_items"] == 100 and status["rounds"][0]["items"] == 300
    assert status["annotators"][0]["gold_accuracy"] == pytest.approx(correct / n_gold)


def test_priority_orders_the_queue(store):
    store.submit([QueueItem("low", 0, "p", "a", "b", priority=0.1),
                  QueueItem("high", 0, "p", "a", "b", priority=0.9),
                  QueueItem("mid-old", 0, "p", "a", "b", priority=0.5)])
    store.submit([QueueItem("mid-new", 0, "p", "a", "b", priority=0.5)])
    (ann,) = annotators(store, 1)
    order = [label(store, ann).item.item_id for _ in range(4)]
    assert order == ["high", "mid-old", "mid-new", "low"]


def test_items_beyond_the_first_window_are_found_in_order(store):
    from alignloop.labeling.queue.leases import TOP_WINDOW

    n = TOP_WINDOW + 6
    store.submit([QueueItem(f"q{i:03d}", 0, "p", "a", "b", priority=1.0 - i / 1000,
                            votes_required=2, max_votes=2) for i in range(n)])
    first, second = annotators(store, 2)
    # the first annotator labels every item of the first window and a few more: they stay
    # open (each needs a second vote), so the window holds nothing it may label again
    seen = [label(store, first).item.item_id for _ in range(TOP_WINDOW + 3)]
    assert seen == [f"q{i:03d}" for i in range(TOP_WINDOW + 3)]
    assert label(store, first).item.item_id == f"q{TOP_WINDOW + 3:03d}"
    assert label(store, second).item.item_id == "q000"     # the window still serves others


def test_existing_items_are_left_unchanged(store):
    assert store.submit(items(3)) == 3
    changed = [QueueItem("i0", 5, "other", "x", "y", priority=9.0)] + items(5)[3:]
    assert store.submit(changed) == 2
    assert store.read("SELECT round, a FROM items WHERE item_id = 'i0'")[0] == (0, "a0")


def test_export_pairs_soft_labels(store):
    store.submit([QueueItem("x", 2, [{"role": "user", "content": "hi"}], "A", "B", "warm",
                            votes_required=3, max_votes=3),
                  QueueItem("y", 2, "p", "C", "D", votes_required=2, max_votes=2),
                  QueueItem("tie", 2, "p", "E", "F"), QueueItem("bad", 2, "p", "G", "H")])
    anns = annotators(store, 3)
    votes = {"x": ["a", "a", "b"], "y": ["b", "b"], "tie": ["tie"], "bad": ["both_bad"]}
    for item_id, choices in votes.items():
        for ann, choice in zip(anns, choices, strict=False):
            got = store.next_item(ann)
            assert got.item.item_id == item_id or pytest.fail(got)
            store.record_label(ann, item_id=item_id, lease_id=got.lease_id, choice=choice,
                               idempotency_key=got.lease_id)
    pairs = {p.chosen: p for p in store.export_pairs()}
    assert set(pairs) == {"A", "D"}                 # tie-only (p = 0.5) and both_bad skipped
    x, y = pairs["A"], pairs["D"]
    assert x.rejected == "B" and 0.5 < x.p_chosen < 1 and x.n_votes == 3
    assert y.rejected == "C" and 0.5 < y.p_chosen < 1 and y.n_votes == 2
    assert x.source == "human" and x.slice == "warm" and x.round == 2 and x.is_chat
    assert store.export_pairs(round=7) == []
    raw = store.export_raw()
    assert len(raw) == 7 and {r["annotator"] for r in raw} == {"ann0", "ann1", "ann2"}
    assert all(r["round"] == 2 and r["time"].endswith("+00:00") for r in raw)


def test_status_agreement(store):
    store.submit(items(6, votes_required=2, max_votes=2))
    a1, a2 = annotators(store, 2)
    for k in range(6):
        for ann in (a1, a2):
            label(store, ann, "a" if k % 2 or ann == a1 else "b")
    judge = {f"i{k}": 0.8 for k in range(6)}
    s = store.status(judge_p=judge)
    (r0,) = s["rounds"]
    assert r0 == {"round": 0, "items": 6, "complete": 6, "pending": 0, "labels": 12,
                  "alpha": pytest.approx(r0["alpha"])} and r0["alpha"] < 0.5
    (pair,) = s["kappa"]
    assert pair["shared"] == 6 and pair["a"] == "ann0"
    by_name = {a["name"]: a for a in s["annotators"]}
    assert by_name["ann0"]["judge_agreement"] == 1.0 and by_name["ann1"]["judge_agreement"] == 0.5
    assert s["judge"] == {"votes": 12, "agreement": 0.75}


def test_push_and_wait(store):
    pairs = [Pair("p1", "good", "bad"), Pair("p2", "fine", "worse", slice="s2")]
    assert store.push(pairs, round=3, votes_required=1) == 2
    assert store.push(pairs, round=3) == 0
    (ann,) = annotators(store, 1)
    got = store.next_item(ann)
    assert got.item.a in ("good", "fine") and got.item.round == 3
    assert got.item.item_id in {p.pair_id for p in pairs}

    def later():
        time.sleep(0.3)
        store.record_label(ann, item_id=got.item.item_id, lease_id=got.lease_id, choice="a",
                           idempotency_key="w1")
        label(store, ann)

    t = threading.Thread(target=later)
    start = time.monotonic()
    t.start()
    assert store.wait_or_exit(3, 0, timeout_s=20, poll_s=0.05, progress=True) == 2
    t.join()
    assert time.monotonic() - start < 10
    assert len(store.votes(3)) == 2 and pending(store, 3) == 0
    start = time.monotonic()                        # times out with what is there
    assert store.wait_or_exit(3, 5, timeout_s=0.3, poll_s=0.05, progress=False) == 2
    assert 0.25 <= time.monotonic() - start < 5


def test_wait_or_exit(store):
    store.submit(items(3, votes_required=2))
    (ann,) = annotators(store, 1)
    label(store, ann)
    with pytest.raises(WaitingForLabels) as e:
        store.wait_or_exit(0, 5, mode="exit")
    assert str(e.value) == "waiting for 5 labels on round 0 (1 so far); rerun to resume"
    with pytest.raises(WaitingForLabels, match="waiting for 6 labels"):
        store.wait_or_exit(0, 0, mode="exit")       # 0: every item's votes
    assert store.wait_or_exit(0, 1, mode="exit") == 1
    assert store.wait_or_exit(0, 5, mode="block", timeout_s=0.1, poll_s=0.05,
                              progress=False) == 1


def test_last_open_slot_goes_to_one_client(store):
    store.submit(items(5, votes_required=2, max_votes=2))
    anns = annotators(store, 16)
    barrier = threading.Barrier(16)

    def grab(ann):
        barrier.wait()
        got = store.next_item(ann)
        return got and got.item.item_id

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(grab, anns))
    assert Counter(g for g in got if g) == {f"i{k}": 2 for k in range(5)}


def test_concurrent_labeling_loses_and_duplicates_nothing(store):
    n_items, n_threads = 1100, 16
    store.submit(items(n_items, votes_required=2, max_votes=3))
    anns = annotators(store, n_threads)
    acked: dict[int, tuple[str, int, str]] = {}     # label_id -> (item, annotator, choice)
    lock = threading.Lock()
    errors: list[BaseException] = []
    pool = ThreadPoolExecutor(8)

    def work(ann: int, seed: int) -> None:
        rng = random.Random(seed)
        idle = 0
        while idle < 20:
            got = store.next_item(ann, rng=rng)
            if got is None:                         # others may still give items back
                if pending(store, 0) == 0:
                    return
                idle += 1
                time.sleep(0.05)
                continue
            idle = 0
            if rng.random() < 0.03:                 # a skip: the item goes back
                store.release(ann, got.lease_id)
                continue
            req = dict(item_id=got.item.item_id, lease_id=got.lease_id,
                       choice=rng.choice("aab"), idempotency_key=f"{ann}-{got.lease_id}")
            roll = rng.random()
            if roll < 0.1:                          # the same request twice at once
                futs = [pool.submit(store.record_label, ann, **req) for _ in range(2)]
                res = [f.result() for f in futs]
                assert res[0].label_id == res[1].label_id
                assert sorted(r.created for r in res) == [False, True]
            else:
                res = [store.record_label(ann, **req)]
                if roll < 0.3:                      # a retry after a lost response
                    again = store.record_label(ann, **req)
                    assert again == type(again)(res[0].label_id, False)
            with lock:
                acked[res[0].label_id] = (req["item_id"], ann, req["choice"])

    def run(ann: int, seed: int) -> None:
        try:
            work(ann, seed)
        except BaseException as e:                  # noqa: BLE001 - reported below
            errors.append(e)

    start = time.monotonic()
    threads = [threading.Thread(target=run, args=(a, k)) for k, a in enumerate(anns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pool.shutdown()
    elapsed = time.monotonic() - start
    assert not errors, errors[:3]

    rows = store.read("SELECT id, item_id, annotator_id, choice FROM labels ORDER BY id")
    assert len(rows) >= 2000
    assert {r.id: (r.item_id, r.annotator_id, r.choice) for r in rows} == acked   # none lost
    assert len({(r.item_id, r.annotator_id) for r in rows}) == len(rows)          # no duplicates
    by_item = defaultdict(list)
    for r in rows:
        by_item[r.item_id].append(r.choice)
    assert len(by_item) == n_items and pending(store, 0) == 0
    for choices in by_item.values():                # exactly the votes each item needs
        assert len(choices) == (2 if choices[0] == choices[1] else 3)
    counters = store.read("SELECT COUNT(*) FROM items WHERE n_labels <> needed OR is_open <> 0")
    assert counters[0][0] == 0
    print(f"\n{store.dialect}: {len(rows)} labels by {n_threads} threads in {elapsed:.1f} s "
          f"({len(rows) / elapsed:.0f} labels/s)")


def test_human_config_queue_fields():
    from alignloop.config.base import ConfigError
    from alignloop.config.labeling import HumanConfig

    cfg = HumanConfig()
    assert (cfg.lease_minutes, cfg.gold_rate, cfg.wait, cfg.min_labels) == (10.0, 0.0, "block", 0)
    for bad in ({"wait": "later"}, {"gold_rate": 1.0}, {"lease_minutes": 0},
                {"wait_timeout_s": -1}, {"min_labels": -1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            HumanConfig(**bad)


def test_wait_shows_labels_over_their_target(capsys):
    """The progress line counts labels against the target from its first line on (it used
    to open without a total and print "human labels: 0label")."""
    from alignloop.labeling.queue import stats

    class Counts:                                   # (labels, votes missing, items pending)
        def __init__(self):
            self.seen = iter([(0, 40, 20), (12, 28, 14), (40, 0, 0)])

        def round_counts(self, round):
            return next(self.seen)

    assert stats.wait(Counts(), 3, 0, timeout_s=30, poll_s=0) == 40
    # stderr is not a terminal here: plain lines (alignloop.progress), one per tenth
    lines = [line.strip() for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert any(line.startswith("round 3: human labels: 12/40 labels (30%)") and
               line.endswith(", 14 items pending") for line in lines)
    assert lines[-1].startswith("round 3: human labels: 40/40 labels (100%)")
    assert not any("0label" in line for line in lines)


def test_a_wait_says_it_started_and_that_it_ran_out(capsys, caplog):
    """A `wait: block` that ran out went on without a word, and when stderr was a file it
    had not even said that it was waiting."""
    import logging

    from alignloop.labeling.queue import stats

    class Counts:                                   # nobody labels
        def round_counts(self, round):
            return 0, 8, 4

    with caplog.at_level(logging.WARNING, logger="alignloop"):
        assert stats.wait(Counts(), 1, 0, timeout_s=0.05, poll_s=0.01) == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert lines and lines[0].startswith("round 1: human labels: 0/8 labels (0%)"), lines
    assert ("round 1: the wait for human labels ran out after 0.05s with 0 of 8 labels (4 "
            "items short of their votes)") in caplog.text
    assert "--redo-from 1:label" in caplog.text


def test_next_item_for_an_unknown_annotator_id_is_a_queue_error(store):
    # a driver script's wrong id gave the driver's raw FOREIGN KEY error with its SQL
    store.submit([QueueItem("x1", 0, "Say hi.", "Hi!", "Go.")])
    for _ in range(2):      # and the store still works afterwards
        with pytest.raises(QueueError, match="no annotator has the id 424242") as e:
            store.next_item(424242)
        assert (e.value.status, e.value.field) == (404, "annotator")
    me = store.authenticate(store.add_annotator("ada"))
    assert store.next_item(me.id).item.item_id == "x1"
