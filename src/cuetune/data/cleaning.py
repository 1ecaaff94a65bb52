"""Cleaning: whitespace, empty rows, duplicates and rows that also sit in the test split.

Counts of what was dropped are reported, so a user sees what the data lost.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from cuetune.data.examples import Example
from cuetune.errors import DataError


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

