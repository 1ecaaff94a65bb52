"""Data loading and cleaning.

Readers for CSV, TSV, JSONL, JSON and `datasets.load_dataset` sources turn rows into
`Example`s through a column mapping. Every problem is reported with the file and line
(`train.jsonl:17: ...`). Cleaning, splitting and K-shot sampling are seeded and report counts.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

from cuetune.errors import DataError, did_you_mean

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".txt": "tsv"}


@dataclass(frozen=True)
class Example:
    text: str
    text_pair: str | None = None
    label: int | tuple[float, ...] | None = None
    """Index into the label list; None for unlabelled input (predict); a distribution over the
    labels for a distilled student's training pool (`cuetune.distill`)."""
    where: str = ""
    """file:line, for error messages."""
    target: str | None = None
    """Generation: the answer text trained on (the first reference)."""
    refs: tuple[str, ...] = ()
    """Generation: every reference answer, for metrics (E2E has several per input)."""


@dataclass
class Splits:
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    labels: list[str]
    report: dict = field(default_factory=dict)


def decode_file(path: Path) -> str:
    """A text file's content (UTF-8, or UTF-16 with a BOM); errors name the file and line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        utf16 = raw[:2] in (b"\xff\xfe", b"\xfe\xff")  # a BOM: Excel's "Unicode text"
        text = raw.decode("utf-16" if utf16 else "utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8; re-save the file as UTF-8") from None
    if not text.strip():
        raise DataError(f"{path}: file is empty; it needs a header and at least one row")
    return text


def lines_to_examples(text: str, source: str) -> list[Example]:
    """Inputs without labels, one per line (JSON-object lines give 'text' and 'text_pair'):
    what `predict --input` and a `.txt` distillation pool read."""
    lines = [(i, ln.strip()) for i, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    if not lines:
        raise DataError(f"{source}: no input lines")
    if lines[0][1].startswith("{"):
        rows = parse_jsonl(Path(source), text)
        return [Example(str(r.get("text", "")), r.get("text_pair"), None, w) for w, r in rows]
    return [Example(ln, None, None, f"{source}:{i}") for i, ln in lines]


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


def to_examples(rows: list[tuple[str, dict]], text_col: str, pair_col: str | None,
                label_col: str | None, labels: list[str] | None,
                source: str, target_col: str | None = None) -> list[Example]:
    """Map rows to Examples; labels may be names or integer indices into `labels`; with
    `target_col` (generation) the answer text, or a list of reference texts."""
    if not rows:
        raise DataError(f"{source}: no rows; the file has a header but no data")
    out = []
    for where, row in rows:
        for col in (text_col, pair_col, label_col, target_col):
            if col is not None and col not in row:
                raise DataError(f"{where}: missing column '{col}';{did_you_mean(col, row) or ''} "
                                f"columns are {sorted(map(str, row))}; set data.text_column etc.")
        text = _as_text(row[text_col], where, text_col)
        pair = _as_text(row[pair_col], where, pair_col) if pair_col else None
        label = _label_index(row[label_col], labels, where) if label_col and labels else None
        refs = _refs(row[target_col], where, target_col) if target_col else ()
        out.append(Example(text, pair, label, where, refs[0] if refs else None, refs))
    return out


def _refs(value, where: str, col: str) -> tuple[str, ...]:
    """One reference text, or a JSON list of them; every one must be non-empty text."""
    values = value if isinstance(value, list) else [value]
    refs = tuple(" ".join(_as_text(v, where, col).split()) for v in values)
    if not refs or not all(refs):
        raise DataError(f"{where}: column '{col}' is empty; a generation example needs an "
                        "answer text (or a list of them)")
    return refs


def group_refs(examples: list[Example]) -> list[Example]:
    """One example per distinct input, holding every reference its rows give (E2E lists each
    reference of a meaning representation as its own row). First-seen order is kept."""
    merged: dict[tuple, Example] = {}
    for ex in examples:
        key = (ex.text, ex.text_pair)
        if key in merged:
            old = merged[key]
            merged[key] = replace(old, refs=old.refs + tuple(r for r in ex.refs if r not in old.refs))
        else:
            merged[key] = ex
    return list(merged.values())


def _as_text(value, where: str, col: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if value is None:
        return ""
    raise DataError(f"{where}: column '{col}' must be text, got {type(value).__name__}")


def _label_index(value, labels: list[str], where: str) -> int:
    if isinstance(value, bool):
        value = str(value).lower()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        if str(value) in labels:
            return labels.index(str(value))
        if 0 <= value < len(labels):
            return value
        raise DataError(f"{where}: label {value} is out of range for labels {labels}")
    if not isinstance(value, str):
        raise DataError(f"{where}: label must be a string or an integer, got {type(value).__name__}")
    key = value.strip()
    if key in labels:
        return labels.index(key)
    if key.isdigit() and int(key) < len(labels):
        return int(key)
    raise DataError(f"{where}: label {value!r} is not in the label list {labels};"
                    f"{did_you_mean(key, labels) or ' add it to data.labels'}")


def infer_labels(rows: list[tuple[str, dict]], label_col: str, source: str) -> list[str]:
    """Label list from the training rows, sorted (ints numerically), when none is given."""
    values = set()
    for where, row in rows:
        if label_col not in row:
            raise DataError(f"{where}: missing column '{label_col}';"
                            f"{did_you_mean(label_col, row) or ''} set data.label_column")
        value = row[label_col]
        if value is None or (isinstance(value, str) and not value.strip()):
            raise DataError(f"{where}: empty label in column '{label_col}'")
        if isinstance(value, float):
            if not math.isfinite(value):
                raise DataError(f"{where}: label {value} in column '{label_col}' is not a number")
            value = int(value) if value.is_integer() else value
        if not isinstance(value, str | int | float):
            raise DataError(f"{where}: label must be a string or an integer, got "
                            f"{type(value).__name__}")
        values.add(str(value).strip())
    if len(values) < 2:
        raise DataError(f"{source}: found {len(values)} distinct label(s); need at least 2")
    def order(v: str):
        numeric = v.lstrip("-").isdigit()
        return (not numeric, int(v) if numeric else 0, v)

    return sorted(values, key=order)


def clean(examples: list[Example], cfg, what: str, exclude: set | None = None) -> tuple[list[Example], dict]:
    """Strip, collapse whitespace, drop empties, duplicates and rows also in `exclude`."""
    counts = Counter()
    seen: set = set()
    out = []
    for ex in examples:
        text, pair = ex.text, ex.text_pair
        if cfg.collapse_whitespace:
            text = " ".join(text.split())
            pair = " ".join(pair.split()) if pair is not None else None
        elif cfg.strip:
            text = text.strip()
            pair = pair.strip() if pair is not None else None
        if cfg.drop_empty and not text.strip():
            counts["empty"] += 1
            continue
        key = (text, pair, ex.refs)
        if cfg.drop_duplicates and key in seen:
            counts["duplicate"] += 1
            continue
        if exclude is not None and key[:2] in exclude:
            counts["in_test"] += 1
            continue
        seen.add(key)
        out.append(replace(ex, text=text, text_pair=pair))
    report = {"rows": len(examples), "kept": len(out), **{f"dropped_{k}": v for k, v in counts.items()}}
    if not out:
        raise DataError(f"{what}: no rows left after cleaning ({report})")
    return out, report


def split_off(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Cut a seeded, label-stratified fraction off `examples`: (rest, cut)."""
    rng = random.Random(seed)
    by_label: dict = defaultdict(list)
    for ex in examples:
        by_label[ex.label].append(ex)
    rest, cut = [], []
    for label in sorted(by_label, key=str):
        group = by_label[label][:]
        rng.shuffle(group)
        n = round(len(group) * fraction)
        cut.extend(group[:n])
        rest.extend(group[n:])
    return rest, cut


