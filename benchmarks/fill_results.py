"""Paste a bench's per-seed tables into docs/RESULTS.md, so every table there is rendered by
shipped code from the bench's own results.json rather than typed by hand.

    python benchmarks/fill_results.py docs/bench/lmbff_cpu_results.json table
    python benchmarks/fill_results.py bench-out/lmbff-cpu-more/results.json trec --task trec

The tables replace whatever sits between `<!-- MARKER -->` and `<!-- /MARKER -->`; the page is
rewritten atomically, and a missing marker is an error that names it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cuetune import atomic
from cuetune.bench import report

DOC = Path(__file__).resolve().parent.parent / "docs" / "RESULTS.md"


def fill(doc: str, marker: str, table: str, name: Path = DOC) -> str:
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    if start not in doc or end not in doc:
        raise SystemExit(f"{name}: no `{start}` ... `{end}` pair; add one where the table goes")
    head, rest = doc.split(start, 1)
    return f"{head}{start}\n{table.rstrip()}\n{end}{rest.split(end, 1)[1]}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="a bench's results.json")
    ap.add_argument("marker", help="the name inside <!-- NAME --> in the page")
    ap.add_argument("--task", action="append", help="only these tasks (repeatable)")
    ap.add_argument("--doc", type=Path, default=DOC)
    args = ap.parse_args(argv)
    results = json.loads(args.results.read_text(encoding="utf-8"))
    rows = results["cells"]
    if args.task:
        rows = [r for r in rows if r["task"] in args.task]
    if not rows:
        raise SystemExit(f"{args.results}: no cells for {args.task or 'any task'}")
    bench = results["bench"]
    own = {m: e["seeds"] for m, e in bench["methods"].items() if e.get("seeds")}
    table = report.per_seed(rows, bench["seeds"], own)
    atomic.write_text(args.doc, fill(args.doc.read_text(encoding="utf-8"), args.marker, table, args.doc))
    sys.stdout.write(table)


if __name__ == "__main__":
    main()
