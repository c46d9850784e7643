"""`alignloop queue ...`: annotators, import/export, status, terminal labeling, bots."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from alignloop.cli import main
from alignloop.data import read_pairs, read_pairs_parquet
from alignloop.labeling.handoff import QueueItem
from alignloop.labeling.queue.store import QueueStore

from .queue_helpers import pending

PAIRS = [
    {"prompt": "Greet the customer.", "chosen": "Hello, lovely to see you!", "rejected": "What."},
    {"prompt": [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "My parcel is late <again>."}],
     "chosen": [{"role": "assistant", "content": "Sorry! It ships today."}],
     "rejected": [{"role": "assistant", "content": "Not my problem."}], "slice": "complaints"},
    {"prompt": "Say thanks.", "chosen": "Thank you so much!", "rejected": "k"},
]


def _at(run_dir) -> tuple[str, str]:
    """The queue of a run directory, as every queue command takes it."""
    return ("--run-dir", str(run_dir))


def _run(capsys, *argv: str) -> str:
    assert main(["-q", *argv]) == 0
    return capsys.readouterr().out


@pytest.fixture
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in PAIRS))
    return path


def test_queue_help_imports_nothing_heavy():
    code = ("import sys; from alignloop.cli import build_parser; build_parser(); "
            "heavy = [m for m in ('fastapi', 'sqlalchemy', 'uvicorn', 'rich', 'torch') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_add_annotator_prints_a_token_that_authenticates(tmp_path, capsys):
    run_dir = tmp_path / "run"
    token = _run(capsys, "queue", "add-annotator", *_at(run_dir), "ada").strip()
    admin = _run(capsys, "queue", "add-annotator", "--admin", "--db",
                 f"sqlite:///{run_dir / 'queue.db'}", "root").strip()
    with QueueStore.open(run_dir) as store:
        who = store.authenticate(token)
        assert who is not None and (who.name, who.role) == ("ada", "annotator")
        assert store.authenticate(admin).role == "admin"
    assert main(["queue", "add-annotator", *_at(run_dir), "ada"]) == 2   # the name is taken
    assert "already exists" in capsys.readouterr().err
    assert "disabled 'ada'" in _run(capsys, "queue", "disable-annotator", *_at(run_dir), "ada")
    with QueueStore.open(run_dir) as store:
        assert store.authenticate(token) is None and store.authenticate(admin) is not None
    assert main(["queue", "disable-annotator", *_at(run_dir), "nobody"]) == 2
    assert "no annotator named 'nobody'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["queue", "status"])
    assert e.value.code == 2 and "--run-dir" in capsys.readouterr().err


def test_import_export_round_trip_and_status(tmp_path, capsys, pairs_file):
    run_dir = tmp_path / "run"
    out = _run(capsys, "queue", "import", *_at(run_dir), str(pairs_file), "--round", "2",
               "--votes-required", "2")
    assert "queued 3 new items for round 2" in out
    assert "queued 0 new items" in _run(capsys, "queue", "import", *_at(run_dir),
                                        str(pairs_file), "--round", "2")
    with QueueStore.open(run_dir) as store:
        names = ["ada", "bob"]
        for name in names:
            me = store.authenticate(store.add_annotator(name))
            while (a := store.next_item(me.id)) is not None:   # both prefer the chosen (a)
                store.record_label(me.id, item_id=a.item.item_id, lease_id=a.lease_id,
                                   choice="a", confidence=3, idempotency_key=f"{name}{a.lease_id}")
        assert pending(store, 2) == 0

    status = _run(capsys, "queue", "status", *_at(run_dir))
    assert "3 items, 6 labels" in status
    # alpha is undefined ("-") when every vote is the same
    assert any(line.split()[:6] == ["2", "3", "3", "0", "6", "-"] for line in status.splitlines())
    assert "ada" in status and "bob" in status and "kappa" not in status   # too few shared
    full = json.loads(_run(capsys, "queue", "status", *_at(run_dir), "--json"))
    assert full["rounds"][0]["labels"] == 6 and full["labels"] == 6

    originals = {p.pair_id: p for p in read_pairs(pairs_file)[0]}
    for suffix in ("jsonl", "parquet"):
        dest = tmp_path / f"dpo.{suffix}"
        assert "wrote 3 pairs" in _run(capsys, "queue", "export", *_at(run_dir), "--format",
                                       "dpo", "--out", str(dest))
        # parquet is the pairs.parquet artifact (prompts as JSON text): its own reader
        back = {p.pair_id: p for p in (read_pairs_parquet(dest) if suffix == "parquet"
                                       else read_pairs(dest)[0])}
        assert back.keys() == originals.keys()
        for pid, p in back.items():
            o = originals[pid]
            assert (p.prompt, p.chosen, p.rejected) == (o.prompt, o.chosen, o.rejected)
            assert p.p_chosen > 0.5   # both voted for the chosen response
    raw = tmp_path / "raw.jsonl"
    assert "wrote 6 labels" in _run(capsys, "queue", "export", *_at(run_dir), "--format",
                                    "raw", "--out", str(raw))
    rows = [json.loads(line) for line in raw.read_text().splitlines()]
    assert {r["annotator"] for r in rows} == {"ada", "bob"} and {r["choice"] for r in rows} == {"a"}
    assert {r["display_order"] for r in rows} <= {"ab", "ba"}


def test_simulate_with_three_bots_labels_every_item(tmp_path, capsys, pairs_file):
    run_dir = tmp_path / "run"
    _run(capsys, "queue", "import", *_at(run_dir), "builtin:demo-pairs", "--votes-required", "2",
         "--max-votes", "3")
    out = _run(capsys, "queue", "simulate", *_at(run_dir), "--panel", "demo", "--annotators", "3")
    assert "3 bots (demo panel) recorded" in out
    with QueueStore.open(run_dir) as store:
        assert pending(store, 0) == 0
        votes = store.votes(0)
        assert {v.annotator for v in votes} == {"demo-bot-1", "demo-bot-2", "demo-bot-3"}
        assert len(votes) >= 2 * 96
        n = len(votes)
    assert f"recorded {n} labels" in out
    # a second run finds nothing left, with new bot names (the old tokens were shown once)
    out = _run(capsys, "queue", "simulate", *_at(run_dir), "--annotators", "1")
    assert "recorded 0 labels" in out


def test_simulate_names_the_known_panels(tmp_path, capsys):
    assert main(["-q", "queue", "simulate", *_at(tmp_path / "run"), "--panel", "nope"]) == 2
    assert "unknown panel 'nope'; known: demo" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()      # refused before the queue is opened


def test_terminal_labeling(tmp_path, capsys, pairs_file):
    run_dir = tmp_path / "run"
    _run(capsys, "queue", "import", *_at(run_dir), str(pairs_file))
    token = _run(capsys, "queue", "add-annotator", *_at(run_dir), "tty").strip()
    # first item: 1 (left), confidence 3, a comment; second: 4 (both bad), default confidence;
    # then quit
    keys = "1\n3\nlooks fine [bold]x[/bold]\n4\n\n\nq\n"
    proc = subprocess.run([sys.executable, "-m", "alignloop.cli", "queue", "label", *_at(run_dir)],
                          input=keys, capture_output=True, text=True, timeout=60,
                          env={"ALIGNLOOP_TOKEN": token, "COLUMNS": "100", "PATH": "/usr/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "2 labels recorded" in proc.stdout
    assert "My parcel is late <again>." in proc.stdout or "Greet the customer." in proc.stdout
    with QueueStore.open(run_dir) as store:
        votes = sorted(store.votes(0), key=lambda v: v.created_at)
        assert len(votes) == 2 and pending(store, 0) == 1   # the third was released on quit
        first, second = votes
        assert first.choice == first.display_order[0] and first.confidence == 3
        assert first.comment == "looks fine [bold]x[/bold]"
        assert (second.choice, second.confidence) == ("both_bad", 2)


def test_terminal_labeling_says_why_it_stops(tmp_path, capsys, pairs_file):
    """Piped answers that ended mid-item stopped without a word, and an annotator who had
    voted on every open item read "Nothing to label right now"."""
    run_dir = tmp_path / "run"
    _run(capsys, "queue", "import", *_at(run_dir), str(pairs_file), "--votes-required", "2")
    token = _run(capsys, "queue", "add-annotator", *_at(run_dir), "tty").strip()

    def label(keys: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "alignloop.cli", "queue", "label",
                               *_at(run_dir)], input=keys, capture_output=True, text=True,
                              timeout=60, env={"ALIGNLOOP_TOKEN": token, "COLUMNS": "100",
                                               "PATH": "/usr/bin"})
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert "input ended in the middle of an item, which is not recorded" in label("1\n")
    out = label("1\n2\n\n" * 3)
    assert "3 labels recorded" in out
    assert "Nothing left that you may label: 3 items still wait for votes from other" in out


def test_terminal_labeling_shows_escape_sequences_instead_of_sending_them(tmp_path, capsys):
    run_dir = tmp_path / "run"
    hostile = "\x1b[2J\x1b]0;owned\x07\x1b[31mred\x9b1m"   # clear screen, window title, colours
    with QueueStore.open(run_dir) as store:
        store.submit([QueueItem("esc", 0, [{"role": "user\x1b[8m", "content": "hi " + hostile}],
                                "left " + hostile, "right\rover\u202etxt.exe", votes_required=1,
                                max_votes=1)])
    token = _run(capsys, "queue", "add-annotator", *_at(run_dir), "tty").strip()
    proc = subprocess.run([sys.executable, "-m", "alignloop.cli", "queue", "label", *_at(run_dir)],
                          input="q\n", capture_output=True, text=True, timeout=60,
                          env={"ALIGNLOOP_TOKEN": token, "COLUMNS": "120", "PATH": "/usr/bin"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert not any(c in out for c in "\x1b\x07\x9b\r\u202e"), repr(out)
    for shown in (r"\x1b[2J", r"\x1b]0;owned\x07", r"\x9b1m", r"user\x1b[8m", r"right\rover",
                  r"\u202etxt.exe"):
        assert shown in out, (shown, out)


def test_the_queue_is_an_option_and_a_wrong_order_is_an_error(tmp_path, monkeypatch, capsys,
                                                               pairs_file):
    """The README once said `add-annotator RUN_DIR alice` while the parser took `alice
    RUN_DIR`: either order made a queue named after the other argument. Now the queue is
    `--run-dir`/`--db` everywhere; a positional run directory is an error, and nothing is
    created."""
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    _run(capsys, "queue", "add-annotator", *_at(run_dir), "ada")
    before = sorted(p.name for p in tmp_path.iterdir())
    wrong = [["add-annotator", "alice", str(run_dir)], ["add-annotator", str(run_dir), "alice"],
             ["import", str(pairs_file), str(run_dir)], ["import", str(run_dir), str(pairs_file)],
             ["status", str(run_dir)], ["serve", str(run_dir)], ["export", str(run_dir)],
             ["label", str(run_dir)], ["disable-annotator", str(run_dir), "ada"]]
    for argv in wrong:
        with pytest.raises(SystemExit) as e:
            main(["-q", "queue", *argv])
        assert e.value.code == 2, argv
        capsys.readouterr()
    # the run directory where a name or a file belongs, with the queue given as well
    assert main(["-q", "queue", "add-annotator", *_at(tmp_path / "other"), str(run_dir)]) == 2
    assert "is a run directory" in capsys.readouterr().err
    assert main(["-q", "queue", "import", *_at(tmp_path / "other"), str(run_dir)]) == 2
    assert "is a run directory" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before     # no new queue anywhere
    with QueueStore.open(run_dir) as store:
        assert [a.name for a in store.annotators()] == ["ada"]


@pytest.mark.parametrize("argv", [["status"], ["export", "--out", "x.jsonl"], ["serve"],
                                  ["label", "--token", "t"], ["disable-annotator", "ada"],
                                  ["simulate"]])
def test_only_import_and_add_annotator_create_a_queue(tmp_path, capsys, argv):
    missing = tmp_path / "typo"
    for where in (["--run-dir", str(missing)], ["--db", f"sqlite:///{missing / 'queue.db'}"]):
        assert main(["-q", "queue", argv[0], *where, *argv[1:]]) == 2
        assert f"no queue at {missing / 'queue.db'}" in capsys.readouterr().err
    assert not missing.exists()


def test_run_pauses_for_labels_with_its_own_exit_code_and_says_how_to_go_on(tmp_path, capsys):
    # labeling.human.wait: exit is a planned pause: exit code 3 (an error is 2), the stage
    # is "waiting" in status (not failed), and the message names the commands that label
    run_dir = tmp_path / "run"
    sets = ["loop.eval_prompts=6", "loop.prompts_per_round=4", "generation.n=3",
            "generation.max_new_tokens=8", "train.max_steps=2", "labeling.human.budget=4",
            "loop.simulate_labels=false", "labeling.human.wait=exit", "loop.rounds=2"]
    argv = ["-q", "run", "configs/tiny.yaml", "--run-dir", str(run_dir),
            *[a for s in sets for a in ("--set", s)]]
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert ("paused at round 1, stage label: waiting for 8 labels on round 1 (0 so far); "
            "rerun to resume.\nLabel them first") in err                  # 4 pairs, 2 votes
    assert f"alignloop queue serve --run-dir {run_dir}" in err
    assert f"alignloop queue label --run-dir {run_dir}" in err
    assert f"alignloop queue add-annotator --run-dir {run_dir} NAME" in err
    assert "error" not in err
    assert main(["-q", "status", str(run_dir)]) == 0
    status = capsys.readouterr().out
    assert "label      waiting" in status and "failed" not in status, status
    assert "counted when the run paused; `alignloop queue status` counts" in status
    assert main(argv) == 3                       # still short: paused again, nothing lost


def test_queue_errors_exit_2_and_export_refuses_what_it_would_not_honour(tmp_path, capsys,
                                                                        pairs_file):
    """A bad token exited 1; `export --out x.csv` wrote JSONL, `--format hf --out hf.parquet`
    made a folder of that name, a round the queue lacks wrote an empty file, and `--public`
    without `--push-to-hub` was ignored, all with exit 0."""
    run_dir = tmp_path / "run"
    _run(capsys, "queue", "import", *_at(run_dir), str(pairs_file), "--round", "2")
    assert main(["-q", "queue", "label", *_at(run_dir), "--token", "wrong"]) == 2
    assert "that token is not valid" in capsys.readouterr().err
    out = tmp_path / "exports"
    for extra, want in ((["--out", str(out / "x.csv")], "writes .parquet or .jsonl, not .csv"),
                        (["--format", "hf", "--out", str(out / "hf.parquet")],
                         "the hf format writes a datasets folder"),
                        (["--round", "7", "--out", str(out / "r7.jsonl")],
                         "--round 7: the queue holds no item of that round (its rounds: 2)"),
                        (["--out", str(out / "p.jsonl"), "--public"],
                         "without --push-to-hub nothing is uploaded")):
        assert main(["-q", "queue", "export", *_at(run_dir), *extra]) == 2, extra
        assert want in capsys.readouterr().err, extra
    assert not out.exists()


def test_dpo_export_keeps_the_item_id_as_pair_id_when_people_flip_a_pair(tmp_path, capsys,
                                                                         pairs_file):
    """An export's pair_id was derived from (prompt, chosen, rejected), so a pair people (or
    an adjudication) turned round got a new id that joined to no vote of the raw export."""
    run_dir = tmp_path / "run"
    _run(capsys, "queue", "import", *_at(run_dir), str(pairs_file), "--votes-required", "1")
    with QueueStore.open(run_dir) as store:
        me = store.authenticate(store.add_annotator("ada"))
        while (a := store.next_item(me.id)) is not None:       # prefers the rejected (b)
            store.record_label(me.id, item_id=a.item.item_id, lease_id=a.lease_id,
                               choice="b", confidence=3, idempotency_key=a.lease_id)
    originals = {p.pair_id: p for p in read_pairs(pairs_file)[0]}
    dest, raw = tmp_path / "dpo.parquet", tmp_path / "raw.jsonl"
    _run(capsys, "queue", "export", *_at(run_dir), "--format", "dpo", "--out", str(dest))
    _run(capsys, "queue", "export", *_at(run_dir), "--format", "raw", "--out", str(raw))
    back = {p.pair_id: p for p in read_pairs_parquet(dest)}
    assert back.keys() == originals.keys()
    for pid, p in back.items():
        assert (p.chosen, p.rejected) == (originals[pid].rejected, originals[pid].chosen)
    assert {json.loads(line)["item_id"] for line in raw.read_text().splitlines()} == set(back)
