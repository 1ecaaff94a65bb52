"""Prompt search: `cuetune search CONFIG` finds a template, label words and calibration on the
training and dev data, and writes a ready run config.

A search config is a run config with a `search:` section (`search.settings.SearchSettings`).
The run: (1) the task's frozen hand baselines and the config's own prompt are scored on dev;
(2) each searcher in `search.searchers` runs in turn, starting from the best prompt so far, and
logs every candidate it scores to `prompts.jsonl`; (3) the best on dev becomes `best.yaml`.
The test split is never loaded. Searchers are registered by name (`register`), so a new one is
one function taking (stage, best candidate).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

import yaml
from pydantic import ValidationError

from cuetune import atomic
from cuetune.config import RunConfig, apply_overrides, read_mapping, validate
from cuetune.data import tasks
from cuetune.data.splits import load_splits
from cuetune.engine.pipeline import load_for
from cuetune.errors import ConfigError, did_you_mean
from cuetune.prompt import encoder
from cuetune.prompt.demonstrations import with_pool
from cuetune.runs.config_file import resolve_paths
from cuetune.search import combination, demos, generic, gradient, pool, rl
from cuetune.search import labels as label_words
from cuetune.search.candidates import Candidate, SearchLog
from cuetune.search.outputs import write_outputs
from cuetune.search.scoring import Scorer
from cuetune.search.settings import SearchSettings
from cuetune.search.stage import Stage, best_of, stage_index

log = logging.getLogger("cuetune.search")
Searcher = Callable[..., None]
SEARCHERS: dict[str, Searcher] = {}
TOKEN_SEARCHERS = ("rl", "gradient", "random", "sampled")
"""Searchers that train (or search) against the training split for minutes."""


def register(name: str, searcher: Searcher) -> None:
    SEARCHERS[name] = searcher


def _register_builtin() -> None:
    register("labels", label_words.run)
    register("pool", pool.run)
    register("rl", rl.run_rl)
    register("random", rl.run_random)
    register("sampled", rl.run_sampled)
    register("gradient", gradient.run)
    register("demos", demos.run)


def task_hints(task: str | None) -> dict:
    """The frozen baselines and cue phrases of a named task ({} for your own data)."""
    table = yaml.safe_load(files("cuetune.resources").joinpath("baselines.yaml").read_text("utf-8"))
    return table.get(task, {}) if task else {}


def load_config(path: str | Path, overrides: list[str] | None = None):
    """(run config, search settings) from a search config file and `--set` overrides."""
    p = Path(path)
    raw = apply_overrides(read_mapping(p, "search config"), overrides or [])
    try:
        settings = SearchSettings.model_validate(raw.pop("search", None) or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = "search." + ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"{p}: {where}: {err['msg']}") from None
    learners = [n for n in settings.searchers if n in TOKEN_SEARCHERS]
    if settings.selection == "kfold" and learners:
        raise ConfigError(f"{p}: search.selection: kfold would run {learners[0]!r} once per fold "
                          "(minutes each); use selection: dev with token searchers")
    if settings.selection == "dev" and "folds" in settings.model_fields_set:
        raise ConfigError(f"{p}: search.folds: only used with selection: kfold; remove it")
    if not settings.labels.related and "related_top" in settings.labels.model_fields_set:
        raise ConfigError(f"{p}: search.labels.related_top: only used with related: true; remove it")
    for name in settings.searchers:
        if name not in SEARCHERS:
            raise ConfigError(f"{p}: search.searchers: {name!r} is not a searcher;"
                              f"{did_you_mean(name, SEARCHERS) or ''} registered: {', '.join(SEARCHERS)}")
    if settings.own_task and not settings.task:
        raise ConfigError(f"{p}: search.own_task: only with search.task (a named task searched as "
                          "if it were your own); a search of your own data is that already")
    if settings.task:
        root = Path(settings.data_root)
        root = root if root.is_absolute() else (p.parent / root)
        task = tasks.get(settings.task)
        sections = task.sections(root, settings.k, settings.seed)
        raw["data"] = {**sections["data"], **(raw.get("data") or {})}
        raw.setdefault("prompt", generic.own_task_prompt(task) if settings.own_task else sections["prompt"])
    cfg = resolve_paths(validate(raw, str(p)), p.parent)
    combination.check(settings.combine, cfg.method.name, cfg.prompt.multi_token, f"{p}: search.combine")
    if cfg.data.task == "generation":
        raise ConfigError(f"{p}: data.task is generation; prompt search scores label words, which "
                          "a generation task has none of: search a classification task")
    return cfg, settings


def run(cfg: RunConfig, settings, progress=None) -> dict:
    """Run a search; returns the summary (also written to `summary.json`)."""
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_same_search(out, cfg, settings)
    searching = cfg.model_copy(update={"data": cfg.data.model_copy(update={"test": None})})
    splits = load_splits(searching.data)  # train and dev only: the test split is never read
    if not splits.dev:
        raise ConfigError("prompt search selects on dev: give data.dev, or data.dev_fraction > 0")
    labels = splits.labels
    searching = with_pool(searching, splits.train)
    cfg = with_pool(cfg, splits.train)  # best.yaml trains with the same pool
    if len({e.label for e in splits.train}) < 2:
        raise ConfigError("prompt search needs training examples of at least two labels")
    loaded = load_for(cfg.model)
    hints = {} if settings.own_task else task_hints(settings.task)
    modes = {"both": (False, True), "off": (False,), "on": (True,)}[settings.calibrate]
    slog = SearchLog(out / "prompts.jsonl", labels)
    scorer = Scorer(searching, loaded, labels, splits.dev, slog, modes, splits.train)
    if settings.selection == "kfold":
        scorer.use_folds(splits.train + splits.dev, settings.folds, settings.seed)

    def stage(name: str, i: int) -> Stage:
        return Stage(name, searching, settings, labels, splits.train, scorer, slog, out,
                     settings.seed + i, loaded, progress)

    base = stage("baseline", 0)
    start = Candidate.from_prompt(cfg.prompt.model_dump(), labels)
    frozen = {}
    if settings.baselines and settings.task and not settings.own_task:
        task = tasks.get(settings.task)
        frozen["lmbff"] = Candidate.from_prompt({"template": task.template,
                                                 "verbalizer": task.verbalizer or None}, labels)
        frozen.update({name: Candidate.from_prompt(prompt, labels)
                       for name, prompt in hints.get("baselines", {}).items()})
    if settings.baselines:
        chat = (settings.pool.chat and loaded.family.answer_is_next
                and bool(getattr(loaded.tokenizer, "chat_template", None)))
        cues = [next(iter(c), None) for c in (settings.pool.input_cues, settings.pool.answer_cues)]
        frozen.update(generic.baselines(start, labels, cfg.data.text_pair_column is not None, chat, *cues))
    own = start.key() not in {c.key() for c in frozen.values()}
    base.plan(len(frozen) + own)
    for name, cand in frozen.items():
        base.consider(cand, name, generated=False)
    if own:
        base.consider(start, "your config's prompt", generated=False)
    log.info("search baseline: done, best dev %.4f (%.0f s)", best_of(slog.records).dev,
             time.perf_counter() - base.started)
    warnings = []
    once = _Once()
    encoding_log = encoder.log
    encoding_log.addFilter(once)
    try:
        for i, name in enumerate(settings.searchers, 1):
            st = stage(f"{i}-{name}", i)
            st.hints = hints
            before = i if settings.chain else 1
            best = best_of([r for r in slog.records if stage_index(r) < before])
            SEARCHERS[name](st, best.candidate)
            log.info("search %s: done, best dev %.4f so far (%.0f s)", st.name,
                     best_of(slog.records).dev, time.perf_counter() - st.started)
            warnings += st.warnings
            write_outputs(out, cfg, settings, slog, scorer, warnings)
    finally:
        slog.close()
        encoding_log.removeFilter(once)
        if once.repeats:
            log.warning("%d more warnings like those above (one per candidate scored; the counts "
                        "differ between prompts) were not repeated", once.repeats)
    return write_outputs(out, cfg, settings, slog, scorer, warnings)


class _Once(logging.Filter):
    """Each encoder warning once per search. The encoder warns for every candidate it scores (a
    long dev review is cut under every template): a Chinese label search printed the same
    truncation line for each of its candidates, which buried the search's own output."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()
        self.repeats = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg in self.seen:
            self.repeats += 1
            return False
        self.seen.add(record.msg)
        return True


