"""Training a run: `cuetune.train(config)`, resuming an interrupted one, scoring a finished one
on test, and what a finished run folder holds when training ends (adapter, plots, eval.json,
and last the manifest)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path

import yaml

from cuetune import atomic
from cuetune.config import RunConfig, variant
from cuetune.config import validate as validate_config
from cuetune.data.augment import augment
from cuetune.data.examples import Example
from cuetune.data.splits import load_splits
from cuetune.engine import distributed
from cuetune.engine.checkpoint import CHECKPOINT, Checkpoint, load_checkpoint
from cuetune.engine.fit import MetricsLog, evaluate, fit
from cuetune.engine.pipeline import Pipeline, build, load_for, method_context
from cuetune.errors import ArtifactError, CuetuneError, DataError
from cuetune.methods import check_settings, get_method
from cuetune.metrics.plots import plot_confusion, plot_curves
from cuetune.prompt.demonstrations import with_pool
from cuetune.runs import artifacts
from cuetune.runs.config_file import as_config
from cuetune.runs.manifest import BaseModelRef, ImportRecord, Manifest, PhaseRecord, TrainingRecord
from cuetune.runs.tuned import load_run

log = logging.getLogger(__name__)
# Tokenizers would warn about (and disable) parallelism after a fork; say so once up front.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def prepare_run_dir(path: str | Path) -> Path:
    """Create the run directory and check it is writable before any training starts.

    An old manifest is removed first, so an interrupted rerun never looks finished.
    """
    run_dir = Path(path)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".cuetune-write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
        (run_dir / artifacts.MANIFEST).unlink(missing_ok=True)
    except OSError as exc:
        raise CuetuneError(f"output_dir {run_dir}: not writable ({exc.strerror}); "
                           "choose another with --set output_dir=DIR") from None
    return run_dir


def train(config=None, progress=None, resume: Checkpoint | None = None,
          train_examples: list[Example] | None = None, record: dict | None = None) -> Manifest:
    """Train (or, for baselines, just evaluate) as the config says; return the manifest.

    `resume`: a checkpoint of this same run to continue from (see `resume_run`).
    `train_examples`: train on these instead of the config's train split (distillation: labels
    are the teacher's distributions); `record`: entries added to the manifest's metrics.

    Under `accelerate launch` every process calls this: all of them train and score their
    share, only the main one writes the run directory, and all return its manifest."""
    distributed.init()
    main = distributed.is_main()
    cfg = as_config(config)
    if resume is None:  # a resumed run's saved config was checked when it started
        check_settings(cfg.method, cfg.prompt.template, cfg.train)
    splits = load_splits(cfg.data)
    if train_examples is not None:
        sizes = {**splits.report.get("sizes", {}), "train": len(train_examples)}
        splits = dataclasses.replace(splits, train=train_examples, report={**splits.report, "sizes": sizes})
    else:
        _check_splits(cfg, splits)
    run_dir = prepare_run_dir(cfg.output_dir) if main else Path(cfg.output_dir)  # fails at once
    distributed.barrier()
    loaded = load_for(cfg.model)
    cfg = with_pool(cfg, splits.train)
    context = method_context(cfg, splits, loaded)
    method = get_method(cfg.method.name).prepare_config(cfg.method, context)
    cfg = cfg.model_copy(update={"method": method})
    pipe = build(cfg, splits.labels, loaded)
    if main:
        _check_space(run_dir, pipe, cfg)
    enc = {name: pipe.encoder.encode(getattr(splits, name), f"{name} examples")
           for name in ("train", "dev", "test")}
    if cfg.train.augment.kind != "none":
        enc["train"] = pipe.encoder.encode(augment(splits.train, cfg.train.augment, cfg.train.seed),
                                           "augmented train examples")
    metrics: dict = dict(record or {})
    if cfg.train.zero_shot_baseline and pipe.method.trains and enc["test"]:
        zero = build(variant(cfg, method={"name": "zero-shot"}), splits.labels, loaded=pipe.loaded)
        test = zero.encoder.encode(splits.test)
        metrics["zero_shot_test"] = evaluate(zero, test, cfg.train.eval_batch_size)
    if main and train_examples is not None and resume is None:  # what a resume trains on again
        atomic.write_json(run_dir / TRAINED_ON, {"record": record or {}, "examples": [
            {"text": e.text, "text_pair": e.text_pair, "label": e.label} for e in train_examples]})
    if main:
        atomic.write_text(run_dir / "config.yaml", yaml.safe_dump(  # Chinese stays readable
            cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True))
        if resume is None:
            (run_dir / CHECKPOINT).unlink(missing_ok=True)  # a stale one must not be resumed later
    training = None
    mlog = MetricsLog(run_dir / "metrics.jsonl" if main else None,
                      resume.state["step"] if resume else None)
    try:
        if pipe.method.trains:
            result = fit(pipe, enc["train"], enc["dev"], cfg.train, mlog, progress, run_dir, resume)
            training = TrainingRecord(
                steps=result.steps, best_step=result.best_step, stopped_early=result.stopped_early,
                seconds=round(result.seconds, 2), skipped_steps=result.skipped,
                resumed_from=resume.state["step"] if resume else None,
                phases=[PhaseRecord(name=p.name, lr=p.lr, steps=p.steps) for p in result.phases])
            metrics["dev_best"] = result.best_dev
    finally:
        mlog.close()
    return finish_run(run_dir, cfg, pipe, splits, enc, metrics, training, mlog.rows)


def finish_run(run_dir: Path, cfg: RunConfig, pipe: Pipeline, splits, enc: dict, metrics: dict,
               training: TrainingRecord | None, rows: list[dict],
               imported_from: ImportRecord | None = None) -> Manifest:
    """Evaluate, write adapter, plots, eval.json and (last) the manifest; return the manifest.

    Every process evaluates its share; the main one writes and hands its manifest to the rest."""
    for name in ("dev", "test"):
        if enc[name] and (name == "dev" or cfg.train.evaluate_test):
            metrics[name] = evaluate(pipe, enc[name], cfg.train.eval_batch_size)
    if not distributed.is_main():
        return distributed.from_main(None)
    state = pipe.method.adapter_state()
    sha = artifacts.save_adapter(run_dir, state)
    if rows:
        keys = pipe.objective.dev_keys
        plot_curves(rows, run_dir / "training_curves.png",
                    cfg.train.metric if cfg.train.metric in keys else keys[0])
    manifest = Manifest(
        base_model=BaseModelRef(name=cfg.model.name, fingerprint=pipe.loaded.fingerprint,
                                family=pipe.loaded.family.name),
        method=cfg.method.model_dump(mode="json"),
        template=pipe.encoder.template.source,
        task=cfg.data.task,
        verbalizer=pipe.verbalizer.to_json() if pipe.verbalizer is not None else None,
        labels=pipe.labels,
        trainable_parameters=int(sum(t.numel() for t in state.values())),
        adapter_sha256=sha,
        adapter_bytes=(run_dir / artifacts.ADAPTER).stat().st_size,
        data=splits.report,
        training=training,
        metrics=metrics,
        config=cfg.model_dump(mode="json"),
        imported_from=imported_from,
    )
    write_eval(run_dir, metrics)
    artifacts.write_manifest(run_dir, manifest)
    (run_dir / CHECKPOINT).unlink(missing_ok=True)  # finished: nothing to resume
    return distributed.from_main(manifest.model_copy(update={"run_dir": str(run_dir)}))


def write_eval(run_dir: Path, metrics: dict) -> None:
    """eval.json and, when test was scored on classes, the test confusion plot."""
    if "confusion_matrix" in metrics.get("test", {}):
        plot_confusion(metrics["test"], run_dir / "confusion_matrix.png")
    atomic.write_json(run_dir / "eval.json", metrics)


def score_test(run_dir: str | Path) -> Manifest:
    """Score a finished run on its test split (one trained with `train.evaluate_test: false`);
    eval.json, the confusion plot and the manifest gain the test metrics. Returns the manifest.

    The splits are rebuilt from the run's own data config, so the test set is the one training
    would have scored, and the adapter is the best-dev state training saved."""
    start = time.perf_counter()
    tuned = load_run(run_dir)
    cfg = tuned.config
    test = load_splits(cfg.data).test
    if not test:
        raise CuetuneError(f"{tuned.run_dir}: the run's data config has no test split to score")
    scores = evaluate(tuned.pipe, tuned.pipe.encoder.encode(test, "test examples"), cfg.train.eval_batch_size)
    metrics = {**tuned.manifest.metrics, "test": scores}
    write_eval(tuned.run_dir, metrics)
    return artifacts.update_manifest(tuned.run_dir, metrics=metrics,
                                     test_seconds=round(time.perf_counter() - start, 3))


def resume_run(run_dir: str | Path, progress=None) -> Manifest:
    """Continue an interrupted run from its last checkpoint, with the config it was started
    with; the result equals the uninterrupted run's (on CPU, bit for bit)."""
    run_dir = Path(run_dir)
    if (run_dir / artifacts.MANIFEST).exists():
        raise CuetuneError(f"{run_dir}: this run finished; there is nothing to resume")
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise CuetuneError(f"{saved}: missing; {run_dir} is not a cuetune run directory")
    try:  # saved paths are as the run resolved them: no re-resolving against run_dir
        cfg = validate_config(yaml.safe_load(saved.read_text(encoding="utf-8")), str(saved))
    except yaml.YAMLError as exc:
        raise CuetuneError(f"{saved}: invalid YAML ({exc}); the run directory is damaged") from None
    if Path(cfg.output_dir).resolve() != run_dir.resolve():
        cfg = cfg.model_copy(update={"output_dir": str(run_dir)})
    ckpt = load_checkpoint(run_dir)
    if ckpt is None:
        log.warning("%s: no checkpoint yet; training starts from the beginning", run_dir)
    examples, record = _trained_on(run_dir)
    return train(cfg, progress, resume=ckpt, train_examples=examples, record=record)


