"""Reading, validating and writing preference pairs (alignloop.data), and the bundled demo set."""

from __future__ import annotations

import json
import logging
import math
import re

import pytest
from alignloop.config import DataConfig
from alignloop.data import (
    DataError,
    read_pairs,
    read_pairs_from_config,
    read_pairs_parquet,
    write_pairs,
)
from alignloop.records import Pair

PLAIN = {"prompt": "Say hi.", "chosen": "Hi there!", "rejected": "No."}
CHAT_PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"}]
HH_CHOSEN = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: Great, thanks!"
HH_REJECTED = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: Go away."


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def write_jsonl(path, rows) -> str:
    """Rows are dicts (dumped as JSON) or raw strings (written as they are)."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# --------------------------------------------------------------------------- formats


def test_plain_rows_with_defaults_and_metadata(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [
        PLAIN,
        {**PLAIN, "chosen": "Hello!", "p_chosen": 0.75, "weight": 2, "pair_id": 7, "slice": "greet"},
    ])
    pairs, report = read_pairs(path)
    assert (report.n_read, report.n_valid, report.skipped) == (2, 2, {})
    first, second = pairs
    assert (first.prompt, first.chosen, first.rejected) == ("Say hi.", "Hi there!", "No.")
    assert (first.p_chosen, first.weight, first.source, first.slice) == (1.0, 1.0, "static", "")
    assert first.pair_id and first.origin == f"{path} row 1"
    assert (second.p_chosen, second.weight, second.pair_id, second.slice) == (0.75, 2.0, "7", "greet")


def test_conversational_with_explicit_prompt(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [
        {"prompt": CHAT_PROMPT, "chosen": assistant("Hi!"), "rejected": assistant("What.")}])
    (pair,), _ = read_pairs(path)
    assert pair.prompt == CHAT_PROMPT and pair.is_chat
    assert (pair.chosen, pair.rejected) == ("Hi!", "What.")


def test_conversational_implicit_prompt_takes_shared_leading_messages(tmp_path):
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
             {"role": "user", "content": "tell me a joke"}]
    path = write_jsonl(tmp_path / "implicit.jsonl", [
        {"chosen": turns + assistant("Why did the tomato blush?"), "rejected": turns + assistant("No.")}])
    (pair,), _ = read_pairs(path, format="conversational")
    assert pair.prompt == turns
    assert (pair.chosen, pair.rejected) == ("Why did the tomato blush?", "No.")


def test_text_prompt_repeated_inside_the_conversations_is_not_doubled(tmp_path):
    # The layout of e.g. ultrafeedback_binarized: prompt text plus full conversations.
    user = [{"role": "user", "content": "What is 2+2?"}]
    path = write_jsonl(tmp_path / "uf.jsonl", [
        {"prompt": "What is 2+2?", "chosen": user + assistant("4"), "rejected": user + assistant("5")}])
    (pair,), _ = read_pairs(path)
    assert pair.prompt == user and (pair.chosen, pair.rejected) == ("4", "5")


def test_hh_transcripts_split_into_prompt_turns_and_final_answer(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}])
    for fmt in ("auto", "hh"):
        (pair,), _ = read_pairs(path, format=fmt)
        assert pair.prompt == [{"role": "user", "content": "hi"},
                               {"role": "assistant", "content": "hello"},
                               {"role": "user", "content": "how are you?"}]
        assert (pair.chosen, pair.rejected) == ("Great, thanks!", "Go away.")


def test_column_mapping(tmp_path):
    path = write_jsonl(tmp_path / "mapped.jsonl", [
        {"question": "Say hi.", "good": "Hi!", "bad": "No.", "prob": 0.9, "group": "easy"}])
    columns = {"prompt": "question", "chosen": "good", "rejected": "bad", "p_chosen": "prob",
               "slice": "group"}
    (pair,), _ = read_pairs(path, columns=columns)
    assert (pair.prompt, pair.chosen, pair.rejected, pair.p_chosen, pair.slice) == (
        "Say hi.", "Hi!", "No.", 0.9, "easy")
    with pytest.raises(DataError, match=r"mapped.jsonl: no row has the column 'w' that "
                                         r"data.columns maps 'weight' to \(columns seen: "
                                         r"\['bad', 'good', 'group', 'prob', 'question'\]\)"):
        read_pairs(path, columns={**columns, "weight": "w"})
    # a mapped optional column some rows leave out (JSONL) is read as missing there
    sparse = write_jsonl(tmp_path / "sparse.jsonl", [
        {"question": "Say hi.", "good": "Hi!", "bad": "No.", "prob": 0.9},
        {"question": "Say bye.", "good": "Bye!", "bad": "No."}])
    no_slice = {k: v for k, v in columns.items() if k != "slice"}
    first, second = read_pairs(sparse, columns=no_slice)[0]
    assert (first.p_chosen, second.p_chosen) == (0.9, 1.0)
    with pytest.raises(ValueError, match="unknown field"):
        read_pairs(path, columns={"answer": "good"})


# --------------------------------------------------------------------------- invalid rows

INVALID = [
    ("missing field", {"prompt": "p", "chosen": "a"}, "missing field 'rejected'"),
    ("missing field", {"chosen": "a", "rejected": "b"}, "missing field 'prompt'"),
    ("non-string text", {**PLAIN, "chosen": 5}, "chosen is not a string (got int)"),
    ("malformed message", {"prompt": [{"role": "bot", "content": "x"}], "chosen": assistant("a"),
                           "rejected": assistant("b")}, "prompt message 1 has role 'bot'"),
    ("malformed message", {"prompt": ["hello"], "chosen": assistant("a"), "rejected": assistant("b")},
     "prompt message 1 is not a {role, content} mapping"),
    ("malformed message", {"prompt": CHAT_PROMPT, "chosen": [{"role": "user", "content": "a"}],
                           "rejected": assistant("b")}, "the last chosen message has role 'user'"),
    ("empty text", {**PLAIN, "rejected": "  \n"}, "rejected is empty"),
    ("empty text", {"prompt": [{"role": "user", "content": ""}], "chosen": assistant("a"),
                    "rejected": assistant("b")}, "prompt message 1 is empty"),
    ("identical responses", {**PLAIN, "rejected": PLAIN["chosen"]}, "chosen is identical to rejected"),
    ("invalid p_chosen", {**PLAIN, "p_chosen": 1.5}, r"p_chosen is 1.5, outside [0, 1]"),
    ("invalid p_chosen", {**PLAIN, "p_chosen": "0.9"}, "p_chosen is not a finite number"),
    ("invalid weight", {**PLAIN, "weight": 0}, "weight is 0.0; it must be positive"),
    ("invalid weight", {**PLAIN, "weight": math.inf}, "weight is not a finite number"),
    ("mismatched prompts", {"chosen": HH_CHOSEN, "rejected": HH_REJECTED.replace("hi", "yo")},
     "chosen and rejected have different turns before the final Assistant answer"),
    ("mismatched prompts", {"chosen": [{"role": "user", "content": "a"}] + assistant("b"),
                            "rejected": [{"role": "user", "content": "x"}] + assistant("c")},
     "chosen and rejected differ before their final message"),
    ("invalid JSON", '{"prompt": "p", "chosen": ', "line is not valid JSON"),
    ("not an object", "[1, 2]", "row is a list, not an object"),
]


@pytest.mark.parametrize("reason,row,message", INVALID, ids=[f"{r}:{m[:24]}" for r, _, m in INVALID])
def test_invalid_row_errors_with_file_and_row(tmp_path, reason, row, message):
    # Line 2 is blank: JSONL row numbers are line numbers, so the bad row is row 3.
    path = write_jsonl(tmp_path / "bad.jsonl", [PLAIN, "", row])
    with pytest.raises(DataError) as err:
        read_pairs(path)
    assert f"bad.jsonl row 3: {message}" in str(err.value)


@pytest.mark.parametrize("reason,row,message", INVALID, ids=[f"{r}:{m[:24]}" for r, _, m in INVALID])
def test_invalid_row_is_skipped_and_counted(tmp_path, reason, row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [PLAIN, row, {**PLAIN, "chosen": "Hey!"}])
    pairs, report = read_pairs(path, on_invalid="skip")
    assert [p.chosen for p in pairs] == ["Hi there!", "Hey!"]
    assert [p.origin.rsplit(" ", 1)[1] for p in pairs] == ["1", "3"]
    assert (report.n_read, report.n_valid, report.skipped) == (3, 2, {reason: 1})


def test_explicit_format_rejects_rows_of_another_shape(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"chosen": "just text", "rejected": "other text"}])
    with pytest.raises(DataError, match=r"x.jsonl row 1: chosen has no '\\n\\nAssistant:' turn"):
        read_pairs(path, format="hh")
    path = write_jsonl(tmp_path / "y.jsonl", [{"prompt": CHAT_PROMPT, "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match="y.jsonl row 1: prompt is not a string"):
        read_pairs(path, format="plain")


def test_skip_logs_counts_and_all_invalid_is_an_error(tmp_path, caplog):
    path = write_jsonl(tmp_path / "mixed.jsonl", [PLAIN, "not json", {**PLAIN, "weight": -1}])
    with caplog.at_level(logging.WARNING, logger="alignloop.data"):
        _, report = read_pairs(path, on_invalid="skip")
    assert report.skipped == {"invalid JSON": 1, "invalid weight": 1}
    assert "skipped 2 of 3 rows" in caplog.text and "invalid weight (1)" in caplog.text
    path = write_jsonl(tmp_path / "none.jsonl", ["not json", {**PLAIN, "weight": -1}])
    with pytest.raises(DataError, match="none.jsonl: no valid pairs"):
        read_pairs(path, on_invalid="skip")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no valid pairs"):
        read_pairs(str(tmp_path / "empty.jsonl"))


def test_a_reused_pair_id_for_a_different_pair_is_invalid(tmp_path):
    path = write_jsonl(tmp_path / "dup.jsonl", [
        {**PLAIN, "pair_id": "a"}, {**PLAIN, "pair_id": "a"}, {**PLAIN, "chosen": "Yo", "pair_id": "a"}])
    with pytest.raises(DataError, match="dup.jsonl row 3: pair_id 'a' is already used by .*row 1"):
        read_pairs(path)


# --------------------------------------------------------------------------- sources


def test_json_list_source_counts_rows_from_one(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([PLAIN, {**PLAIN, "chosen": PLAIN["rejected"]}]))
    with pytest.raises(DataError, match="pairs.json row 2: chosen is identical to rejected"):
        read_pairs(str(path))
    path.write_text(json.dumps(PLAIN) + "\n" + json.dumps({**PLAIN, "chosen": "Hey!"}) + "\n")
    assert [p.chosen for p in read_pairs(str(path))[0]] == ["Hi there!", "Hey!"]  # JSON lines in .json
    path.write_text(json.dumps({"rows": [PLAIN]}))
    with pytest.raises(DataError, match="expected a list of objects"):
        read_pairs(str(path))


def test_parquet_source_with_chat_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": CHAT_PROMPT, "chosen": assistant("Hi!"), "rejected": assistant("What.")},
            {"prompt": CHAT_PROMPT, "chosen": assistant("Same"), "rejected": assistant("Same")}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet")
    with pytest.raises(DataError, match="pairs.parquet row 2: chosen is identical"):
        read_pairs(str(tmp_path / "pairs.parquet"))
    (pair,), _ = read_pairs(str(tmp_path / "pairs.parquet"), on_invalid="skip")
    assert pair.prompt == CHAT_PROMPT and pair.chosen == "Hi!"


def test_hf_sources_local_files_and_saved_dataset(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    path = write_jsonl(tmp_path / "pairs.jsonl", [PLAIN, {**PLAIN, "chosen": "Hey!"}])
    pairs, _ = read_pairs(f"hf:json:{path}")
    assert [p.chosen for p in pairs] == ["Hi there!", "Hey!"]
    assert pairs[1].origin == f"hf:json:{path}[train] row 2"

    datasets.DatasetDict({"test": datasets.Dataset.from_list([PLAIN])}).save_to_disk(tmp_path / "saved")
    (pair,), _ = read_pairs(f"hf:{tmp_path / 'saved'}", split="test")
    assert pair.chosen == "Hi there!"
    with pytest.raises(DataError, match="no split 'train'"):
        read_pairs(f"hf:{tmp_path / 'saved'}")


def test_missing_sources_name_the_path(tmp_path):
    for source, name in [(tmp_path / "nope.jsonl", "nope.jsonl"), (f"hf:json:{tmp_path}/no.jsonl", "no.jsonl"),
                         (f"hf:{tmp_path}/nodir", "nodir")]:
        with pytest.raises(FileNotFoundError, match=name):
            read_pairs(str(source))
    with pytest.raises(DataError, match="is a file"):
        read_pairs(f"hf:{write_jsonl(tmp_path / 'p.jsonl', [PLAIN])}")
    (tmp_path / "pairs.csv").write_text("prompt,chosen,rejected\n")
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        read_pairs(str(tmp_path / "pairs.csv"))
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(DataError, match="dir.jsonl is a directory; a pairs file is"):
        read_pairs(str(tmp_path / "dir.jsonl"))


def test_limit_keeps_the_first_valid_pairs(tmp_path):
    rows = [PLAIN, "broken", *({**PLAIN, "chosen": f"Hi {i}"} for i in range(5))]
    path = write_jsonl(tmp_path / "many.jsonl", rows)
    pairs, report = read_pairs(path, limit=3, on_invalid="skip")
    assert [p.chosen for p in pairs] == ["Hi there!", "Hi 0", "Hi 1"]
    assert (report.n_read, report.n_valid, report.skipped) == (4, 3, {"invalid JSON": 1})


def test_read_pairs_from_config(tmp_path):
    path = write_jsonl(tmp_path / "cfg.jsonl", [{"q": "a", "chosen": "b", "rejected": "c"}, PLAIN])
    cfg = DataConfig(path=path, columns={"prompt": "q"}, limit=1)
    (pair,), _ = read_pairs_from_config(cfg)
    assert pair.prompt == "a"
    other = write_jsonl(tmp_path / "other.jsonl", [PLAIN])
    (pair,), _ = read_pairs_from_config(DataConfig(), path_override=other)
    assert pair.prompt == PLAIN["prompt"]
    with pytest.raises(DataError, match="set data.path"):
        read_pairs_from_config(DataConfig())


# --------------------------------------------------------------------------- pairs.parquet


def test_write_and_read_pairs_parquet_round_trip(tmp_path):
    pairs = [Pair(prompt="text prompt", chosen="a", rejected="b"),
             Pair(prompt=CHAT_PROMPT, chosen="c", rejected="d", p_chosen=0.7, weight=0.5,
                  n_votes=3, source="human", slice="complaint", round=2)]
    out = write_pairs(tmp_path / "round_001" / "pairs.parquet", pairs)
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    assert table.column_names == ["pair_id", "prompt", "chosen", "rejected", "p_chosen", "weight",
                                  "n_votes", "source", "slice", "round"]
    assert json.loads(table.column("prompt")[1].as_py()) == CHAT_PROMPT
    back = read_pairs_parquet(out)
    assert back == pairs
    assert back[1].is_chat and back[1].origin.endswith("pairs.parquet row 2")


# --------------------------------------------------------------------------- bundled demo pairs


def test_bundled_static_pairs_load_and_match_the_generator():
    from alignloop.demo import BUNDLED_PATH, HARD_SLICES, static_pairs

    pairs, report = read_pairs(str(BUNDLED_PATH))
    assert report.n_valid == report.n_read >= 64
    assert len({p.pair_id for p in pairs}) == len(pairs)
    assert all(p.is_chat and p.slice for p in pairs)
    assert sum(p.slice in HARD_SLICES for p in pairs) < len(pairs) / 4
    # The file is the generator's output: rerun `python -m alignloop.demo.pairs` after editing templates.
    assert [p.pair_id for p in pairs] == [p.pair_id for p in static_pairs()]
    assert static_pairs(n=10, seed=3) == static_pairs(n=10, seed=3)


def test_repeated_rows_are_kept_and_said(tmp_path, caplog):
    """A file with every pair twice trained on 16 pairs and said "skipped: none": the
    copies weigh double without a word. They are still kept, and now said."""
    row = {"prompt": "Hi", "chosen": "Hello there!", "rejected": "Go away."}
    other = {"prompt": "Bye", "chosen": "Take care!", "rejected": "Finally."}
    path = tmp_path / "dups.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (row, other, row)))
    with caplog.at_level(logging.WARNING, logger="alignloop"):
        pairs, report = read_pairs(path)
    assert len(pairs) == 3 and report.skipped == {}
    assert "1 row repeats an earlier row's pair (e.g. row 3 repeats row 1)" in caplog.text


def test_a_missing_file_says_where_a_relative_path_was_read_and_tilde_is_home(
        tmp_path, monkeypatch):
    from alignloop.prompt_pool import read_prompt_rows

    monkeypatch.chdir(tmp_path)
    for read, what in ((read_pairs, "pairs file"), (read_prompt_rows, "prompts file")):
        with pytest.raises(FileNotFoundError) as e:
            read("data/mine.jsonl")
        assert str(e.value) == (f"{what} not found: data/mine.jsonl (relative paths are read "
                                f"from the working directory, {tmp_path})")
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "p.jsonl").write_text(json.dumps(
        {"prompt": "Hi", "chosen": "Hello there!", "rejected": "Go away."}) + "\n")
    assert len(read_pairs("~/p.jsonl")[0]) == 1


def test_prompt_file_errors_say_what_is_wrong(tmp_path):
    from alignloop.prompt_pool import PromptError, read_prompt_rows

    cases = {"p.csv": ("prompt\nHi\n", "unsupported file type '.csv'"),
             "n.jsonl": ('{"prompt": 42}\n', "row 1: 'prompt' must be text or a list of {role, content} messages, not int (42)"),
             "e.jsonl": ("", "e.jsonl: holds no prompts")}
    for name, (text, want) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(PromptError, match=re.escape(want)):
            read_prompt_rows(tmp_path / name)
