"""`cuetune bench`: a tasks x methods x K x seeds grid under the LM-BFF few-shot protocol.

Protocol (Gao et al. 2021): K examples per class for training and K per class for dev, seeds
13, 21, 42, 87, 100, the full test set. Hyperparameters listed in a method's `grid` are each
trained, and the one with the best dev score is reported; test scores never choose anything.

Every grid point is an ordinary cuetune run directory under `output_dir/runs/`, so the grid is
resumable: a run with a manifest is done and is read back; a run with a checkpoint continues
from it; any other leftover folder is started again. Results are rewritten after every cell.
A cell whose run folders are gone (deleted to free disk, or left on another machine) is read
back from the `results.json` kept in the output folder, if its settings there are unchanged.

A cell that fails (a config its task cannot take, a crash) is recorded with its error and the
grid goes on: an hour of finished cells is not lost to one bad one, and the next run of the
same command retries it.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import yaml
from pydantic import Field, PrivateAttr, ValidationError

from cuetune import api, artifacts, atomic, bench_combine, report, tasks
from cuetune.bench_combine import DistillEntry, EnsembleEntry
from cuetune.checkpoint import CHECKPOINT
from cuetune.config import RunConfig, Strict, apply_overrides, read_mapping
from cuetune.errors import ConfigError, CuetuneError
from cuetune.manifest import Manifest
from cuetune.objectives import objective_for
from cuetune.report import Cell

log = logging.getLogger(__name__)
FULL_WEIGHTS_MB = 50


class MethodEntry(Strict):
    """One row of the table: a method section plus its own settings and hyperparameter grid."""

    method: dict | None = None
    """The method section (a distilled row's: the student's); an ensemble row has none."""
    ensemble: EnsembleEntry | None = None
    distill: DistillEntry | None = None
    model: dict = Field(default_factory=dict)
    train: dict = Field(default_factory=dict)
    prompt: dict = Field(default_factory=dict)
    grid: dict[str, list] = Field(default_factory=dict)
    """Dotted keys (`train.lr`) -> values; every combination runs and the best dev wins."""
    search: dict | None = None
    """A prompt search (the `search:` keys of a search config, less task, k, seed and out, which
    the cell sets) run zero-shot on the cell's train and dev before training; the prompt dev
    chooses replaces the task's. Methods with the same search settings share one search."""
    seeds: list[int] | None = None
    """A subset of the grid's seeds for this method. A method that reads no training data
    (zero-shot without demonstrations) scores the same on test for every K-shot sample, so one
    seed gives its test score at a fifth of the cost; its dev score is then one sample's."""
    k: list[int] | None = None
    """A subset of the grid's K values, for the same reason (zero-shot on SAMSum: one test pass
    of 200 generated summaries, not one per K)."""


class Reference(Strict):
    score: float
    """In percent, on the task's metric (the bars' scale)."""
    label: str
    """What the score is, e.g. "LM-BFF RoBERTa-large, K=16"."""


class BenchConfig(Strict):
    name: str = "bench"
    model: dict = Field(default_factory=lambda: {"name": "smollm2-135m"})
    data_root: str = "../shared/data"
    """Folder holding the task data (relative to the bench config file, else to the cwd)."""
    tasks: list[str]
    custom_tasks: dict[str, tasks.TaskSpec] = Field(default_factory=dict)
    """Tasks declared here (files relative to this config's folder), usable in `tasks`."""
    methods: dict[str, MethodEntry]
    k: list[int] = Field(default_factory=lambda: [16])
    seeds: list[int] = Field(default_factory=lambda: list(tasks.LMBFF_SEEDS))
    train: dict = Field(default_factory=dict)
    """Train settings for every cell (a method entry's `train` overrides them)."""
    data: dict = Field(default_factory=dict)
    generate: dict = Field(default_factory=dict)
    """Decoding settings for generation tasks (over the task's own)."""
    output_dir: str = "bench-out"
    keep_full_weights: bool = False
    """Full-weight adapters (hundreds of MB per run) are deleted once scored unless true."""
    references: dict[str, Reference] = Field(default_factory=dict)
    """Per task, a score to draw as a line on the bar plots (e.g. a published result)."""
    _folder: Path = PrivateAttr(default_factory=Path)
    """The bench config file's folder: custom tasks' files are relative to it."""

    def task(self, name: str) -> tasks.Task:
        spec = self.custom_tasks.get(name)
        return spec.to_task(name, self._folder) if spec is not None else tasks.get(name)


