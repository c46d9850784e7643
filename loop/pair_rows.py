"""One source row -> a validated `Pair`, or `InvalidRow` saying why not (the row formats
are `alignloop.data`'s: plain, conversational, hh). `alignloop.data` reads the rows and
names the file and row; this module knows nothing of files."""

from __future__ import annotations

import math
import numbers
import re
import struct
from dataclasses import replace
from typing import Any

from alignloop.records import Message, Pair, Prompt, label_problem

FIELDS = ("prompt", "chosen", "rejected", "p_chosen", "weight", "pair_id", "slice")
ROLES = ("system", "user", "assistant")
_HH_ANSWER = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


class InvalidRow(Exception):
    """A row that cannot become a Pair: `reason` is counted in `LoadReport.skipped`, `detail` shown."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _field(row: dict, name: str, columns: dict[str, str], required: bool) -> Any:
    """The row's value for our field `name` (None when absent and optional)."""
    col = columns.get(name, name)
    value = row.get(col)
    # An optional field may be missing from a row, even when mapped (JSONL rows may leave
    # it out); a mapped column that no row of the file has is `read_pairs`' typo check.
    if value is None and required:
        where = f" (column '{col}')" if col != name else ""
        raise InvalidRow("missing field", f"missing field '{name}'{where}")
    return value


