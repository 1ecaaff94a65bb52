"""Bench rows built from other rows of the same cell (task, K, seed), so they sit in the same
tables as the methods they combine:

- `ensemble: {members: [prefix, lora], weighting: mean}`: `cuetune ensemble` over the members'
  dev-chosen runs of that cell (same split by construction);
- `distill: {teacher: <row>, pool: FILE, size: N}` with `method:` the student's: `cuetune
  distill` from the teacher row's run or ensemble on a pool file (relative to the bench's data
  root; its labels are dropped), the student's other keys taken from the teacher's config.

Member and teacher cells are run (or read back from their folders) first, whatever the order of
the grid; each combined cell keeps its own folder and is read back from it on a rerun.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import Field

from cuetune import ensemble
from cuetune.config import Strict
from cuetune.errors import ConfigError
from cuetune.report import Cell


class EnsembleEntry(Strict):
    members: list[str] = Field(min_length=2)
    """Other rows of this bench (plain method rows)."""
    weighting: Literal["mean", "dev"] = "mean"


class DistillEntry(Strict):
    teacher: str
    """Another row of this bench: a method or an ensemble row."""
    pool: str
    """Unlabelled inputs: a file relative to the bench's data root (or absolute)."""
    size: int | None = Field(None, ge=1)
    """A sample of the pool, drawn with the cell's seed; None: all of it."""


def check_kind(entry, where: str) -> None:
    """A row is a method, an ensemble of rows, or a student distilled from a row."""
    if entry.ensemble is not None and entry.distill is not None:
        raise ConfigError(f"{where}: ensemble and distill are two kinds of row; keep one")
    if entry.method is None and entry.ensemble is None:
        raise ConfigError(f"{where}.method: missing; every row but an ensemble names its method")
    combined = entry.ensemble is not None or entry.distill is not None
    extra = [k for k in ("grid", "search", "prompt", "model") if combined and getattr(entry, k)]
    extra += ["method"] if entry.ensemble is not None and entry.method is not None else []
    extra += ["train"] if entry.ensemble is not None and entry.train else []
    if extra:
        raise ConfigError(f"{where}.{extra[0]}: a combined row takes its members' settings; remove it")


def check(methods: dict, where: str) -> None:
    """Combined rows name existing rows of the right kind, on seeds those rows run."""
    for name, entry in methods.items():
        if entry.ensemble is None and entry.distill is None:
            continue
        named = entry.ensemble.members if entry.ensemble is not None else [entry.distill.teacher]
        for other in named:
            if other not in methods or other == name:
                raise ConfigError(f"{where}: methods.{name}: {other!r} is not another row of this bench; "
                                  f"rows are {sorted(methods)}")
            if entry.ensemble is not None and (methods[other].ensemble or methods[other].distill):
                raise ConfigError(f"{where}: methods.{name}.ensemble.members: {other!r} is itself combined; "
                                  "an ensemble combines trained method rows")
            if methods[other].distill is not None:
                raise ConfigError(f"{where}: methods.{name}.distill.teacher: {other!r} is a distilled row; "
                                  "name a method or an ensemble row")
            mine, theirs = entry.seeds, methods[other].seeds
            if theirs is not None and (mine is None or set(mine) - set(theirs)):
                raise ConfigError(f"{where}: methods.{name}: {other!r} runs only seeds {theirs}; give "
                                  f"methods.{name}.seeds a subset of them")


def linked(methods: dict, name: str) -> bool:
    """Whether a row is combined or is part of a combined row (its cells must run together)."""
    def parts(e):
        return (e.ensemble.members if e.ensemble else []) + ([e.distill.teacher] if e.distill else [])
    return bool(parts(methods[name])) or any(name in parts(e) for e in methods.values())


def run_ensemble(cfg, cell: Cell, out: Path, member_row: Callable[[Cell], dict], row) -> dict:
    """Build (or read back) the ensemble of the members' runs for this cell; its results row."""
    spec = cfg.methods[cell.method].ensemble
    members = [member_row(Cell(cell.task, m, cell.k, cell.seed)) for m in spec.members]
    folder = out / "runs" / cell.key / "ensemble"
    runs = [str(Path(r["run_dir"]).resolve()) for r in members]
    saved = folder / ensemble.ENSEMBLE
    start = time.perf_counter()
    if saved.is_file() and [m["run_dir"] for m in json.loads(saved.read_text())["members"]] == runs \
            and json.loads(saved.read_text())["weighting"] == spec.weighting:
        metrics = json.loads(saved.read_text())["metrics"]
    else:
        if folder.exists():  # half-built, or built from other members
            shutil.rmtree(folder)
        metrics = ensemble.build(runs, folder, spec.weighting)
    wall = sum(r["wall_seconds"] or 0.0 for r in members) + time.perf_counter() - start
    params = sum(r["trainable_parameters"] or 0 for r in members)
    dev = (metrics.get("dev") or {}).get(cfg.train.get("metric", "accuracy"))
    return row(cfg, cell, {}, folder, dev, metrics.get("test") or {}, params,
               members[0]["train_examples"], 1, wall)


def run_distill(cfg, root: Path, cell: Cell, out: Path, member_row: Callable[[Cell], dict], run_point):
    """Distil (or resume, or read back) the cell's student; returns (run folder, manifest)."""
    from cuetune.distill import distill

    entry = cfg.methods[cell.method]
    teacher = member_row(Cell(cell.task, entry.distill.teacher, cell.k, cell.seed))
    run_dir = out / "runs" / cell.key / "default"
    pool = Path(entry.distill.pool)
    overrides = _dotted("method", entry.method) + _dotted("train", entry.train)

    def begin():
        distill(teacher["run_dir"], pool if pool.is_absolute() else root / pool, run_dir, overrides,
                entry.distill.size, seed=cell.seed)

    return run_dir, run_point(run_dir, begin)


def _dotted(section: str, values: dict) -> list[str]:
    return [f"{section}.{k}={json.dumps(v)}" for k, v in values.items()]