def load_bench(path: str | Path, overrides: list[str] | None = None) -> tuple[BenchConfig, Path]:
    """The bench config and its resolved data root."""
    p = Path(path)
    raw = read_mapping(p, "bench config")
    try:
        cfg = BenchConfig.model_validate(apply_overrides(raw, overrides or []))
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{p}: {'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from None
    cfg._folder = p.parent
    narrowed = {item.split("=", 1)[0].strip() for item in overrides or []}
    for name in cfg.custom_tasks:
        if name in tasks.TASKS:
            raise ConfigError(f"{p}: custom_tasks.{name}: shadows the named task {name!r}; rename it")
    for name in cfg.tasks:
        cfg.task(name)
    for name in cfg.references:
        if name not in cfg.tasks:
            raise ConfigError(f"{p}: references.{name}: not one of the bench's tasks {cfg.tasks}; "
                              "a reference for it would be drawn nowhere")
    for name, entry in cfg.methods.items():
        bench_combine.check_kind(entry, f"{p}: methods.{name}")
        if entry.search is not None:
            _search_settings(entry, f"{p}: methods.{name}.search")
        for key in ("seeds", "k"):  # `--set seeds=[21]` narrows the grid: entries follow it
            mine, grid = getattr(entry, key), getattr(cfg, key)
            if mine is not None and (not mine or (set(mine) - set(grid) and key not in narrowed)):
                raise ConfigError(f"{p}: methods.{name}.{key}: {mine} must be a non-empty subset of "
                                  f"the grid's {key} {grid}; a value outside it would never run")
    bench_combine.check(cfg.methods, str(p))
    root = Path(cfg.data_root)
    if not root.is_absolute() and (p.parent / root).is_dir():
        root = p.parent / root
    return cfg, root


def cells(cfg: BenchConfig) -> list[Cell]:
    return [Cell(t, m, k, s) for t in cfg.tasks for k in cfg.k for m, entry in cfg.methods.items()
            if entry.k is None or k in entry.k
            for s in cfg.seeds if entry.seeds is None or s in entry.seeds]


def grid_points(entry: MethodEntry) -> list[dict[str, object]]:
    keys = list(entry.grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*entry.grid.values())]


def _point_name(point: dict) -> str:
    return "-".join(f"{k.split('.')[-1]}{v}" for k, v in point.items()) or "default"


SET_BY_CELL = ("task", "k", "seed", "out", "data_root")


