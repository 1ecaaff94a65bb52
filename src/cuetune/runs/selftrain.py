"""Self-training on unlabelled text (LiST, iPET; issue 43): `cuetune self-train CONFIG`.

A config is a run config with a `selftrain:` section (`SelfTrainConfig`). Round 0 trains the
run on its gold split (the teacher). Each later round labels the pool with the previous
round's model, keeps the texts it labels confidently, as many of each class (the balance is
the guard against a teacher that favours one class: a biased teacher would teach its bias),
and trains a fresh run of the same config on gold plus those pseudo-labels (hard or soft,
weighted); that student is the next round's teacher. The rounds stop when a student's gold
dev score does not beat its teacher's (the stop rule never reads test), when a class has no
confident text, or after `rounds`; the best round on dev is the result.

Every round is a run folder (`round-<r>`) that resumes as any run does, and `selftrain.json`
(written after each round) records the pool, the filters, what each round kept per class and
each round's dev and test scores. Pool texts that are in the train, dev or test split are
removed first (`distill.read_pool`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import yaml
from pydantic import Field, ValidationError

from cuetune import atomic
from cuetune.config import RunConfig, Strict, apply_overrides, read_mapping, validate, variant
from cuetune.data.examples import Example
from cuetune.data.splits import load_splits
from cuetune.engine.checkpoint import CHECKPOINT
from cuetune.errors import ConfigError
from cuetune.methods import get_method
from cuetune.runs import artifacts
from cuetune.runs.config_file import resolve_paths
from cuetune.runs.distill import read_pool, teacher_probs
from cuetune.runs.loader import load
from cuetune.runs.train import resume_run, train

SUMMARY = "selftrain.json"


class SelfTrainConfig(Strict):
    pool: str
    """Unlabelled inputs: a data file read with the run's column mapping (labels dropped) or a
    .txt file, one input per line; relative to the config file."""
    size: int | None = Field(None, ge=1)
    """A seeded sample of the pool (after the split texts are removed); None: all of it."""
    rounds: int = Field(3, ge=1, le=20)
    """Student rounds at most after the gold-trained teacher."""
    min_confidence: float = Field(0.9, ge=0.0, lt=1.0)
    """A pool text is kept when the teacher's top label probability reaches this."""
    per_class: int | None = Field(None, ge=1)
    """Kept texts per class at most (the most confident first); every class keeps as many as
    the class with the fewest confident texts, so the pseudo-labels are balanced."""
    labels: Literal["hard", "soft"] = "hard"
    """`hard`: the teacher's label; `soft`: its whole distribution (cross-entropy against it)."""
    weight: float = Field(1.0, gt=0.0, le=1.0)
    """A pseudo-labelled text's share of the loss against a gold one's."""
    student: list[str] = []
    """`key=value` changes for the students only (noise: `model.dropout=0.1`,
    `train.augment.kind=token_dropout`)."""
    seed: int = 0
    """Seed of the pool sample."""


def load_config(path: str | Path, overrides: list[str] | None = None) -> tuple[RunConfig, SelfTrainConfig]:
    """(run config, self-training settings) from a config file with a `selftrain:` section."""
    p = Path(path)
    raw = apply_overrides(read_mapping(p, "self-training config"), overrides or [])
    section = raw.pop("selftrain", None)
    if section is None:
        raise ConfigError(f"{p}: no selftrain: section; add one with at least `pool: FILE`")
    try:
        settings = SelfTrainConfig.model_validate(section)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{p}: selftrain.{'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from None
    pool = Path(settings.pool)
    settings = settings.model_copy(update={"pool": str(pool if pool.is_absolute() else p.parent / pool)})
    cfg = resolve_paths(validate(raw, str(p)), p.parent)
    if cfg.data.task != "classification":
        raise ConfigError(f"{p}: data.task is {cfg.data.task}; self-training pseudo-labels classes")
    if not get_method(cfg.method.name).trains:
        raise ConfigError(f"{p}: method {cfg.method.name} trains nothing, so a round would learn nothing "
                          "from its pseudo-labels; choose soft, prefix, lora, ...")
    if cfg.prompt.demonstrations is not None:
        raise ConfigError(f"{p}: prompt.demonstrations: drawn from the training examples, which would "
                          "then include pseudo-labels; remove them")
    student_config(cfg, settings.student, Path(cfg.output_dir) / "round-1")  # bad student keys: now
    return cfg, settings


def student_config(cfg: RunConfig, changes: list[str], run_dir: Path) -> RunConfig:
    raw = apply_overrides(yaml.safe_load(yaml.safe_dump(cfg.model_dump(mode="json"))), changes)
    raw["output_dir"] = str(run_dir)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"selftrain.student: {where}: {err['msg']}") from None


def pseudo_labels(probs: torch.Tensor, settings: SelfTrainConfig) -> tuple[list[int], list[int]]:
    """(kept pool indices, kept per class): confident texts, balanced across classes. An empty
    list where a class has no confident text."""
    conf, label = probs.max(-1)  # [N], [N]
    per_class = []
    for c in range(probs.size(1)):
        idx = ((label == c) & (conf >= settings.min_confidence)).nonzero().flatten()
        per_class.append(idx[conf[idx].argsort(descending=True)].tolist())
    n = min(len(x) for x in per_class)
    if settings.per_class is not None:
        n = min(n, settings.per_class)
    if n == 0:
        return [], [len(x) for x in per_class]
    return sorted(i for x in per_class for i in x[:n]), [n] * len(per_class)


