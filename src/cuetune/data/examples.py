"""Examples: what a data row becomes, and how rows map onto examples.

A row (a dict from any reader) becomes an `Example` through a column mapping; labels may be
names or integer indices into the label list, and every problem is reported with the row's
file and line (`train.jsonl:17: ...`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from cuetune.errors import DataError, did_you_mean


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
        text = as_text(row[text_col], where, text_col)
        pair = as_text(row[pair_col], where, pair_col) if pair_col else None
        label = _label_index(row[label_col], labels, where) if label_col and labels else None
        refs = _refs(row[target_col], where, target_col) if target_col else ()
        out.append(Example(text, pair, label, where, refs[0] if refs else None, refs))
    return out


def _refs(value, where: str, col: str) -> tuple[str, ...]:
    """One reference text, or a JSON list of them; every one must be non-empty text."""
    values = value if isinstance(value, list) else [value]
    refs = tuple(" ".join(as_text(v, where, col).split()) for v in values)
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


def as_text(value, where: str, col: str) -> str:
    """A row's cell as text (numbers written out, None empty), checked by `check_text`."""
    if isinstance(value, str):
        return check_text(value, f"{where}: column '{col}'")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if value is None:
        return ""
    raise DataError(f"{where}: column '{col}' must be text, got {type(value).__name__}")


def check_text(text: str, where: str) -> str:
    """`text` as it is, or a DataError naming `where` when it holds a lone surrogate: half of a
    UTF-16 pair (U+D800 to U+DFFF), which is no Unicode character. A JSON escape such as
    `\\udcff`, or bytes read with Python's surrogateescape, make one; no tokenizer and no
    UTF-8 file can take it, so it is refused where it enters, with its place."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        raise DataError(f"{where}: character {exc.start + 1} is U+{code:04X}, half of a UTF-16 surrogate "
                        "pair and not a Unicode character (a \\u escape or undecodable bytes make one); "
                        "remove it or write the real character") from None
    return text


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
        if isinstance(value, str):
            check_text(value, f"{where}: column '{label_col}'")
        values.add(str(value).strip())
    if len(values) < 2:
        raise DataError(f"{source}: found {len(values)} distinct label(s); need at least 2")
    def order(v: str):
        numeric = v.lstrip("-").isdigit()
        return (not numeric, int(v) if numeric else 0, v)

    return sorted(values, key=order)