def _search_settings(entry: MethodEntry, where: str, **cell):
    from cuetune.search.config import SearchSettings

    mine = [k for k in SET_BY_CELL if k in entry.search]
    if mine:
        raise ConfigError(f"{where}.{mine[0]}: set by each bench cell; remove it")
    try:
        return SearchSettings.model_validate({**entry.search, **cell})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{where}.{'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from None


def searched_prompt(cfg: BenchConfig, root: Path, cell: Cell, out: Path) -> dict:
    """Run (or read back) the cell's prompt search; the prompt section dev chose."""
    import hashlib

    from cuetune import search
    from cuetune.config import validate
    from cuetune.tasks import TASKS

    entry = cfg.methods[cell.method]
    raw = run_config(cfg, root, cell, {}, out / "unused", searched=None)
    raw.update(method={"name": "zero-shot"}, output_dir="unused")
    # a named task brings its frozen hand baselines and cue phrases (a custom task has none)
    task = cell.task if cell.task in TASKS else None
    key = hashlib.sha256(json.dumps([raw, entry.search, task], sort_keys=True).encode()).hexdigest()[:10]
    folder = out / "search" / cell.task / f"k{cell.k}-s{cell.seed}-{key}"
    settings = _search_settings(entry, f"methods.{cell.method}.search", seed=cell.seed, out=str(folder),
                                task=task)
    return search.run(validate(raw), settings)["best"]["prompt"]


def run_config(cfg: BenchConfig, root: Path, cell: Cell, point: dict, run_dir: Path,
               searched: dict | None = None) -> dict:
    """The raw run config of one grid point of one cell (`searched`: the prompt a search chose)."""
    entry = cfg.methods[cell.method]
    raw = {"model": {**cfg.model, **entry.model}, **cfg.task(cell.task).sections(root, cell.k, cell.seed)}
    raw["data"].update(cfg.data)
    raw["prompt"].update(entry.prompt)
    if searched is not None:
        raw["prompt"].update(searched)
    if "generate" in raw or cfg.generate:
        raw["generate"] = {**raw.get("generate", {}), **cfg.generate}
    raw["method"] = dict(entry.method)
    raw["train"] = {**cfg.train, **entry.train, "seed": cell.seed, "progress": False,
                    "zero_shot_baseline": False}
    raw["output_dir"] = str(run_dir)
    return apply_overrides(raw, [f"{k}={v}" for k, v in point.items()])


def run_point(run_dir: Path, begin: Callable[[], object]) -> Manifest:
    """Finish one run (read back, resumed from its checkpoint, or restarted with `begin()`
    after clearing a leftover) and return its manifest."""
    manifest_path = run_dir / artifacts.MANIFEST
    if manifest_path.exists():
        return artifacts.read_manifest(run_dir)
    start = time.perf_counter()
    if (run_dir / CHECKPOINT).exists():
        api.resume_run(run_dir)
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


def run_cell(cfg: BenchConfig, root: Path, cell: Cell, out: Path) -> dict:
    """Train every grid point of a cell; report the one with the best dev score.

    With several points, training skips the test split and only dev's pick is scored on test
    afterwards: the protocol's "test chooses nothing" then holds by construction, and a grid
    of N points costs one test pass instead of N."""
    entry = cfg.methods[cell.method]

    def member(c: Cell) -> dict:
        return run_cell(cfg, root, c, out)

    if entry.ensemble is not None:
        return bench_combine.run_ensemble(cfg, cell, out, member, _row)
    if entry.distill is not None:
        run_dir, best = bench_combine.run_distill(cfg, root, cell, out, member, run_point)
        dev = best.metrics.get("dev_best") or best.metrics.get("dev")
        metric = RunConfig.model_validate(best.config).train.metric
        return _row(cfg, cell, {}, run_dir, dev and objective_for(best.task).score(dev, metric),
                    best.metrics.get("test") or {}, best.trainable_parameters,
                    best.data.get("sizes", {}).get("train"), 1,
                    (best.wall_seconds or 0.0) + (best.test_seconds or 0.0))
    points = grid_points(entry)
    searched = searched_prompt(cfg, root, cell, out) if entry.search is not None else None
    results = []
    for point in points:
        run_dir = cell_dir(out, cell) / _point_name(point)
        raw = run_config(cfg, root, cell, point, run_dir, searched)
        if len(points) > 1:
            raw["train"]["evaluate_test"] = False
        results.append((point, run_dir, run_point(run_dir, lambda raw=raw: api.train(raw))))
    metric = RunConfig.model_validate(results[0][2].config).train.metric
    objective = objective_for(results[0][2].task)

    def dev_score(item):
        m = item[2].metrics
        dev = m.get("dev_best") or m.get("dev")
        return objective.score(dev, metric) if dev else float("-inf")

    point, run_dir, best = max(results, key=dev_score)
    if "test" not in best.metrics and best.data["sizes"]["test"]:
        best = api.score_test(run_dir)
    if not cfg.keep_full_weights:
        for _, path, _ in results:
            drop_full_weights(path)
    wall = sum(r[2].wall_seconds or 0.0 for r in results) + (best.test_seconds or 0.0)
    return _row(cfg, cell, point, run_dir, dev_score((point, run_dir, best)), best.metrics.get("test") or {},
                best.trainable_parameters, best.data.get("sizes", {}).get("train"), len(results), wall)


def _row(cfg: BenchConfig, cell: Cell, point: dict, run_dir: Path, dev_score, test: dict, params,
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
    return {**dict.fromkeys(report.COLUMNS), **asdict(cell), "hyperparameters": {},
            "metric": cfg.task(cell.task).metric,
            "grid_size": len(grid_points(cfg.methods[cell.method])),
            "wall_seconds": round(seconds, 1), "error": f"{type(exc).__name__}: {exc}"}


SHARED_SETTINGS = ("model", "train", "data", "generate")
"""Bench sections that change every cell's result (a method's own entry changes its cells')."""


def recorded_rows(cfg: BenchConfig, out: Path, with_failed: bool = False) -> dict[str, dict]:
    """Finished cells of an earlier `results.json` in `out` whose settings match `cfg`, by key.

    Only rows without an error are kept, and only for methods whose entry, and the shared
    sections, are as in `cfg`: a row trained under other settings is never passed off as this
    grid's. Tasks, seeds and other methods may differ (the grid was split or has grown).
    `with_failed`: keep failed rows too (merging shards reports them)."""
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


def read_back(cfg: BenchConfig, out: Path, todo: list[Cell]) -> dict[str, dict]:
    """Rows of `todo` taken from `out`'s results.json as they are: cells whose run folders are
    gone (a cell whose folder is there is read back from it, or resumed, by `run_cell`)."""
    recorded = recorded_rows(cfg, out)
    return {c.key: recorded[c.key] for c in todo if c.key in recorded and not cell_dir(out, c).exists()}


def other_rows(cfg: BenchConfig, out: Path, todo: list[Cell]) -> list[dict]:
    """Rows in `out` outside `todo` (a narrowed grid), failed ones too: a resume hides no failure."""
    keys = {c.key for c in todo}
    return [r for key, r in recorded_rows(cfg, out, with_failed=True).items() if key not in keys]


def cell_dir(out: Path, cell: Cell) -> Path:
    return out / "runs" / cell.key  # runs/<task>/<method>/k<K>-s<seed>


def run_bench(cfg: BenchConfig, root: Path, out: Path,
              progress: Callable[[int, int, Cell | None, float | None], None] | None = None,
              only: list[Cell] | None = None) -> list[dict]:
    """Run (or resume) the whole grid; write the reports after every cell; return the rows.

    `progress(done, total, current cell, eta seconds)`: the ETA averages the cells that ran in
    this session over the cells left to run (cells read back from an earlier session take no
    time). The reports written after each cell also hold the read-back rows of cells not
    reached yet, and those of cells outside a narrowed grid (`other_rows`), so no finished cell
    leaves results.json. `only`: these cells of the grid instead of all (a shard)."""
    out.mkdir(parents=True, exist_ok=True)
    todo, rows, ran = only if only is not None else cells(cfg), [], []
    kept = read_back(cfg, out, todo)  # before the first cell rewrites results.json
    others = other_rows(cfg, out, todo)
    atomic.write_text(out / "bench.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False,
                                                         allow_unicode=True))
    left = len(todo) - len(kept)  # cells still to run (or resume from their folders)
    for done, cell in enumerate(todo):
        if cell.key in kept:
            rows.append(kept[cell.key])  # no progress line: nothing runs
            continue
        if progress:
            progress(done, len(todo), cell, left * sum(ran) / len(ran) if ran else None)
        start = time.perf_counter()
        try:
            rows.append(run_cell(cfg, root, cell, out))
        except Exception as exc:  # recorded in the row and the log; the grid goes on
            log.error("bench cell %s failed: %s", cell.key, exc,
                      exc_info=not isinstance(exc, CuetuneError))  # a user's error needs no trace
            rows.append(failed_row(cfg, cell, exc, time.perf_counter() - start))
        left -= 1
        if (seconds := time.perf_counter() - start) > 1.0:  # a cell read back from its folders is not timed
            ran.append(seconds)
        later = [kept[c.key] for c in todo[done + 1:] if c.key in kept]
        report.write_all(cfg, rows + later + others, out)
    if len(kept) == len(todo):  # every cell was read back: the reports are still written
        report.write_all(cfg, rows + others, out)
    if progress:
        progress(len(todo), len(todo), None, 0.0)
    return rows
