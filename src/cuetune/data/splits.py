"""Splits: the train, dev and test examples a `DataConfig` describes, read, cleaned, split
and sampled (seeded, label-stratified, K per class) with a report of what happened."""

from __future__ import annotations

import random
from collections import defaultdict

from cuetune.config import DataConfig
from cuetune.data.cleaning import clean
from cuetune.data.examples import Example, Splits, group_refs, infer_labels, to_examples
from cuetune.data.readers import read_hf, read_rows
from cuetune.errors import DataError


def split_off(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Cut a seeded, label-stratified fraction off `examples`: (rest, cut)."""
    rng = random.Random(seed)
    by_label: dict = defaultdict(list)
    for ex in examples:
        by_label[ex.label].append(ex)
    rest, cut = [], []
    for label in sorted(by_label, key=str):
        group = by_label[label][:]
        rng.shuffle(group)
        n = round(len(group) * fraction)
        cut.extend(group[:n])
        rest.extend(group[n:])
    return rest, cut


def k_shot(examples: list[Example], k: int, seed: int, what: str, labels: list[str]) -> list[Example]:
    """K examples per class, seeded; errors name the class that has too few. Without labels
    (generation), K examples in all."""
    rng = random.Random(seed)
    if not labels:
        if len(examples) < k:
            raise DataError(f"{what}: {len(examples)} examples, fewer than k_shot={k}; lower data.k_shot")
        return rng.sample(examples, k)
    by_label: dict = defaultdict(list)
    for ex in examples:
        by_label[ex.label].append(ex)
    out = []
    for idx, name in enumerate(labels):
        group = by_label.get(idx, [])
        if len(group) < k:
            raise DataError(f"{what}: class '{name}' has {len(group)} examples, fewer than "
                            f"k_shot={k}; lower data.k_shot")
        out.extend(rng.sample(group, k))
    rng.shuffle(out)
    return out


def load_splits(cfg: DataConfig) -> Splits:
    """Read, map, clean, split and sample the data a `DataConfig` describes."""

    def rows_for(key: str):
        src = getattr(cfg, key)
        if src is None:
            return None, None
        if cfg.dataset:
            return read_hf(cfg.dataset, cfg.dataset_config, src), f"{cfg.dataset}[{src}]"
        return read_rows(src, cfg.format, cfg.columns), str(src)

    train_rows, train_src = rows_for("train")
    if train_rows is None:
        raise DataError("data.train: no training data given; set data.train to a file")
    if cfg.labels is not None and len(set(cfg.labels)) != len(cfg.labels):
        raise DataError(f"data.labels: labels must be distinct, got {cfg.labels}")
    generation = cfg.task == "generation"
    if generation:
        labels = []
    else:
        labels = [str(x) for x in cfg.labels] if cfg.labels else infer_labels(
            train_rows, cfg.label_column, train_src)

    def examples(rows, src):
        return to_examples(rows, cfg.text_column, cfg.text_pair_column,
                           None if generation else cfg.label_column, labels, src,
                           cfg.target_column if generation else None)

    train = examples(train_rows, train_src)
    parts = {}
    for key in ("dev", "test"):
        rows, src = rows_for(key)
        parts[key] = examples(rows, src) if rows is not None else None
        if generation and parts[key] is not None:  # evaluated once per input, on all references
            parts[key] = group_refs(parts[key])
    report: dict = {}
    test = dev = None
    if parts["test"] is not None:
        test, report["test"] = clean(parts["test"], cfg.clean, "test")
    exclude = {(e.text, e.text_pair) for e in test} if test and cfg.clean.drop_test_overlap else None
    train, report["train"] = clean(train, cfg.clean, "train", exclude)
    if parts["dev"] is not None:
        dev, report["dev"] = clean(parts["dev"], cfg.clean, "dev", exclude)
    if test is None and cfg.test_fraction:
        train, test = split_off(train, cfg.test_fraction, cfg.split_seed)
    if dev is None and cfg.dev_fraction:
        train, dev = split_off(train, cfg.dev_fraction, cfg.split_seed)
    if cfg.k_shot:
        train = k_shot(train, cfg.k_shot, cfg.k_shot_seed, "train", labels)
    if cfg.k_shot_dev and dev:
        dev = k_shot(dev, cfg.k_shot_dev, cfg.k_shot_seed, "dev", labels)
    if cfg.max_test and test:
        test = test[:cfg.max_test]
    report["sizes"] = {"train": len(train), "dev": len(dev or []), "test": len(test or [])}
    return Splits(train, dev or [], test or [], labels, report)