def checked_text(value: Any, name: str, empty_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidRow("non-string text", f"{name} is not a string (got {type(value).__name__})")
    if not (empty_ok or value.strip()):
        raise InvalidRow("empty text", f"{name} is empty")
    _unicode(value, name)
    return value


def _unicode(value: str, name: str) -> None:
    """Refuse a lone surrogate (JSON allows the escape "\\ud800"): such text cannot be
    hashed into a pair id, tokenized or written to parquet."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidRow("invalid text", f"{name} is not valid Unicode (a lone surrogate "
                                       f"{value[e.start]!r} at character {e.start + 1})") from None


def checked_messages(value: Any, name: str, text_ok: bool = False) -> list[Message]:
    if text_ok and isinstance(value, str):  # a text prompt beside message-list responses
        return [{"role": "user", "content": checked_text(value, name)}]
    if not isinstance(value, list):
        raise InvalidRow("malformed message", f"{name} is not a list of messages (got {type(value).__name__})")
    out = []
    for i, m in enumerate(value, 1):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise InvalidRow("malformed message",
                           f"{name} message {i} is not a {{role, content}} mapping of strings")
        if m["role"] not in ROLES:
            raise InvalidRow("malformed message",
                           f"{name} message {i} has role '{m['role']}'; expected one of {', '.join(ROLES)}")
        checked_text(m["content"], f"{name} message {i}")
        out.append({"role": m["role"], "content": m["content"]})  # extra keys are dropped
    return out


def _conversational(prompt: Any, chosen: Any, rejected: Any) -> tuple[Prompt, str, str]:
    head = checked_messages(prompt, "prompt", text_ok=True) if prompt is not None else []
    convs = {"chosen": checked_messages(chosen, "chosen"), "rejected": checked_messages(rejected, "rejected")}
    for name, conv in convs.items():
        if not conv:
            raise InvalidRow("empty text", f"{name} has no messages")
        if conv[-1]["role"] != "assistant":
            raise InvalidRow("malformed message",
                           f"the last {name} message has role '{conv[-1]['role']}'; expected assistant")
    c, r = convs["chosen"], convs["rejected"]
    shared = c[:-1]
    if shared != r[:-1]:
        raise InvalidRow("mismatched prompts", "chosen and rejected differ before their final message")
    messages = shared if shared[: len(head)] == head else head + shared
    if not messages:
        raise InvalidRow("missing field", "missing field 'prompt' (chosen and rejected hold only the answer)")
    return messages, c[-1]["content"], r[-1]["content"]


def _hh_split(text: Any, name: str) -> tuple[list[Message], str]:
    """An HH transcript -> (the turns before the final Assistant answer, that answer)."""
    text = checked_text(text, name)
    if not text.startswith("\n\n"):
        text = "\n\n" + text.lstrip()
    cut = text.rfind(_HH_ANSWER)
    if cut < 0:
        raise InvalidRow("malformed transcript", f"{name} has no '\\n\\nAssistant:' turn")
    parts = _HH_TURN.split(text[:cut])
    if parts[0].strip() or len(parts) < 3:
        raise InvalidRow("malformed transcript", f"{name} does not start with a '\\n\\nHuman:' turn")
    turns = []
    for speaker, content in zip(parts[1::2], parts[2::2], strict=True):
        if not content.strip():
            raise InvalidRow("empty text", f"{name} has an empty {speaker} turn")
        turns.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    answer = text[cut + len(_HH_ANSWER):].strip()
    if not answer:
        raise InvalidRow("empty text", f"{name} has an empty final answer")
    return turns, answer


def _detect(prompt: Any, chosen: Any) -> str:
    if isinstance(prompt, list) or isinstance(chosen, list):
        return "conversational"
    if prompt is None and isinstance(chosen, str) and _HH_ANSWER in chosen:
        return "hh"
    return "plain"


def _number(value: Any, name: str, default: float) -> float:
    if value is None:
        return default
    number = math.nan
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # a JSON integer such as 10**400
            number = math.inf
    if not math.isfinite(number):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise InvalidRow(f"invalid {name}", f"{name} is not a finite number (got {shown})")
    return number


def _float32_weight(weight: float) -> None:
    """Training scales losses by weights held in float32: a weight must stay finite and
    positive there (1e39 would become inf, 1e-50 zero)."""
    try:
        narrowed = struct.unpack("f", struct.pack("f", weight))[0]
    except OverflowError:
        narrowed = math.inf
    if not 0 < narrowed < math.inf:
        raise InvalidRow("invalid weight", f"weight is {weight:g}, which is {narrowed:g} in "
                                         "float32 training; keep it within float32's range (1e-38 to 3e38)")


def parse_row(row: Any, fmt: str, columns: dict[str, str]) -> Pair:
    """One source row -> Pair (without origin); raises InvalidRow."""
    if isinstance(row, InvalidRow):
        raise row
    if isinstance(row, Pair):
        return _checked_stored(row)
    if not isinstance(row, dict):
        raise InvalidRow("not an object", f"row is a {type(row).__name__}, not an object")
    chosen = _field(row, "chosen", columns, required=True)
    rejected = _field(row, "rejected", columns, required=True)
    kind = _detect(row.get(columns.get("prompt", "prompt")), chosen) if fmt == "auto" else fmt
    if kind == "hh":
        (prompt, chosen), (other, rejected) = _hh_split(chosen, "chosen"), _hh_split(rejected, "rejected")
        if prompt != other:
            raise InvalidRow("mismatched prompts",
                           "chosen and rejected have different turns before the final Assistant answer")
    elif kind == "conversational":
        raw_prompt = _field(row, "prompt", columns, required=False)
        prompt, chosen, rejected = _conversational(raw_prompt, chosen, rejected)
    else:
        prompt = checked_text(_field(row, "prompt", columns, required=True), "prompt")
        chosen, rejected = checked_text(chosen, "chosen"), checked_text(rejected, "rejected")
    if chosen.strip() == rejected.strip():
        raise InvalidRow("identical responses", "chosen is identical to rejected")

    p_chosen = _number(_field(row, "p_chosen", columns, required=False), "p_chosen", 1.0)
    if not 0.0 <= p_chosen <= 1.0:
        raise InvalidRow("invalid p_chosen", f"p_chosen is {p_chosen}, outside [0, 1]")
    weight = _number(_field(row, "weight", columns, required=False), "weight", 1.0)
    if weight <= 0:
        raise InvalidRow("invalid weight", f"weight is {weight}; it must be positive")
    _float32_weight(weight)
    pair_id = _field(row, "pair_id", columns, required=False)
    if pair_id is not None and (isinstance(pair_id, bool) or not isinstance(pair_id, (str, int))):
        raise InvalidRow("invalid pair_id", f"pair_id is not a string or integer (got {pair_id!r})")
    if isinstance(pair_id, str):
        _unicode(pair_id, "pair_id")
    slice_ = _field(row, "slice", columns, required=False)
    if slice_ is not None and not isinstance(slice_, str):
        raise InvalidRow("invalid slice", f"slice is not a string (got {slice_!r})")
    if slice_:
        _unicode(slice_, "slice")
        if problem := label_problem(slice_):
            raise InvalidRow("invalid slice", f"slice {problem}")
    return Pair(prompt=prompt, chosen=chosen, rejected=rejected, p_chosen=p_chosen, weight=weight,
                source="static", slice=slice_ or "", pair_id="" if pair_id is None else str(pair_id))


def _checked_stored(pair: Pair) -> Pair:
    """A decoded `write_pairs` row, validated like any other row; it keeps its id and
    where it came from (votes, source, round). The file's own layout is known, so the
    caller's `format` and `columns` do not apply."""
    row = {"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected,
           "p_chosen": pair.p_chosen, "weight": pair.weight, "pair_id": pair.pair_id,
           "slice": pair.slice}
    if pair.is_chat:  # TRL's conversational form: the responses as assistant messages
        for k in ("chosen", "rejected"):
            row[k] = [{"role": "assistant", "content": row[k]}]
    checked = parse_row(row, "auto", {})
    return replace(checked, n_votes=pair.n_votes, source=pair.source, round=pair.round)
