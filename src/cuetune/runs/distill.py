"""Distillation (PET / iPET, Schick & Schütze 2021): a teacher labels an unlabelled pool with its
label probabilities, and one adapter is trained on them, so prediction costs one prompt.

The teacher is any classifier cuetune loads: a run, a mixture-of-prompts run or an ensemble
folder. The pool is declared: a file read with the student's column mapping (any label column
is dropped; a `.txt` file is one input per line). Texts that are also in the run's train, dev
or test split are removed (so no test sentence is trained on), and `size` draws a seeded
sample. The student's config is the teacher's (an ensemble's first member's) with `key=value`
overrides, typically `method.name`; it trains on the pool's soft labels (cross-entropy against
the teacher's distribution), picks its checkpoint on the gold dev split and is scored on the
gold test split as any run is. The manifest's metrics record the teacher, the pool and its
size under `distillation`.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from cuetune.config import RunConfig, apply_overrides, validate
from cuetune.data.cleaning import clean
from cuetune.data.examples import Example, to_examples
from cuetune.data.readers import decode_file, lines_to_examples, read_rows
from cuetune.data.splits import load_splits
from cuetune.errors import ConfigError, DataError
from cuetune.methods import get_method
from cuetune.runs.loader import load
from cuetune.runs.train import train


def teacher_probs(teacher, examples: list[Example], batch_size: int = 32) -> torch.Tensor:
    """Label probabilities [N, L] of a loaded run or ensemble."""
    if hasattr(teacher, "probs"):  # an ensemble
        return teacher.probs(examples, batch_size)
    return teacher.pipe.label_probs(teacher.pipe.encoder.encode(examples, "pool examples"), batch_size)


def teacher_config(teacher) -> RunConfig:
    """The run config the student starts from."""
    return teacher.members[0].config if hasattr(teacher, "members") else teacher.config


def student_config(base: RunConfig, overrides: list[str], out_dir) -> RunConfig:
    """The teacher's config with `overrides`; a new `method.name` starts that method's section
    from its defaults (the teacher's method keys would not fit it)."""
    raw = base.model_dump(mode="json")
    for section in ("method", "train"):  # a saved config lists every key; keep the chosen ones
        raw[section] = _non_default(getattr(base, section))
    raw = apply_overrides(raw, overrides)
    if raw["method"].get("name") != base.method.name:
        raw["method"] = {"name": raw["method"]["name"]}
        raw = apply_overrides(raw, [o for o in overrides if o.startswith("method.")])
    raw["output_dir"] = str(out_dir)
    return validate(raw, "distill --set")


def _non_default(section) -> dict:
    """The keys of a config section that differ from their defaults (and a method's name): a
    saved config lists every key, and the student's settings check must see only the chosen
    ones (a prefix run's `projection_hidden` is moot without `projection`)."""
    defaults = type(section)().model_dump(mode="json")
    return {k: v for k, v in section.model_dump(mode="json").items() if k == "name" or v != defaults.get(k)}


def read_pool(path: str | Path, cfg: RunConfig, splits, size: int | None,
              seed: int) -> tuple[list[Example], dict]:
    """Unlabelled pool examples and what was done to them (read, removed as in the splits,
    sampled)."""
    data = cfg.data
    if Path(path).suffix.lower() == ".txt":  # one input per line, as predict --input reads
        examples = lines_to_examples(decode_file(Path(path)), str(path))
    else:
        rows = read_rows(path, "auto" if data.format == "auto" else data.format, data.columns)
        examples = to_examples(rows, data.text_column, data.text_pair_column, None, None, str(path))
    examples, _ = clean(examples, data.clean, str(path))  # duplicates inside the pool go too
    taken = {_key(e) for split in (splits.train, splits.dev, splits.test) for e in split}
    kept = [e for e in examples if _key(e) not in taken]
    record = {"source": str(Path(path).resolve()), "read": len(examples),
              "in_splits_removed": len(examples) - len(kept)}
    if size is not None:
        if size > len(kept):
            raise DataError(f"{path}: --pool-size {size} but the pool has {len(kept)} examples outside "
                            "the run's splits; lower it or leave it unset")
        kept = random.Random(seed).sample(kept, size)
    if not kept:
        raise DataError(f"{path}: no pool example is left outside the run's train, dev and test splits")
    record["size"] = len(kept)
    return kept, record


def _key(e: Example) -> tuple[str, str]:
    return e.text.strip().lower(), (e.text_pair or "").strip().lower()


def distill(teacher_dir: str | Path, pool: str | Path, out_dir: str | Path,
            overrides: list[str] | None = None, size: int | None = None, seed: int = 0,
            progress=None, batch_size: int = 32):
    """Label `pool` with the teacher and train a student on it; returns the student's manifest."""
    teacher = load(teacher_dir)
    if getattr(teacher, "task", "classification") != "classification":
        raise ConfigError(f"{teacher_dir}: distillation transfers label probabilities; this run writes text")
    cfg = student_config(teacher_config(teacher), list(overrides or []), out_dir)
    method = get_method(cfg.method.name)
    if not method.trains:
        raise ConfigError(f"method.name={cfg.method.name}: the student must train; choose soft, prefix, "
                          "lora, ... with --set method.name=...")
    if cfg.prompt.demonstrations is not None:
        raise ConfigError("prompt.demonstrations: they are drawn from gold-labelled training examples, "
                          "which a distilled student does not train on; remove them")
    splits = load_splits(cfg.data)
    if splits.labels != teacher.labels:
        raise ConfigError(f"the student's labels {splits.labels} differ from the teacher's {teacher.labels}")
    examples, record = read_pool(pool, cfg, splits, size, seed)
    probs = teacher_probs(teacher, examples, batch_size)  # [N, L]
    soft = [Example(e.text, e.text_pair, tuple(round(float(p), 6) for p in row), e.where)
            for e, row in zip(examples, probs, strict=True)]
    teacher_record = {"teacher": str(Path(teacher_dir).resolve()), "pool": record,
                      "teacher_pool_label_share": [round(float(s), 4) for s in probs.mean(0)]}
    del teacher
    return train(cfg, progress=progress, train_examples=soft, record={"distillation": teacher_record})
