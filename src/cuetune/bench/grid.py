"""What a bench grid is: its config (`BenchConfig`, one `MethodEntry` per row), its cells
(task x method x K x seed) and the hyperparameter points of each cell, checked when loaded.

Protocol (LM-BFF, Gao et al. 2021): K examples per class for training and K per class for dev,
seeds 13, 21, 42, 87, 100, the full test set. Hyperparameters listed in a method's `grid` are
each trained and the one with the best dev score is reported; test scores never choose.

A row is a method, an ensemble of other rows (`ensemble:`), or a student distilled from
another row (`distill:`); combined rows sit in the same tables as the rows they combine.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, ValidationError

from cuetune.config import Strict, apply_overrides, read_mapping
from cuetune.data import tasks
from cuetune.errors import ConfigError, did_you_mean
from cuetune.search import combination
from cuetune.search.settings import SearchSettings


@dataclass(frozen=True)
class Cell:
    """One bench cell: a method on a task at K shots with one seed (`key` names its folder)."""

    task: str
    method: str
    k: int
    seed: int

    @property
    def key(self) -> str:
        return f"{self.task}/{self.method}/k{self.k}-s{self.seed}"


class EnsembleEntry(Strict):
    """`cuetune ensemble` over the members' dev-chosen runs of the same cell."""

    members: list[str] = Field(min_length=2)
    """Other rows of this bench (plain method rows)."""
    weighting: Literal["mean", "dev"] = "mean"


class DistillEntry(Strict):
    """`cuetune distill` from the teacher row's run (or ensemble) of the same cell on a pool
    file; the student's method is the entry's `method:`, its other keys the teacher's."""

    teacher: str
    """Another row of this bench: a method or an ensemble row."""
    pool: str
    """Unlabelled inputs: a file relative to the bench's data root (or absolute)."""
    size: int | None = Field(None, ge=1)
    """A sample of the pool, drawn with the cell's seed; None: all of it."""


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
    own_task: bool = False
    """Run the task as if it were a user's own: the plain prompt a new user would write, with
    the class names as label words, and a search (if any) with no task baselines or cue
    phrases; the honest row for a search result (docs/prompts.md)."""
    seeds: list[int] | None = None
    """A subset of the grid's seeds for this method. A method that reads no training data
    (zero-shot without demonstrations) scores the same on test for every K-shot sample, so one
    seed gives its test score at a fifth of the cost; its dev score is then one sample's."""
    k: list[int] | None = None
    """A subset of the grid's K values, for the same reason (zero-shot on SAMSum: one test pass
    of 200 generated summaries, not one per K)."""

    @property
    def combined(self) -> bool:
        return self.ensemble is not None or self.distill is not None

    def parts(self) -> list[str]:
        """The rows this one combines (none for a method row)."""
        members = self.ensemble.members if self.ensemble else []
        return members + ([self.distill.teacher] if self.distill else [])


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
    for name in cfg.references:  # a task outside a narrowed grid (--set tasks=[...]) is no error
        if name not in cfg.tasks and name not in tasks.TASKS and name not in cfg.custom_tasks:
            raise ConfigError(f"{p}: references.{name}: not a task;{did_you_mean(name, cfg.tasks) or ''} "
                              f"the bench's tasks are {cfg.tasks}")
    for name, entry in cfg.methods.items():
        _check_kind(entry, f"{p}: methods.{name}")
        if entry.search is not None:
            settings = search_settings(entry, f"{p}: methods.{name}.search")
            method, prompt = entry.method or {}, entry.prompt or {}
            combination.check(settings.combine, method.get("name", "soft"), prompt.get("multi_token", "mean"),
                          f"{p}: methods.{name}.search.combine")
        for key in ("seeds", "k"):  # `--set seeds=[21]` narrows the grid: entries follow it
            mine, grid = getattr(entry, key), getattr(cfg, key)
            if mine is not None and (not mine or (set(mine) - set(grid) and key not in narrowed)):
                raise ConfigError(f"{p}: methods.{name}.{key}: {mine} must be a non-empty subset of "
                                  f"the grid's {key} {grid}; a value outside it would never run")
    _check_combined(cfg.methods, str(p))
    root = Path(cfg.data_root)
    if not root.is_absolute() and (p.parent / root).is_dir():
        root = p.parent / root
    return cfg, root


def _check_kind(entry: MethodEntry, where: str) -> None:
    """A row is a method, an ensemble of rows, or a student distilled from a row."""
    if entry.ensemble is not None and entry.distill is not None:
        raise ConfigError(f"{where}: ensemble and distill are two kinds of row; keep one")
    if entry.method is None and entry.ensemble is None:
        raise ConfigError(f"{where}.method: missing; every row but an ensemble names its method")
    extra = [k for k in ("grid", "search", "prompt", "model", "own_task")
             if entry.combined and getattr(entry, k)]
    extra += ["method"] if entry.ensemble is not None and entry.method is not None else []
    extra += ["train"] if entry.ensemble is not None and entry.train else []
    if extra:
        raise ConfigError(f"{where}.{extra[0]}: a combined row takes its members' settings; remove it")


def _check_combined(methods: dict[str, MethodEntry], where: str) -> None:
    """Combined rows name existing rows of the right kind, on seeds those rows run."""
    for name, entry in methods.items():
        for other in entry.parts():
            if other not in methods or other == name:
                raise ConfigError(f"{where}: methods.{name}: {other!r} is not another row of this bench; "
                                  f"rows are {sorted(methods)}")
            if entry.ensemble is not None and methods[other].combined:
                raise ConfigError(f"{where}: methods.{name}.ensemble.members: {other!r} is itself combined; "
                                  "an ensemble combines trained method rows")
            if methods[other].distill is not None:
                raise ConfigError(f"{where}: methods.{name}.distill.teacher: {other!r} is a distilled row; "
                                  "name a method or an ensemble row")
            mine, theirs = entry.seeds, methods[other].seeds
            if theirs is not None and (mine is None or set(mine) - set(theirs)):
                raise ConfigError(f"{where}: methods.{name}: {other!r} runs only seeds {theirs}; give "
                                  f"methods.{name}.seeds a subset of them")


def linked(methods: dict[str, MethodEntry], name: str) -> bool:
    """Whether a row is combined or is part of a combined row (its cells must run together)."""
    return bool(methods[name].parts()) or any(name in e.parts() for e in methods.values())


def cells(cfg: BenchConfig) -> list[Cell]:
    return [Cell(t, m, k, s) for t in cfg.tasks for k in cfg.k for m, entry in cfg.methods.items()
            if entry.k is None or k in entry.k
            for s in cfg.seeds if entry.seeds is None or s in entry.seeds]


def grid_points(entry: MethodEntry) -> list[dict[str, object]]:
    keys = list(entry.grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*entry.grid.values())]


def point_name(point: dict) -> str:
    return "-".join(f"{k.split('.')[-1]}{v}" for k, v in point.items()) or "default"


SET_BY_CELL = ("task", "k", "seed", "out", "data_root", "own_task")


def search_settings(entry: MethodEntry, where: str, **cell) -> SearchSettings:
    """A row's search settings with the cell's own (task, seed, folder) filled in."""
    mine = [k for k in SET_BY_CELL if k in entry.search]
    if mine:
        raise ConfigError(f"{where}.{mine[0]}: set by each bench cell; remove it")
    try:
        return SearchSettings.model_validate({**entry.search, **cell})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{where}.{'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from None
