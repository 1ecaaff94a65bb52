"""Hostile input: every loader and the template parser give clean cuetune errors, never a
traceback. Property-based (hypothesis) over random bytes, other encodings, BOMs, nested JSON,
mixed types, empty labels, ragged CSV, lone surrogates in JSON escapes and input lines; plus huge
lines and deep nesting.
"""

from __future__ import annotations

import csv
import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cuetune.config import DataConfig
from cuetune.data.readers import decode_bytes, lines_to_examples, read_rows
from cuetune.data.splits import load_splits
from cuetune.errors import CuetuneError
from cuetune.prompt.templates import parse

CASES = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SUFFIXES = ["jsonl", "csv", "tsv", "json"]


def _load(path, **data):
    """Only two outcomes are allowed: splits, or a CuetuneError that names the file or field."""
    try:
        return load_splits(DataConfig(train=str(path), **data))
    except CuetuneError as exc:
        msg = str(exc)
        assert msg.strip() and "Traceback" not in msg
        assert str(path) in msg or "data." in msg or "train" in msg, msg
        return None


@CASES
@given(raw=st.binary(max_size=400), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes(tmp_path_factory, raw, suffix):
    path = tmp_path_factory.mktemp("b") / f"train.{suffix}"
    path.write_bytes(raw)
    _load(path)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12)
rows = st.lists(st.dictionaries(st.sampled_from(["text", "label", "sentence", "text_pair", ""]),
                                json_values, max_size=4), max_size=8)