def as_training(gold: list[Example], pool: list[Example], probs: torch.Tensor, kept: list[int],
                settings: SelfTrainConfig, labels: int) -> list[Example]:
    """Gold plus pseudo-labelled examples. Labels are class ids when pseudo-labels are hard at
    full weight, else distributions (gold one-hot; a pseudo-label's sums to `weight`, which
    scales its cross-entropy by that much)."""
    if settings.labels == "hard" and settings.weight == 1.0:
        return gold + [Example(pool[i].text, pool[i].text_pair, int(probs[i].argmax()), pool[i].where)
                       for i in kept]

    def one_hot(c: int) -> tuple[float, ...]:
        return tuple(1.0 if j == c else 0.0 for j in range(labels))

    out = [Example(e.text, e.text_pair, one_hot(e.label), e.where) for e in gold]
    for i in kept:
        dist = probs[i] if settings.labels == "soft" else torch.tensor(one_hot(int(probs[i].argmax())))
        out.append(Example(pool[i].text, pool[i].text_pair,
                           tuple(round(settings.weight * float(p), 6) for p in dist), pool[i].where))
    return out


def run(cfg: RunConfig, settings: SelfTrainConfig, progress=None) -> dict:
    """All rounds (finished ones read back); returns the summary written to `selftrain.json`."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_same(out, cfg, settings)
    splits = load_splits(cfg.data)
    pool, pool_record = read_pool(settings.pool, cfg, splits, settings.size, settings.seed)
    summary = {"pool": pool_record, "settings": settings.model_dump(mode="json"), "rounds": [],
               "stopped": None, "best_round": 0}
    metric = cfg.train.metric
    teacher = _round(out / "round-0", cfg, None, {}, progress)
    summary["rounds"].append(_row(0, teacher, None, metric))
    atomic.write_json(out / SUMMARY, summary)
    for r in range(1, settings.rounds + 1):
        model = load(out / f"round-{r - 1}")
        probs = teacher_probs(model, pool, cfg.train.eval_batch_size)  # [N, L]
        del model
        kept, counts = pseudo_labels(probs, settings)
        share = [round(float(s), 4) for s in probs.argmax(-1).bincount(minlength=probs.size(1)) / len(pool)]
        if not kept:
            summary["stopped"] = (f"round {r}: no pool text of class {splits.labels[counts.index(0)]!r} "
                                  f"reached min_confidence {settings.min_confidence} (the teacher labels "
                                  f"{share} of the pool as each class); a student would learn the "
                                  "teacher's bias")
            break
        record = {"round": r, "kept_per_class": counts, "teacher_label_share": share,
                  "pool": pool_record, "min_confidence": settings.min_confidence,
                  "labels": settings.labels, "weight": settings.weight}
        examples = as_training(splits.train, pool, probs, kept, settings, len(splits.labels))
        student = _round(out / f"round-{r}", student_config(cfg, settings.student, out / f"round-{r}"),
                         examples, {"selftrain": record}, progress)
        summary["rounds"].append(_row(r, student, record, metric))
        atomic.write_json(out / SUMMARY, {**summary, "best_round": _best(summary["rounds"])})
        if _dev(student, metric) <= _dev(teacher, metric):
            summary["stopped"] = (f"round {r}: the student's dev {metric} did not beat its teacher's "
                                  f"({_dev(student, metric):.4f} against {_dev(teacher, metric):.4f})")
            break
        teacher = student
    else:
        summary["stopped"] = f"ran all {settings.rounds} rounds"
    summary["best_round"] = _best(summary["rounds"])
    atomic.write_json(out / SUMMARY, summary)
    return summary


def _check_same(out: Path, cfg: RunConfig, settings: SelfTrainConfig) -> None:
    """A folder resumes only the self-training that made it (its finished rounds are read back,
    so another config there would be reported as if it had run)."""
    dump = {"run": cfg.model_dump(mode="json"), "selftrain": settings.model_dump(mode="json")}
    current = yaml.safe_dump(dump, sort_keys=True, allow_unicode=True)
    saved = out / "selftrain.yaml"
    if saved.exists() and saved.read_text(encoding="utf-8") != current:
        raise ConfigError(f"{out}: holds another self-training run (its selftrain.yaml differs from this "
                          "config); choose another output_dir, or remove the folder to start over")
    if not saved.exists():
        atomic.write_text(saved, current)


def _round(run_dir: Path, cfg: RunConfig, examples, record: dict, progress):
    """One round's run: read back when finished, resumed from its checkpoint, else trained."""
    if (run_dir / artifacts.MANIFEST).exists():
        return artifacts.read_manifest(run_dir)
    if (run_dir / CHECKPOINT).exists():
        return resume_run(run_dir, progress)
    cfg = variant(cfg, output_dir=str(run_dir))
    return train(cfg, progress=progress, train_examples=examples, record=record or None)


def _dev(manifest, metric: str) -> float:
    dev = manifest.metrics.get("dev_best") or manifest.metrics.get("dev") or {}
    return dev.get(metric, float("-inf"))


def _row(r: int, manifest, record: dict | None, metric: str) -> dict:
    """A round's line of the summary (test is reported, never used to choose)."""
    test = manifest.metrics.get("test") or {}
    return {"round": r, "run_dir": manifest.run_dir, "dev": _dev(manifest, metric),
            "test_accuracy": test.get("accuracy"), "test_macro_f1": test.get("macro_f1"),
            "kept_per_class": record and record["kept_per_class"],
            "seconds": manifest.training and manifest.training.seconds}


def _best(rows: list[dict]) -> int:
    """The round with the best dev score (the earliest of ties)."""
    return max(rows, key=lambda row: (row["dev"], -row["round"]))["round"]

