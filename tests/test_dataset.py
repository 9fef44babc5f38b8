"""Bad data stops with the file, line and field of every bad record; the split is sound."""

import json

import pytest

from modelmake.core.errors import ModelmakeError
from modelmake.data.templates import template_fields
from modelmake.stages.dataset import prepare

TEMPLATE = "<|user|>\n{prompt}<|end|>\n<|assistant|>\n{response}<|end|>"
MARKER = "<|assistant|>\n"


def write(tmp_path, lines):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def good(i):
    return json.dumps({"prompt": f"question {i}?", "response": f"answer {i}."})


def test_every_bad_line_is_reported_with_file_line_and_field(tmp_path):
    p = write(tmp_path, [good(0), "{not json", json.dumps({"prompt": "q"}), json.dumps([1, 2]),
                         json.dumps({"prompt": "q", "response": 3}), good(5)])
    with pytest.raises(ModelmakeError) as e:
        prepare(p, TEMPLATE, MARKER, 0.2, 0)
    msg = str(e.value)
    assert "4 bad record(s)" in msg
    assert f"{p}:2: not valid JSON" in msg
    assert f"{p}:3: field 'response' is missing" in msg
    assert f"{p}:4: a record must be a JSON object" in msg
    assert f"{p}:5: field 'response' must be a non-empty string" in msg


def test_template_field_the_records_lack(tmp_path):
    p = write(tmp_path, [good(i) for i in range(5)])
    with pytest.raises(ModelmakeError, match=r"d.jsonl:1: field 'question' is missing"):
        prepare(p, "Q: {question}\nA: {response}", "A: ", 0.2, 0)


def test_empty_split_is_refused(tmp_path):
    p = write(tmp_path, [good(i) for i in range(3)])
    with pytest.raises(ModelmakeError, match="eval split is empty"):
        prepare(p, TEMPLATE, MARKER, 0.1, 0)


def test_empty_file_and_missing_file(tmp_path):
    with pytest.raises(ModelmakeError, match="holds no records"):
        prepare(write(tmp_path, [""]), TEMPLATE, MARKER, 0.2, 0)
    with pytest.raises(ModelmakeError, match="data file not found"):
        prepare(tmp_path / "nope.jsonl", TEMPLATE, MARKER, 0.2, 0)


def test_marker_must_be_in_template(tmp_path):
    with pytest.raises(ModelmakeError, match="response_marker"):
        prepare(write(tmp_path, [good(i) for i in range(9)]), TEMPLATE, "### Answer:", 0.2, 0)


def test_split_is_deterministic_and_duplicates_never_straddle(tmp_path):
    lines = [good(i) for i in range(40)] + [good(3)] * 5  # repeated record, as in the travel set
    p = write(tmp_path, lines)
    train, evals = prepare(p, TEMPLATE, MARKER, 0.25, 7)
    assert (train, evals) == prepare(p, TEMPLATE, MARKER, 0.25, 7)
    assert prepare(p, TEMPLATE, MARKER, 0.25, 8)[1] != evals
    assert not {t["text"] for t in train} & {t["text"] for t in evals}
    assert len(train) + len(evals) == 45
    assert all(t["text"].startswith(t["prompt"]) and t["prompt"].endswith(MARKER) for t in train)


def test_template_fields_in_order():
    assert template_fields(TEMPLATE) == ["prompt", "response"]
    with pytest.raises(ModelmakeError):
        template_fields("no fields here")
