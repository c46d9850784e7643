"""A user's bad data is a one-line error naming the file, row and field, never a traceback;
and the project's own pairs files read back exactly (alignloop.data, prompt_pool, labeler)."""

from __future__ import annotations

import json
import math

import pytest
from alignloop.artifacts import iter_jsonl
from alignloop.data import DataError, read_pairs, read_pairs_parquet, write_pairs
from alignloop.labeling import LabelingError
from alignloop.labeling.labeler import groups_from_completions
from alignloop.prompt_pool import PromptError, read_prompt_rows
from alignloop.records import Pair

PLAIN = {"prompt": "Say hi.", "chosen": "Hi there!", "rejected": "No."}
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"}]
DEEP = "[" * 200_000 + "]" * 200_000   # deeper than Python's recursion limit


def jsonl(path, rows) -> str:
    """Rows are dicts (dumped as JSON) or raw strings (written as they are)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


# --------------------------------------------------------------------------- pairs files read back


def stored_pairs() -> list[Pair]:
    return [Pair(prompt="Hi", chosen="Hello!", rejected="Go away."),
            Pair(prompt="[urgent] \"quoted\" text", chosen="On it.", rejected="Later."),
            Pair(prompt=CHAT, chosen="Hi!", rejected="What.", p_chosen=0.7, weight=0.5,
                 n_votes=3, source="human", slice="greet", round=2)]


def test_write_pairs_file_reads_back_through_read_pairs(tmp_path):
    pairs = stored_pairs()
    out = write_pairs(tmp_path / "pairs.parquet", pairs)
    back, report = read_pairs(out)
    assert back == pairs and report.skipped == {}
    assert back[0].prompt == "Hi" and back[2].prompt == CHAT
    assert back[2].origin == f"{out} row 3"
    assert read_pairs_parquet(out) == pairs


def test_write_pairs_is_byte_for_byte_deterministic(tmp_path):
    a = write_pairs(tmp_path / "a.parquet", stored_pairs())
    b = write_pairs(tmp_path / "b.parquet", stored_pairs())
    assert a.read_bytes() == b.read_bytes()


def test_a_pairs_file_written_by_other_code_is_decoded_by_its_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([p.to_row() for p in stored_pairs()]), tmp_path / "old.parquet")
    assert read_pairs(str(tmp_path / "old.parquet"))[0] == stored_pairs()


def test_a_users_own_parquet_keeps_its_text_prompts_as_written(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    prompts = ['"Hi"', '["a", "b"]', '[{"role": "user", "content": "x"}]']
    rows = [{**PLAIN, "prompt": p, "chosen": f"yes {i}"} for i, p in enumerate(prompts)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mine.parquet")
    assert [p.prompt for p in read_pairs(str(tmp_path / "mine.parquet"))[0]] == prompts


def test_a_bad_row_of_a_pairs_file_names_the_row_or_is_skipped(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [p.to_row() for p in stored_pairs()]
    rows[1]["prompt"] = "not JSON"
    rows[2]["weight"] = -1.0
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="bad.parquet row 2: prompt is not JSON text"):
        read_pairs(str(tmp_path / "bad.parquet"))
    pairs, report = read_pairs(str(tmp_path / "bad.parquet"), on_invalid="skip")
    assert pairs == stored_pairs()[:1]
    assert report.skipped == {"invalid JSON": 1, "invalid weight": 1}


def test_queue_jsonl_export_rows_read_back(tmp_path):
    from alignloop.cli.queue_data import _jsonl_pair

    pairs = stored_pairs()
    path = jsonl(tmp_path / "export.jsonl", [_jsonl_pair(p) for p in pairs])
    back = read_pairs(path)[0]
    assert [(p.prompt, p.chosen, p.rejected, p.p_chosen, p.weight, p.pair_id) for p in back] == \
        [(p.prompt, p.chosen, p.rejected, p.p_chosen, p.weight, p.pair_id) for p in pairs]


# --------------------------------------------------------------------------- bad rows: error or skip

BAD_ROWS = [
    ("invalid weight", '{"prompt": "p", "chosen": "a", "rejected": "b", "weight": 1%s}' % ("0" * 400),
     "weight is not a finite number"),
    ("invalid p_chosen", '{"prompt": "p", "chosen": "a", "rejected": "b", "p_chosen": 1%s}' % ("0" * 400),
     "p_chosen is not a finite number"),
    ("invalid weight", {**PLAIN, "weight": 1e39}, "weight is 1e+39, which is inf in float32"),
    ("invalid weight", {**PLAIN, "weight": 1e-50}, "weight is 1e-50, which is 0 in float32"),
    ("invalid text", {**PLAIN, "prompt": "bad \ud800 text"}, "prompt is not valid Unicode"),
    ("invalid text", {**PLAIN, "rejected": "\udfff"}, "rejected is not valid Unicode"),
    ("invalid text", {"prompt": [{"role": "user", "content": "\ud800"}], "chosen": [
        {"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]},
     "prompt message 1 is not valid Unicode"),
    ("invalid text", {**PLAIN, "slice": "\ud800"}, "slice is not valid Unicode"),
    ("invalid slice", {**PLAIN, "slice": "a\x1b]0;title\x07"}, "slice contains a control or invisible character (U+001B)"),
    ("invalid slice", {**PLAIN, "slice": "two\nlines"}, "slice contains a control or invisible character (U+000A)"),
    ("invalid JSON", DEEP, "line is not valid JSON (nested too deeply)"),
    ("invalid JSON", '{"weight": 1%s}' % ("0" * 5000), "line is not valid JSON (Exceeds the limit"),
]


@pytest.mark.parametrize("reason,row,message", BAD_ROWS, ids=[m[:30] for _, _, m in BAD_ROWS])
def test_a_bad_row_is_a_data_error_naming_file_row_and_field(tmp_path, reason, row, message):
    path = jsonl(tmp_path / "bad.jsonl", [PLAIN, row])
    with pytest.raises(DataError) as err:
        read_pairs(path)
    assert f"bad.jsonl row 2: {message}" in str(err.value)


@pytest.mark.parametrize("reason,row,message", BAD_ROWS, ids=[m[:30] for _, _, m in BAD_ROWS])
def test_a_bad_row_is_skipped_with_on_invalid_skip(tmp_path, reason, row, message):
    path = jsonl(tmp_path / "bad.jsonl", [PLAIN, row, {**PLAIN, "chosen": "Hey!"}])
    pairs, report = read_pairs(path, on_invalid="skip")
    assert [p.chosen for p in pairs] == ["Hi there!", "Hey!"]
    assert report.skipped == {reason: 1}


def test_the_largest_float32_weight_is_kept(tmp_path):
    (pair,), _ = read_pairs(jsonl(tmp_path / "w.jsonl", [{**PLAIN, "weight": 3e38}]))
    assert pair.weight == 3e38 and math.isfinite(pair.weight)


def test_iter_jsonl_reports_a_too_deep_line_and_goes_on(tmp_path):
    path = tmp_path / "deep.jsonl"
    jsonl(path, [DEEP, {"ok": 1}])
    assert list(iter_jsonl(path)) == [(1, None, "line is not valid JSON (nested too deeply)"),
                                      (2, {"ok": 1}, None)]


# --------------------------------------------------------------------------- bad files


def test_a_json_file_that_is_not_utf8_or_too_deep_names_the_file(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_bytes(b'[{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}]')
    with pytest.raises(DataError, match=r"pairs.json: not valid UTF-8 \(a bad byte at offset 16\)"):
        read_pairs(str(path))
    path.write_text(DEEP)
    with pytest.raises(DataError, match=r"pairs.json: not valid JSON \(nested too deeply\)"):
        read_pairs(str(path))


def test_a_parquet_file_damaged_mid_file_names_the_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": f"p{i}" * 20, "chosen": f"a{i}" * 20, "rejected": f"b{i}"} for i in range(5000)]
    path = tmp_path / "damaged.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=1000)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 2000] = bytes(2000)   # the footer survives: reading fails lazily
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"damaged.parquet: not a readable parquet file after row \d+"):
        read_pairs(str(path))


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    return datasets


def test_hf_sources_that_cannot_load_are_data_errors_naming_the_spec(tmp_path, hf_cache):
    quote = tmp_path / "quote.csv"
    quote.write_text('prompt,chosen,rejected\n"p,a,b\n')
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"prompt,chosen,rejected\ncaf\xe9,a,b\n")
    for spec in (f"hf:csv:{quote}", f"hf:csv:{latin}"):
        with pytest.raises(DataError, match=f"{spec}: cannot load it"):
            read_pairs(spec)
    with pytest.raises(DataError, match="hf: names no source"):
        read_pairs("hf:")
    with pytest.raises(FileNotFoundError, match="no pairs file matches"):
        read_pairs(f"hf:json:{tmp_path}/*.nomatch")


def test_an_unreachable_hub_dataset_is_a_data_error(hf_cache, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'someone/pairs' on the Hub")

    monkeypatch.setattr(hf_cache, "load_dataset", offline)
    with pytest.raises(DataError, match=r"hf:someone/pairs: cannot load it \(ConnectionError: Couldn't reach"):
        read_pairs("hf:someone/pairs")


# --------------------------------------------------------------------------- prompt files


@pytest.mark.parametrize("prompt,message", [
    ([{"role": "user", "content": None}], "prompt message 1 is not a {role, content} mapping of strings"),
    ([{"role": "user", "content": 5}], "prompt message 1 is not a {role, content} mapping of strings"),
    ([{"role": "robot", "content": "hi"}], "prompt message 1 has role 'robot'"),
    ('[{"role": "user", "content": null}]', "prompt message 1 is not a {role, content} mapping"),
    ("bad \ud800", "prompt is not valid Unicode"),
    ("   ", "prompt is empty"),
])
def test_a_bad_prompt_names_the_file_and_row(tmp_path, prompt, message):
    path = jsonl(tmp_path / "prompts.jsonl", [{"prompt": "fine"}, {"prompt": prompt}])
    with pytest.raises(PromptError) as err:
        read_prompt_rows(path)
    assert f"prompts.jsonl row 2: {message}" in str(err.value)


def test_a_prompt_row_that_is_not_an_object_names_the_row(tmp_path):
    with pytest.raises(PromptError, match="p.jsonl row 1: the row is a list, not an object"):
        read_prompt_rows(jsonl(tmp_path / "p.jsonl", ["[1, 2]"]))


def test_text_prompts_that_look_like_json_stay_text(tmp_path):
    texts = ['["a", "b"]', "[urgent] refund please", '"Where is it?" she asked', "[]"]
    rows = read_prompt_rows(jsonl(tmp_path / "p.jsonl", [{"prompt": t} for t in texts]))
    assert [r["prompt"] for r in rows] == texts


def test_chat_prompts_stored_as_json_text_are_messages(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"prompt": json.dumps(CHAT)}]), tmp_path / "p.parquet")
    assert read_prompt_rows(tmp_path / "p.parquet")[0]["prompt"] == CHAT


# --------------------------------------------------------------------------- candidate files (judge)


def completion(prompt, i, **extra) -> dict:
    return {"prompt_id": "p1", "prompt": prompt, "text": f"answer {i}", "sample_index": i, **extra}


@pytest.mark.parametrize("prompt", ["[urgent] refund please", '"Where is my order?" she asked',
                                    '["a", "b"]'])
def test_plain_text_candidate_prompts_work(prompt):
    (group,) = groups_from_completions([completion(prompt, 0), completion(prompt, 1)])
    assert group.prompt == prompt and group.responses == ("answer 0", "answer 1")


def test_generated_candidate_prompts_are_decoded():
    for stored, prompt in [(json.dumps("Hi"), "Hi"), (json.dumps(CHAT), CHAT), (CHAT, CHAT)]:
        (group,) = groups_from_completions([completion(stored, 0), completion(stored, 1)])
        assert group.prompt == prompt


@pytest.mark.parametrize("rows,message", [
    ([completion("q", 0), ["q", "a"]], "row 2: the row is a list, not an object"),
    ([completion("q", 0, logprob_sum=-1.0), completion("q", 1, logprob_sum="abc")],
     "row 2: logprob_sum is not a number (got 'abc')"),
    ([completion("q", 0), completion("q", "1")], "row 2: sample_index is not an integer (got '1')"),
    ([completion("q", 0), {**completion("q", 1), "text": "\ud800"}], "row 2: text is not valid Unicode"),
    ([completion("q", 0), {**completion("q", 1), "text": 5}], "row 2: text is not a string"),
    ([completion([{"role": "user", "content": None}], 0)], "row 1: prompt message 1 is not a {role"),
    ([completion(json.dumps([{"role": "bot", "content": "x"}]), 0)], "row 1: prompt message 1 has role 'bot'"),
])
def test_a_bad_candidate_row_names_the_file_row_and_field(rows, message):
    with pytest.raises(LabelingError) as err:
        groups_from_completions(rows, source="cands.jsonl")
    assert f"cands.jsonl {message}" in str(err.value)


def test_cli_judge_takes_plain_prompts_and_names_a_bad_row(tmp_path, capsys):
    from pathlib import Path

    from alignloop.cli import main

    config = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
    rows = [completion(p, i, prompt_id=p[:3]) | {"text": t} for p in ("[urgent] refund please",
            '"Where is it?" she asked') for i, t in enumerate(("Sorry, refunding now.", "No."))]
    src = jsonl(tmp_path / "cands.jsonl", rows)
    assert main(["judge", config, "--candidates", src, "--out", str(tmp_path / "o.parquet")]) == 0
    capsys.readouterr()
    src = jsonl(tmp_path / "bad.jsonl", [*rows, {**rows[0], "logprob_sum": "abc"}])
    assert main(["judge", config, "--candidates", src, "--out", str(tmp_path / "o.parquet"),
                 "--force"]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl row 5: logprob_sum is not a number" in err and "Traceback" not in err