@CASES
@given(rows=rows, encoding=st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16"]))
def test_jsonl_of_mixed_types_and_encodings(tmp_path_factory, rows, encoding):
    path = tmp_path_factory.mktemp("j") / "train.jsonl"
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    try:
        path.write_bytes(text.encode(encoding))
    except UnicodeEncodeError:
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
    _load(path)


@CASES
@given(rows=rows)
def test_json_documents(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("d") / "train.json"
    path.write_text(json.dumps(rows if len(rows) % 2 else {"data": rows}), encoding="utf-8")
    _load(path, labels=["a", "b"])


cells = st.text(alphabet=string.printable + "äé€\u2028\x00\"", max_size=12)


@CASES
@given(table=st.lists(st.lists(cells, min_size=0, max_size=4), max_size=8),
       delimiter=st.sampled_from([",", "\t"]), bom=st.booleans())
def test_ragged_and_quoted_delimited_files(tmp_path_factory, table, delimiter, bom):
    path = tmp_path_factory.mktemp("c") / ("train.csv" if delimiter == "," else "train.tsv")
    body = "\n".join(delimiter.join(row) for row in [["text", "label"], *table])
    path.write_bytes(("\ufeff" if bom else "").encode() + body.encode("utf-8", "surrogatepass"))
    _load(path)


words = st.text(alphabet=string.ascii_letters + string.digits + " ,;\"'\n\r\täé€", max_size=12)


@CASES
@given(table=st.lists(st.tuples(words, words), max_size=8), delimiter=st.sampled_from([",", "\t"]),
       crlf=st.booleans())
def test_what_loads_is_what_the_file_says(tmp_path_factory, table, delimiter, crlf):
    """A table written by the csv module (quoting as it must: delimiters, quotes and line
    breaks inside fields) reads back row for row and field for field."""
    path = tmp_path_factory.mktemp("w") / ("train.csv" if delimiter == "," else "train.tsv")
    if delimiter == "\t":  # TSV has no quoting: a field cannot hold a tab or a line break
        table = [tuple(c.translate({9: None, 10: None, 13: None}) for c in row) for row in table]
    elif not crlf:  # the writer quotes CR only when its line ending has one; unquoted, CR ends a line
        table = [tuple(c.replace("\r", "") for c in row) for row in table]
    with open(path, "w", encoding="utf-8", newline="") as f:
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        csv.writer(f, delimiter=delimiter, quoting=quoting, escapechar=None if delimiter == "," else "\\",
                   lineterminator="\r\n" if crlf else "\n").writerows([("text", "label"), *table])
    if delimiter == "\t" and any('"' in c or "\\" in c for row in table for c in row):
        return  # the writer escaped them; TSV readers here take fields as they are
    assert [tuple(r.values()) for _, r in read_rows(path)] == table


def test_an_unclosed_quote_is_refused_at_its_line(tmp_path):
    path = tmp_path / "train.csv"
    # the label first: the unclosed quote swallows the later rows into a field of a 2-field row
    path.write_text('label,text\n0,fine\n1,"an unterminated quote\n0,more\n1,rows\n', encoding="utf-8")
    with pytest.raises(CuetuneError, match=rf"{path}:3: a quoted field opened on this line is never closed"):
        read_rows(path)


@CASES
@given(labels=st.lists(st.one_of(st.text(max_size=3), st.integers(-3, 3), st.none(), st.floats()),
                       min_size=1, max_size=8))
def test_empty_and_odd_labels(tmp_path_factory, labels):
    path = tmp_path_factory.mktemp("l") / "train.jsonl"
    path.write_text("".join(json.dumps({"text": f"row {i}", "label": lab}) + "\n"
                            for i, lab in enumerate(labels)), encoding="utf-8")
    _load(path)


@settings(max_examples=600, deadline=None, derandomize=True, database=None)
@given(source=st.text(alphabet="{}:\"' abtexsofmnwr_ap0123456789\\", max_size=40))
def test_template_parser(source):
    try:
        parse(source).check()
    except CuetuneError as exc:
        assert "template" in str(exc)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_huge_line(tmp_path, suffix):
    path = tmp_path / f"train.{suffix}"
    text = "x" * 20_000_000
    path.write_text({"jsonl": json.dumps({"text": text, "label": "a"}) + "\n",
                     "json": json.dumps([{"text": text, "label": "a"}]),
                     "csv": f"text,label\n{text},a\n", "tsv": f"text\tlabel\n{text}\ta\n"}[suffix])
    assert _load(path) is None  # one label only: a clean error, after reading the 20 MB line


@pytest.mark.parametrize("suffix", ["jsonl", "json"])
def test_deeply_nested_json(tmp_path, suffix):
    path = tmp_path / f"train.{suffix}"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    assert _load(path) is None


def _with_surrogates():
    """Text with at least one lone surrogate (U+D800 to U+DFFF) somewhere in it."""
    plain = st.text(st.characters(exclude_categories=("Cs", "Cc", "Zl", "Zp")), max_size=8)  # one line
    return st.tuples(plain, st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
                     plain).map(lambda t: "".join(t))


@CASES
@given(text=_with_surrogates(), column=st.sampled_from(["text", "label"]),
       suffix=st.sampled_from(["jsonl", "json"]))
def test_lone_surrogates_in_json_escapes_are_refused_naming_the_row(tmp_path_factory, text, column, suffix):
    """`"\\udcff"` is valid JSON and no Unicode character: the load must refuse it where it is
    (it used to load, and the tokenizer failed later with a TypeError)."""
    path = tmp_path_factory.mktemp("s") / f"train.{suffix}"
    rows = [{"text": "fine", "label": "a"}, {"text": "good", "label": "b"}]
    rows.append({"text": text, "label": "a"} if column == "text" else {"text": "x", "label": text})
    body = "".join(json.dumps(r) + "\n" for r in rows) if suffix == "jsonl" else json.dumps(rows)
    path.write_text(body, encoding="utf-8")  # json.dumps writes the surrogate as a \u escape
    with pytest.raises(CuetuneError, match=r"U\+D[89A-F][0-9A-F]{2}, half of a UTF-16 surrogate") as err:
        load_splits(DataConfig(train=str(path), labels=["a", "b"] if column == "text" else None))
    assert str(path) in str(err.value) and "Traceback" not in str(err.value)


@CASES
@given(text=_with_surrogates(), as_json=st.booleans())
def test_lone_surrogates_in_input_lines_are_refused_naming_the_line(text, as_json):
    line = json.dumps({"text": text}) if as_json else text
    with pytest.raises(CuetuneError, match=r"<stdin>:2.*surrogate"):
        lines_to_examples(f"fine\n{line}\n" if not as_json else f'{{"text": "ok"}}\n{line}\n', "<stdin>")


def test_undecodable_input_bytes_name_their_line():
    with pytest.raises(CuetuneError, match=r"<stdin>:2: not valid UTF-8"):
        decode_bytes(b"fine\n\xed\xb3\xbf bad\n", "<stdin>")
