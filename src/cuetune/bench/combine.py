"""Bench rows built from other rows of the same cell (task, K, seed), so they sit in the same
tables as the methods they combine:

- `ensemble: {members: [prefix, lora], weighting: mean}`: `cuetune ensemble` over the members'
  dev-chosen runs of that cell (same split by construction);
- `distill: {teacher: <row>, pool: FILE, size: N}` with `method:` the student's: `cuetune
  distill` from the teacher row's run or ensemble on a pool file (relative to the bench's data
  root; its labels are dropped), the student's other keys taken from the teacher's config.

The member and teacher rows are run (or read back) first, by `cells.run_cell`, and handed in;
each combined cell keeps its own folder and is read back from it on a rerun.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from cuetune.bench.grid import BenchConfig, Cell
from cuetune.bench.points import cell_dir, result_row, run_point
from cuetune.engine.objectives import dev_score
from cuetune.runs import ensemble
from cuetune.runs.distill import distill


def ensemble_row(cfg: BenchConfig, cell: Cell, out: Path, members: list[dict]) -> dict:
    """Build (or read back) the ensemble of the members' runs for this cell; its results row."""
    spec = cfg.methods[cell.method].ensemble
    folder = cell_dir(out, cell) / "ensemble"
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
    return result_row(cfg, cell, {}, folder, dev, metrics.get("test") or {}, params,
                      members[0]["train_examples"], 1, wall)


def distill_row(cfg: BenchConfig, root: Path, cell: Cell, out: Path, teacher: dict) -> dict:
    """Distil (or resume, or read back) the cell's student from the teacher row's run; its row."""
    entry = cfg.methods[cell.method]
    run_dir = cell_dir(out, cell) / "default"
    pool = Path(entry.distill.pool)
    overrides = _dotted("method", entry.method) + _dotted("train", entry.train)

    def begin():
        distill(teacher["run_dir"], pool if pool.is_absolute() else root / pool, run_dir, overrides,
                entry.distill.size, seed=cell.seed)

    best = run_point(run_dir, begin)
    dev = best.metrics.get("dev_best") or best.metrics.get("dev")
    metric = best.config["train"]["metric"]
    return result_row(cfg, cell, {}, run_dir, dev and dev_score(best.task, dev, metric),
                      best.metrics.get("test") or {}, best.trainable_parameters,
                      best.data.get("sizes", {}).get("train"), 1,
                      (best.wall_seconds or 0.0) + (best.test_seconds or 0.0))


def _dotted(section: str, values: dict) -> list[str]:
    return [f"{section}.{k}={json.dumps(v)}" for k, v in values.items()]
