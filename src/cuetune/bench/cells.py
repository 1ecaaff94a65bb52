"""Running cells: one cell's grid points (the best dev point reported), combined rows after the
rows they combine, and the whole grid in order, resumable.

A cell that fails (a config its task cannot take, a crash) is recorded with its error and the
grid goes on: an hour of finished cells is not lost to one bad one, and the next run of the
same command retries it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from cuetune.bench.combine import distill_row, ensemble_row
from cuetune.bench.grid import BenchConfig, Cell, cells, grid_points, point_name
from cuetune.bench.points import (
    cell_dir,
    drop_full_weights,
    failed_row,
    result_row,
    run_config,
    run_point,
    searched_prompt,
)
from cuetune.bench.results import Results
from cuetune.engine.objectives import dev_score
from cuetune.errors import CuetuneError
from cuetune.runs.train import score_test, train

log = logging.getLogger(__name__)


def run_cell(cfg: BenchConfig, root: Path, cell: Cell, out: Path) -> dict:
    """Train every grid point of a cell; report the one with the best dev score.

    With several points, training skips the test split and only dev's pick is scored on test
    afterwards: the protocol's "test chooses nothing" then holds by construction, and a grid
    of N points costs one test pass instead of N. A combined row runs (or reads back) the rows
    it combines first."""
    entry = cfg.methods[cell.method]
    if entry.ensemble is not None:
        members = [run_cell(cfg, root, Cell(cell.task, m, cell.k, cell.seed), out)
                   for m in entry.ensemble.members]
        return ensemble_row(cfg, cell, out, members)
    if entry.distill is not None:
        teacher = run_cell(cfg, root, Cell(cell.task, entry.distill.teacher, cell.k, cell.seed), out)
        return distill_row(cfg, root, cell, out, teacher)
    points = grid_points(entry)
    searched = searched_prompt(cfg, root, cell, out) if entry.search is not None else None
    results = []
    for point in points:
        run_dir = cell_dir(out, cell) / point_name(point)
        raw = run_config(cfg, root, cell, point, run_dir, searched)
        if len(points) > 1:
            raw["train"]["evaluate_test"] = False
        results.append((point, run_dir, run_point(run_dir, lambda raw=raw: train(raw))))
    metric = results[0][2].config["train"]["metric"]
    task = results[0][2].task

    def score(item):
        m = item[2].metrics
        dev = m.get("dev_best") or m.get("dev")
        return dev_score(task, dev, metric) if dev else float("-inf")

    point, run_dir, best = max(results, key=score)
    if "test" not in best.metrics and best.data["sizes"]["test"]:
        best = score_test(run_dir)
    if not cfg.keep_full_weights:
        for _, path, _ in results:
            drop_full_weights(path)
    wall = sum(r[2].wall_seconds or 0.0 for r in results) + (best.test_seconds or 0.0)
    return result_row(cfg, cell, point, run_dir, score((point, run_dir, best)),
                      best.metrics.get("test") or {}, best.trainable_parameters,
                      best.data.get("sizes", {}).get("train"), len(results), wall)


def run_bench(cfg: BenchConfig, root: Path, out: Path,
              progress: Callable[[int, int, Cell | None, float | None], None] | None = None,
              only: list[Cell] | None = None) -> list[dict]:
    """Run (or resume) the whole grid; write the reports after every cell; return the rows.

    `progress(done, total, current cell, eta seconds)`: the ETA averages the cells that ran in
    this session over the cells left to run (cells read back from an earlier session take no
    time). `only`: these cells of the grid instead of all (a shard)."""
    todo = only if only is not None else cells(cfg)
    results = Results(cfg, out, todo)
    left, ran = len(todo) - len(results.kept), []  # cells still to run (or resume from their folders)
    for done, cell in enumerate(todo):
        if cell.key in results.kept:
            continue  # no progress line: nothing runs
        if progress:
            progress(done, len(todo), cell, left * sum(ran) / len(ran) if ran else None)
        start = time.perf_counter()
        try:
            row = run_cell(cfg, root, cell, out)
        except Exception as exc:  # recorded in the row and the log; the grid goes on
            log.error("bench cell %s failed: %s", cell.key, exc,
                      exc_info=not isinstance(exc, CuetuneError))  # a user's error needs no trace
            row = failed_row(cfg, cell, exc, time.perf_counter() - start)
        left -= 1
        if (seconds := time.perf_counter() - start) > 1.0:  # a cell read back from its folders is not timed
            ran.append(seconds)
        results.add([row])
    if len(results.kept) == len(todo):  # every cell was read back: the reports are still written
        results.write()
    if progress:
        progress(len(todo), len(todo), None, 0.0)
    return results.ordered()