TRAINED_ON = "trained_on.json"
"""Written when a run trains on given examples (distillation's soft-labelled pool)."""


def _trained_on(run_dir: Path) -> tuple[list[Example] | None, dict | None]:
    path = run_dir / TRAINED_ON
    if not path.is_file():
        return None, None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        examples = [Example(r["text"], r["text_pair"], tuple(r["label"]) if isinstance(r["label"], list)
                            else r["label"], f"{path}:{i + 1}") for i, r in enumerate(saved["examples"])]
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path}: damaged ({exc}); the run cannot be resumed, start it again") from None
    return examples, saved["record"]


def _check_splits(cfg: RunConfig, splits) -> None:
    """Refuse training on one class (the model can only learn to say it; accuracy then
    measures the test set's class balance) and say when no split will judge the run."""
    if get_method(cfg.method.name).trains and cfg.data.task == "classification":
        present = sorted({e.label for e in splits.train})
        if len(present) == 1:
            raise DataError(f"{cfg.data.train or 'data.train'}: every training example has label "
                            f"{splits.labels[present[0]]!r}; training needs examples of at least two "
                            f"of the labels {splits.labels}")
    if not splits.dev and not splits.test:
        log.warning("no dev and no test split: nothing will score this run and the best-dev "
                    "checkpoint cannot be chosen (the last step is kept); set data.dev or "
                    "data.dev_fraction, and data.test or data.test_fraction")


def _check_space(run_dir: Path, pipe: Pipeline, cfg: RunConfig) -> None:
    """Refuse to start when the disk cannot hold the adapter and a checkpoint (about five times
    the adapter: weights, best weights, two AdamW moments, the final file)."""
    adapter = sum(p.numel() * 4 for p in pipe.method.trainable_parameters())
    need = adapter * (5 if cfg.train.checkpoint_every else 2) + (1 << 20)
    free = shutil.disk_usage(run_dir).free
    if free < need:
        raise CuetuneError(f"output_dir {run_dir}: {free / 1e6:.0f} MB free, the run needs about "
                           f"{need / 1e6:.0f} MB (adapter and checkpoints); free space or choose "
                           "another output_dir")
