"""One grid point of a cell as a cuetune run, and the results row a cell reports.

Every grid point is an ordinary run directory under `output_dir/runs/`, so the grid is
resumable: a run with a manifest is done and is read back; a run with a checkpoint continues
from it; any other leftover folder is started again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from cuetune.bench.grid import BenchConfig, Cell, grid_points, search_settings
from cuetune.bench.report import COLUMNS
from cuetune.config import apply_overrides, validate
from cuetune.data.tasks import TASKS
from cuetune.engine.checkpoint import CHECKPOINT
from cuetune.runs import artifacts
from cuetune.runs.manifest import Manifest
from cuetune.runs.train import resume_run
from cuetune.search import combination
from cuetune.search.generic import own_task_prompt
from cuetune.search.runner import run as run_search

FULL_WEIGHTS_MB = 50


def cell_dir(out: Path, cell: Cell) -> Path:
    return out / "runs" / cell.key  # runs/<task>/<method>/k<K>-s<seed>


def run_config(cfg: BenchConfig, root: Path, cell: Cell, point: dict, run_dir: Path,
               searched: tuple[dict, dict | None] | None = None) -> dict:
    """The raw run config of one grid point of one cell (`searched`: the prompt section a
    search chose, and the method section of its combination or None)."""
    entry = cfg.methods[cell.method]
    task = cfg.task(cell.task)
    raw = {"model": {**cfg.model, **entry.model}, **task.sections(root, cell.k, cell.seed)}
    if entry.own_task:
        raw["prompt"] = own_task_prompt(task)
    raw["data"].update(cfg.data)
    raw["prompt"].update(entry.prompt)
    if searched is not None:
        raw["prompt"].update(searched[0])
    if "generate" in raw or cfg.generate:
        raw["generate"] = {**raw.get("generate", {}), **cfg.generate}
    raw["method"] = dict(searched[1] if searched is not None and searched[1] else entry.method)
    raw["train"] = {**cfg.train, **entry.train, "seed": cell.seed, "progress": False,
                    "zero_shot_baseline": False}
    raw["output_dir"] = str(run_dir)
    return apply_overrides(raw, [f"{k}={v}" for k, v in point.items()])


def searched_prompt(cfg: BenchConfig, root: Path, cell: Cell, out: Path) -> tuple[dict, dict | None]:
    """Run (or read back) the cell's prompt search: the prompt section dev chose, and with
    `search.combine` the method section that trains the row's method on the combination (None
    without). `combine` changes the outputs only, so it is left out of the folder's key: rows
    that differ only there share one search."""
    entry = cfg.methods[cell.method]
    raw = run_config(cfg, root, cell, {}, out / "unused", searched=None)
    raw.update(method={"name": "zero-shot"}, output_dir="unused")
    # a named task brings its frozen hand baselines and cue phrases (a custom task has none)
    task = cell.task if cell.task in TASKS else None
    search = {k: v for k, v in entry.search.items() if k != "combine"}
    key = hashlib.sha256(json.dumps([raw, search, task], sort_keys=True).encode()).hexdigest()[:10]
    folder = out / "search" / cell.task / f"k{cell.k}-s{cell.seed}-{key}"
    settings = search_settings(entry, f"methods.{cell.method}.search", seed=cell.seed, out=str(folder),
                               task=task, own_task=entry.own_task and task is not None)
    summary = run_search(validate(raw), settings)
    combined = summary["combined"]
    if combined is None or not combined["chosen"]:
        return summary["best"]["prompt"], None
    method = dict(entry.method)
    return combination.sections(method, [m["prompt"] for m in combined["members"]], method.get("num_tokens"))


def run_point(run_dir: Path, begin: Callable[[], object]) -> Manifest:
    """Finish one run (read back, resumed from its checkpoint, or restarted with `begin()`
    after clearing a leftover) and return its manifest."""
    manifest_path = run_dir / artifacts.MANIFEST
    if manifest_path.exists():
        return artifacts.read_manifest(run_dir)
    start = time.perf_counter()
    if (run_dir / CHECKPOINT).exists():
        resume_run(run_dir)
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        begin()
    return artifacts.update_manifest(run_dir, wall_seconds=round(time.perf_counter() - start, 1))


def drop_full_weights(run_dir: Path) -> None:
    """Delete a scored run's full-weight adapter (hundreds of MB); its manifest says so.

    The manifest is flagged before the file goes: an interrupt in between leaves a manifest
    that says "removed" beside a file still there, never one that points at a missing file."""
    adapter = run_dir / artifacts.ADAPTER
    if adapter.exists() and adapter.stat().st_size > FULL_WEIGHTS_MB * 2**20:
        artifacts.update_manifest(
            run_dir, adapter_removed="full weights deleted after scoring (keep_full_weights: false)")
        adapter.unlink()


def result_row(cfg: BenchConfig, cell: Cell, point: dict, run_dir: Path, dev_score, test: dict, params,
               train_examples, grid_size: int, wall: float) -> dict:
    """A cell's results row (test: the chosen run's test metrics)."""
    headline = cfg.task(cell.task).metric
    score = test.get(headline)
    scale = 1.0 if headline in ("accuracy", "macro_f1") else 0.01  # generation metrics are 0-100
    return {**asdict(cell), "hyperparameters": point, "run_dir": str(run_dir),
            "metric": headline, "dev_score": dev_score,
            "test_score": None if score is None else score * scale,
            "test_macro_f1": test.get("macro_f1"), "test_size": test.get("n"),
            "test_majority": _majority(test), "test_truncated": test.get("truncated"),
            "test_metrics": {k: v for k, v in test.items() if isinstance(v, int | float)
                             and not isinstance(v, bool) and k not in SIZES},
            "trainable_parameters": params, "train_examples": train_examples,
            "grid_size": grid_size, "wall_seconds": round(wall, 1), "error": None}


SIZES = ("n", "truncated", "references_per_input")
"""Counts in a test metrics dict, not scores (`test_metrics` leaves them to their columns)."""


def _majority(test: dict) -> float | None:
    """The share of the test set's largest class (what always answering it scores)."""
    support = [c["support"] for c in (test.get("per_class") or {}).values()]
    return max(support) / sum(support) if support and sum(support) else None


def failed_row(cfg: BenchConfig, cell: Cell, exc: Exception, seconds: float) -> dict:
    """The results row of a cell that raised: every report column, no scores, the error."""
    return {**dict.fromkeys(COLUMNS), **asdict(cell), "hyperparameters": {},
            "metric": cfg.task(cell.task).metric,
            "grid_size": len(grid_points(cfg.methods[cell.method])),
            "wall_seconds": round(seconds, 1), "error": f"{type(exc).__name__}: {exc}"}