def _check_same_search(out: Path, cfg: RunConfig, settings) -> None:
    """A search folder resumes only the search that made it: the same run config and the same
    settings, counting only what changes the candidates scored (`_identity`)."""
    current = {"run": cfg.model_dump(mode="json"), "search": settings.model_dump(mode="json")}
    saved = out / "search.yaml"
    if saved.exists() and _identity(yaml.safe_load(saved.read_text(encoding="utf-8"))) != _identity(current):
        raise ConfigError(f"{out}: holds a different search (its search.yaml differs from this "
                          "config); choose another search.out, or remove the folder to start over")
    if not saved.exists():
        atomic.write_text(saved, yaml.safe_dump(current, sort_keys=True, allow_unicode=True))


OUTPUT_ONLY = ("combine",)
"""Search settings that change the outputs written, not the candidates scored."""


def _identity(dump: dict) -> dict:
    """A search's run config and settings less what cannot change its candidates: the output
    settings, the folder's own path (a moved or copied folder resumes), and the sections of
    searchers it does not run (the pool section stays: the generic baselines read its cues)."""
    search = {k: v for k, v in dump["search"].items() if k not in (*OUTPUT_ONLY, "out")}
    for name in ("labels", *TOKEN_SEARCHERS, "demos"):
        if name not in search.get("searchers", []):
            search.pop(name, None)
    return {"run": dump["run"], "search": search}


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_register_builtin()
