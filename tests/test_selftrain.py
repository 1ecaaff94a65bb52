"""Self-training on an unlabelled pool (issue 43): rounds of teacher -> confident, balanced
pseudo-labels -> student on gold plus them; the stop rule reads dev only; a teacher that never
says one class stops the rounds instead of teaching its bias; every round resumes."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from conftest import toy_config, toy_rows, write_jsonl

from cuetune.data.examples import Example
from cuetune.errors import ConfigError
from cuetune.runs import artifacts, selftrain


def _config(tmp_path, tiny_dirs, toy_data, **section):
    raw = toy_config(tiny_dirs["causal"], toy_data, tmp_path / "st",
                     prompt={"template": "{soft:4} review : {text} sentiment : {answer}"})
    raw["train"].update(max_steps=6, eval_every=3)
    pool = [r["text"] for r in toy_rows(40, 7)]
    pool.append(json.loads(toy_data["dev"].read_text().splitlines()[0])["text"])  # a dev text
    (tmp_path / "pool.txt").write_text("\n".join(pool) + "\n", encoding="utf-8")
    raw["selftrain"] = {"pool": "pool.txt", "rounds": 2, "min_confidence": 0.5, **section}
    path = tmp_path / "selftrain.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_rounds_train_on_balanced_pseudo_labels_and_resume(tmp_path, tiny_dirs, toy_data):
    path = _config(tmp_path, tiny_dirs, toy_data, per_class=8)
    summary = selftrain.run(*selftrain.load_config(path))
    assert summary["pool"]["in_splits_removed"] == 1 and summary["pool"]["size"] == 40
    rounds = summary["rounds"]
    assert rounds[0]["kept_per_class"] is None and len(rounds) >= 2
    assert rounds[1]["kept_per_class"] == [8, 8]  # balanced, capped
    student = artifacts.read_manifest(tmp_path / "st" / "round-1")
    assert student.metrics["selftrain"]["kept_per_class"] == [8, 8]
    assert student.data["sizes"]["train"] == 64 + 16  # gold plus the kept pool texts
    assert summary["best_round"] == max(rounds, key=lambda r: (r["dev"], -r["round"]))["round"]
    assert summary["stopped"]
    saved = json.loads((tmp_path / "st" / selftrain.SUMMARY).read_text())
    assert saved == json.loads(json.dumps(summary))
    stamp = (tmp_path / "st" / "round-1" / artifacts.MANIFEST).stat().st_mtime_ns
    assert selftrain.run(*selftrain.load_config(path)) == summary  # finished rounds are read back
    assert (tmp_path / "st" / "round-1" / artifacts.MANIFEST).stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="holds another self-training run"):
        selftrain.run(*selftrain.load_config(path, ["selftrain.min_confidence=0.6"]))


def test_a_teacher_that_never_says_one_class_stops_the_rounds(tmp_path, tiny_dirs, toy_data, monkeypatch):
    """A biased teacher (every pool text 'negative') would teach the student to say nothing
    else; the balance filter finds no confident 'positive' text and stops with the reason."""
    path = _config(tmp_path, tiny_dirs, toy_data)
    monkeypatch.setattr(selftrain, "teacher_probs",
                        lambda teacher, examples, bs: torch.tensor([[0.97, 0.03]] * len(examples)))
    summary = selftrain.run(*selftrain.load_config(path))
    assert len(summary["rounds"]) == 1 and not (tmp_path / "st" / "round-1").exists()
    assert "'positive'" in summary["stopped"] and "bias" in summary["stopped"]
    assert "[1.0, 0.0]" in summary["stopped"]  # what the teacher said of the pool


def test_pseudo_labels_are_confident_balanced_and_weighted():
    probs = torch.tensor([[0.95, 0.05], [0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.05, 0.95], [0.99, 0.01]])
    settings = selftrain.SelfTrainConfig(pool="x", min_confidence=0.75)
    kept, counts = selftrain.pseudo_labels(probs, settings)
    assert counts == [2, 2] and kept == [0, 3, 4, 5]  # the two most confident of each class
    pool = [Example(f"t{i}") for i in range(6)]
    gold = [Example("g0", None, 0), Example("g1", None, 1)]
    hard = selftrain.as_training(gold, pool, probs, kept, settings, 2)
    assert [e.label for e in hard] == [0, 1, 0, 1, 1, 0]
    soft = selftrain.SelfTrainConfig(pool="x", labels="soft", weight=0.5)
    mixed = selftrain.as_training(gold, pool, probs, kept, soft, 2)
    assert mixed[0].label == (1.0, 0.0) and mixed[2].label == (0.475, 0.025)
    assert all(sum(e.label) == pytest.approx(0.5) for e in mixed[2:])


def test_settings_that_cannot_work_are_refused(tmp_path, tiny_dirs, toy_data):
    path = _config(tmp_path, tiny_dirs, toy_data)
    with pytest.raises(ConfigError, match="method zero-shot trains nothing"):
        selftrain.load_config(path, ["method.name=zero-shot"])
    with pytest.raises(ConfigError, match="selftrain.min_confidence"):
        selftrain.load_config(path, ["selftrain.min_confidence=1.5"])
    with pytest.raises(ConfigError, match="selftrain.student: model.dropout"):
        selftrain.load_config(path, ["selftrain.student=[model.dropout=7]"])
    raw = yaml.safe_load(path.read_text())
    del raw["selftrain"]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="no selftrain: section"):
        selftrain.load_config(path)


def test_a_pool_file_is_found_beside_the_config(tmp_path, tiny_dirs, toy_data):
    """A data file with labels works as a pool too (read_pool drops them, as distill does)."""
    path = _config(tmp_path, tiny_dirs, toy_data, rounds=1)
    write_jsonl(tmp_path / "pool.jsonl", toy_rows(30, 9))
    cfg, settings = selftrain.load_config(path, ["selftrain.pool=pool.jsonl"])
    assert settings.pool == str(tmp_path / "pool.jsonl")