def k_shot(examples: list[Example], k: int, seed: int, what: str, labels: list[str]) -> list[Example]:
    """K examples per class, seeded; errors name the class that has too few. Without labels
    (generation), K examples in all."""
    rng = random.Random(seed)
    if not labels:
        if len(examples) < k:
            raise DataError(f"{what}: {len(examples)} examples, fewer than k_shot={k}; lower data.k_shot")
        return rng.sample(examples, k)
    by_label: dict = defaultdict(list)
    for ex in examples:
        by_label[ex.label].append(ex)
    out = []
    for idx, name in enumerate(labels):
        group = by_label.get(idx, [])
        if len(group) < k:
            raise DataError(f"{what}: class '{name}' has {len(group)} examples, fewer than "
                            f"k_shot={k}; lower data.k_shot")
        out.extend(rng.sample(group, k))
    rng.shuffle(out)
    return out


def load_splits(cfg) -> Splits:
    """Read, map, clean, split and sample the data a `DataConfig` describes."""

    def rows_for(key: str):
        src = getattr(cfg, key)
        if src is None:
            return None, None
        if cfg.dataset:
            return read_hf(cfg.dataset, cfg.dataset_config, src), f"{cfg.dataset}[{src}]"
        return read_rows(src, cfg.format, cfg.columns), str(src)

    train_rows, train_src = rows_for("train")
    if train_rows is None:
        raise DataError("data.train: no training data given; set data.train to a file")
    if cfg.labels is not None and len(set(cfg.labels)) != len(cfg.labels):
        raise DataError(f"data.labels: labels must be distinct, got {cfg.labels}")
    generation = cfg.task == "generation"
    if generation:
        labels = []
    else:
        labels = [str(x) for x in cfg.labels] if cfg.labels else infer_labels(
            train_rows, cfg.label_column, train_src)

    def examples(rows, src):
        return to_examples(rows, cfg.text_column, cfg.text_pair_column,
                           None if generation else cfg.label_column, labels, src,
                           cfg.target_column if generation else None)

    train = examples(train_rows, train_src)
    parts = {}
    for key in ("dev", "test"):
        rows, src = rows_for(key)
        parts[key] = examples(rows, src) if rows is not None else None
        if generation and parts[key] is not None:  # evaluated once per input, on all references
            parts[key] = group_refs(parts[key])
    report: dict = {}
    test = dev = None
    if parts["test"] is not None:
        test, report["test"] = clean(parts["test"], cfg.clean, "test")
    exclude = {(e.text, e.text_pair) for e in test} if test and cfg.clean.drop_test_overlap else None
    train, report["train"] = clean(train, cfg.clean, "train", exclude)
    if parts["dev"] is not None:
        dev, report["dev"] = clean(parts["dev"], cfg.clean, "dev", exclude)
    if test is None and cfg.test_fraction:
        train, test = split_off(train, cfg.test_fraction, cfg.split_seed)
    if dev is None and cfg.dev_fraction:
        train, dev = split_off(train, cfg.dev_fraction, cfg.split_seed)
    if cfg.k_shot:
        train = k_shot(train, cfg.k_shot, cfg.k_shot_seed, "train", labels)
    if cfg.k_shot_dev and dev:
        dev = k_shot(dev, cfg.k_shot_dev, cfg.k_shot_seed, "dev", labels)
    if cfg.max_test and test:
        test = test[:cfg.max_test]
    report["sizes"] = {"train": len(train), "dev": len(dev or []), "test": len(test or [])}
    return Splits(train, dev or [], test or [], labels, report)
