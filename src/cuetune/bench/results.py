"""A grid's rows kept across runs of the same command: read back from an earlier
`results.json`, gathered as cells finish, and the reports rewritten after every cell.

A cell whose run folders are gone (deleted to free disk, or left on another machine) is read
back from the `results.json` kept in the output folder, if its settings there are unchanged.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml
from pydantic import ValidationError

from cuetune import atomic
from cuetune.bench import report
from cuetune.bench.grid import BenchConfig, Cell, MethodEntry
from cuetune.bench.points import cell_dir
from cuetune.errors import ConfigError

log = logging.getLogger(__name__)

SHARED_SETTINGS = ("model", "train", "data", "generate")
"""Bench sections that change every cell's result (a method's own entry changes its cells')."""


def recorded_rows(cfg: BenchConfig, out: Path, with_failed: bool = False) -> dict[str, dict]:
    """Finished cells of an earlier `results.json` in `out` whose settings match `cfg`, by key.

    Only rows without an error are kept, and only for methods whose entry, and the shared
    sections, are as in `cfg`: a row trained under other settings is never passed off as this
    grid's. Tasks, seeds and other methods may differ (the grid was split or has grown).
    `with_failed`: keep failed rows too (joining shards reports them)."""
    path = out / "results.json"
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        old = saved["bench"]
        rows = {Cell(r["task"], r["method"], r["k"], r["seed"]).key: r for r in saved["cells"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:  # a row without its cell, too
        raise ConfigError(f"{path}: not a results.json this bench can read back ({exc}); move it "
                          "aside to run the grid afresh") from None
    new = cfg.model_dump(mode="json")
    changed = [k for k in SHARED_SETTINGS if old.get(k) != new[k]]
    if changed:
        log.warning("%s: written with other %s settings; its cells are not read back",
                    path, "/".join(changed))
        return {}
    same = {m for m, entry in new["methods"].items() if _entry(old.get("methods", {}).get(m)) == entry}
    return {key: r for key, r in rows.items()
            if (with_failed or r.get("error") is None) and r["method"] in same}


def _entry(saved) -> dict | None:
    """A saved method entry with today's defaults filled in (keys added since it was written
    must not make an unchanged row look changed)."""
    try:
        return MethodEntry.model_validate(saved).model_dump(mode="json")
    except ValidationError:
        return None


class Results:
    """The rows of a grid run (`todo`: its cells) as they come in, and its reports.

    Rows of `todo` whose run folders are gone are read back from `out`'s results.json as they
    are (`kept`: not run again; a cell whose folder is there is read back from it, or resumed,
    by the runner). Rows in `out` outside `todo` (a narrowed grid, failed ones too: a resume
    hides no failure) stay in every report written, so no finished cell leaves results.json."""

    def __init__(self, cfg: BenchConfig, out: Path, todo: list[Cell]):
        out.mkdir(parents=True, exist_ok=True)
        self.cfg, self.out, self.todo = cfg, out, todo
        recorded = recorded_rows(cfg, out)  # read before the first cell rewrites results.json
        self.kept = {c.key: recorded[c.key] for c in todo
                     if c.key in recorded and not cell_dir(out, c).exists()}
        keys = {c.key for c in todo}
        self.others = [r for key, r in recorded_rows(cfg, out, with_failed=True).items() if key not in keys]
        self.rows: dict[str, dict] = dict(self.kept)
        atomic.write_text(out / "bench.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False,
                                                             allow_unicode=True))

    def add(self, rows: list[dict]) -> None:
        """Record finished (or failed) rows and rewrite the reports."""
        self.rows.update({Cell(r["task"], r["method"], r["k"], r["seed"]).key: r for r in rows})
        self.write()

    def ordered(self) -> list[dict]:
        """The rows of `todo` there are so far, in grid order."""
        return [self.rows[c.key] for c in self.todo if c.key in self.rows]

    def write(self) -> None:
        report.write_all(self.cfg, self.ordered() + self.others, self.out)
