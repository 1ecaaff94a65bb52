"""Readers: CSV, TSV, JSONL, JSON and `datasets.load_dataset` sources into (location, row)
pairs, every problem reported with the file and line (`train.jsonl:17: ...`)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from cuetune.data.examples import Example, as_text, check_text
from cuetune.errors import DataError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".txt": "tsv"}


def decode_file(path: Path) -> str:
    """A text file's content (UTF-8, or UTF-16 with a BOM); errors name the file and line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    text = decode_bytes(raw, str(path))
    if not text.strip():
        raise DataError(f"{path}: file is empty; it needs a header and at least one row")
    return text


def decode_bytes(raw: bytes, source: str) -> str:
    """Text read from a file or standard input: UTF-8, or UTF-16 with a BOM; bytes that are
    neither are an error naming `source` and the line, never a silently replaced character."""
    try:
        utf16 = raw[:2] in (b"\xff\xfe", b"\xfe\xff")  # a BOM: Excel's "Unicode text"
        text = raw.decode("utf-16" if utf16 else "utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{source}:{line}: not valid UTF-8; re-save the file as UTF-8") from None
    return text


def lines_to_examples(text: str, source: str) -> list[Example]:
    """Inputs without labels, one per line (JSON-object lines give 'text' and 'text_pair'):
    what `predict --input` and a `.txt` distillation pool read."""
    lines = [(i, ln.strip()) for i, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    if not lines:
        raise DataError(f"{source}: no input lines")
    if lines[0][1].startswith("{"):
        rows = parse_jsonl(Path(source), text)
        return [Example(as_text(r.get("text", ""), w, "text"),
                        None if r.get("text_pair") is None else as_text(r["text_pair"], w, "text_pair"),
                        None, w) for w, r in rows]
    return [Example(check_text(ln, f"{source}:{i}"), None, None, f"{source}:{i}") for i, ln in lines]


def read_rows(path: str | Path, fmt: str = "auto",
              columns: list[str] | None = None) -> list[tuple[str, dict]]:
    """Read a file into (location, row) pairs; location is 'file:line'."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if fmt == "auto":
        fmt = FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise DataError(f"{path}: unknown file type; set data.format to csv, tsv, jsonl or json")
    text = decode_file(path)
    if fmt == "jsonl":
        return parse_jsonl(path, text)
    if fmt == "json":
        return _json(path, text)
    return _delimited(path, text, "," if fmt == "csv" else "\t", columns)


def parse_jsonl(path: Path, text: str) -> list[tuple[str, dict]]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{n}: malformed JSON ({exc.msg} at column {exc.colno}); "
                            "each line must be one JSON object") from None
        except RecursionError:
            raise DataError(f"{path}:{n}: JSON nested too deeply; rows must be flat objects") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        rows.append((f"{path}:{n}", row))
    return rows


def _json(path: Path, text: str) -> list[tuple[str, dict]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply; expected a list of flat objects") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects (or {{\"data\": [...]}})")
    rows = []
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise DataError(f"{path}: item {i}: expected an object, got {type(row).__name__}")
        rows.append((f"{path}: item {i}", row))
    return rows


def _records(path: Path, text: str, delimiter: str) -> list[tuple[int, list[str]]]:
    """(first line, fields) per record, parsed strictly (RFC 4180 quoting for CSV, none for
    TSV): a quote that is never closed is an error at the line where it opened, instead of a
    field that silently swallows the rest of the file."""
    kind = "TSV" if delimiter == "\t" else "CSV"
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    csv.field_size_limit(1 << 28)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting,
                        strict=True)
    records, start = [], 1
    try:
        for rec in reader:
            records.append((start, rec))
            start = reader.line_num + 1
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):
            raise DataError(f"{path}:{start}: a quoted field opened on this line is never closed, "
                            f"so the rest of the file would be one {kind} field; close the quote "
                            "(a quote inside a field is written twice: \"\")") from None
        raise DataError(f"{path}:{reader.line_num}: malformed {kind} ({exc})") from None
    return records


def _delimited(path: Path, text: str, delimiter: str,
               columns: list[str] | None) -> list[tuple[str, dict]]:
    records = _records(path, text, delimiter)
    if not records:
        raise DataError(f"{path}: no rows; it needs a header and at least one row")
    header = columns if columns else [h.strip() for h in records[0][1]]
    rows = []
    for n, rec in records if columns else records[1:]:
        if not rec or (len(rec) == 1 and not rec[0].strip()):
            continue
        if len(rec) != len(header):
            raise DataError(f"{path}:{n}: {len(rec)} fields but the header has {len(header)}; "
                            "quote fields that contain the delimiter")
        rows.append((f"{path}:{n}", dict(zip(header, rec, strict=True))))
    return rows


def read_hf(source: str, config: str | None, split: str) -> list[tuple[str, dict]]:
    """Rows of a `datasets.load_dataset` split (ClassLabel ints are mapped to names)."""
    import datasets

    try:
        ds = datasets.load_dataset(source, config, split=split)
    except Exception as exc:  # datasets raises many types; report them as one data error
        raise DataError(f"dataset {source!r} split {split!r}: cannot load ({exc})") from None
    names = {}
    for col, feat in ds.features.items():
        if isinstance(feat, datasets.ClassLabel):
            names[col] = feat.names
    rows = []
    for i, row in enumerate(ds):
        for col, labels in names.items():
            if isinstance(row.get(col), int) and 0 <= row[col] < len(labels):
                row[col] = labels[row[col]]
        rows.append((f"{source}[{split}] row {i}", row))
    return rows


