"""Distillation (`cuetune distill`): a teacher's label probabilities on an unlabelled pool train
one adapter. The pool loses its labels and any text in the run's splits; the student trains on
soft labels (cross-entropy against the teacher's distribution), resumes on the same pool, and is
scored on the gold dev and test splits."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import toy_config, toy_rows, write_jsonl

import cuetune
from cuetune.config import validate
from cuetune.data.examples import Example
from cuetune.engine.pipeline import build
from cuetune.errors import ConfigError, DataError
from cuetune.prompt.batch import collate
from cuetune.runs import train as api
from cuetune.runs.distill import distill

PLAIN = "{text} sentiment : {answer}"


@pytest.fixture(scope="module")
def teacher(tiny_dirs, toy_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "run"
    raw = toy_config(tiny_dirs["causal"], toy_data, out, method={"name": "lora", "r": 4})
    raw["train"].update(lr=0.02, max_steps=20)
    cuetune.train(raw)
    return out


@pytest.fixture(scope="module")
def pool(toy_data, tmp_path_factory):
    """48 new sentences (their labels must be ignored: all are marked 'negative'), plus 5 test
    sentences that must be dropped."""
    rows = [{"text": r["text"], "label": "negative"} for r in toy_rows(48, 77)]
    test = [json.loads(line) for line in toy_data["test"].read_text().splitlines()][:5]
    return write_jsonl(tmp_path_factory.mktemp("pool") / "pool.jsonl", rows + test)


def test_soft_labels_train_by_cross_entropy_against_the_teacher(tiny_dirs, toy_data, tmp_path):
    pipe = build(validate(toy_config(tiny_dirs["causal"], toy_data, tmp_path)), ["negative", "positive"])
    q = ((0.9, 0.1), (0.3, 0.7))
    examples = [Example("the movie was great", None, q[0]), Example("awful", None, q[1])]
    batch = collate(pipe.encoder.encode(examples), 0)
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (2, 2)
    pipe.model.eval()
    logp = pipe.model(batch).log_softmax(-1)
    want = -(torch.tensor(q) * logp).sum(-1).mean()
    torch.testing.assert_close(pipe.objective.loss(pipe.model, batch, 0.0), want)


def test_a_student_learns_from_the_teacher_on_the_pool(teacher, pool, tmp_path):
    manifest = distill(teacher, pool, tmp_path / "student", ["method.name=soft", "train.lr=0.03",
                                                             "train.max_steps=60"])
    record = manifest.metrics["distillation"]
    assert record["pool"] == {"source": str(pool), "read": 53, "in_splits_removed": 5, "size": 48}
    assert record["teacher"] == str(teacher.resolve())
    trained_on = json.loads((tmp_path / "student" / api.TRAINED_ON).read_text())
    teach = cuetune.load(teacher)
    taught = [Example(e["text"]) for e in trained_on["examples"]]
    want = teach.pipe.label_probs(teach.pipe.encoder.encode(taught))
    got = torch.tensor([e["label"] for e in trained_on["examples"]])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)  # the teacher's, not the file's labels
    student = cuetune.load(tmp_path / "student")
    assert student.manifest.method_name == "soft"
    texts = [json.loads(line)["text"] for line in pool.read_text().splitlines()][:20]
    pairs = zip(student.predict(texts), teach.predict(texts), strict=True)
    agree = sum(a["label"] == b["label"] for a, b in pairs)
    assert agree >= 17, agree
    assert manifest.metrics["test"]["accuracy"] >= 0.75


def test_an_interrupted_student_resumes_on_the_same_pool(teacher, pool, tmp_path):
    args = ["method.name=soft", "train.lr=0.1", "train.max_steps=20", "train.checkpoint_every=5"]
    whole = distill(teacher, pool, tmp_path / "whole", args, size=24, seed=3)

    def crash(step, total, row, best):
        if step == 12:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(teacher, pool, tmp_path / "cut", args, size=24, seed=3, progress=crash)
    resumed = api.resume_run(tmp_path / "cut")
    assert resumed.metrics["distillation"] == whole.metrics["distillation"]
    assert resumed.metrics["test"] == whole.metrics["test"]
    a = cuetune.load(tmp_path / "whole").pipe.method.adapter_state()
    b = cuetune.load(tmp_path / "cut").pipe.method.adapter_state()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_student_of_the_teachers_own_method_keeps_its_settings(tiny_dirs, toy_data, pool, tmp_path):
    """The teacher's saved config lists every key; the student keeps the chosen ones
    (num_tokens = 4), and a default the settings check would refuse if chosen (prefix's
    `projection_hidden` without `projection`) is not passed off as a choice."""
    prefix = {"name": "prefix", "num_tokens": 4}
    raw = toy_config(tiny_dirs["causal"], toy_data, tmp_path / "t", method=prefix, prompt={"template": PLAIN})
    raw["train"].update(lr=0.05, max_steps=4)
    cuetune.train(raw)
    manifest = distill(tmp_path / "t", pool, tmp_path / "s", ["train.max_steps=4"], size=8)
    assert manifest.method_name == "prefix" and manifest.config["method"]["num_tokens"] == 4


def test_what_cannot_be_distilled_is_refused(teacher, pool, tiny_dirs, toy_data, tmp_path):
    with pytest.raises(ConfigError, match="the student must train"):
        distill(teacher, pool, tmp_path / "a", ["method.name=zero-shot"])
    with pytest.raises(DataError, match="--pool-size 500 but the pool has 48"):
        distill(teacher, pool, tmp_path / "b", ["method.name=soft"], size=500)
    with pytest.raises(ConfigError, match="labels"):
        distill(teacher, pool, tmp_path / "c", ["method.name=soft", "data.labels=[positive,negative]"])
    with pytest.raises(ConfigError, match="demonstrations"):
        distill(teacher, pool, tmp_path / "d", ["method.name=soft", "prompt.demonstrations.select=random"])
    assert not any((tmp_path / n).exists() for n in "abcd")


def test_cli_distills_an_ensemble(teacher, pool, tiny_dirs, toy_data, tmp_path, capsys):
    from test_artifacts_cli import run_cli

    from cuetune.runs import ensemble

    cuetune.train(toy_config(tiny_dirs["causal"], toy_data, tmp_path / "zero", method={"name": "zero-shot"}))
    ensemble.build([teacher, tmp_path / "zero"], tmp_path / "ens")
    code, out, err = run_cli(["distill", str(tmp_path / "ens"), "--pool", str(pool), "--out",
                              str(tmp_path / "student"), "--pool-size", "16", "--set", "method.name=soft",
                              "--set", "train.max_steps=10"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["pool_size"] == 16 and summary["method"] == "soft"
    record = cuetune.load(tmp_path / "student").manifest.metrics["distillation"]
    assert record["teacher"] == str((tmp_path / "ens").resolve())


def test_a_text_pool_is_one_input_per_line(teacher, toy_data, tmp_path):
    test = [json.loads(line)["text"] for line in toy_data["test"].read_text().splitlines()][:2]
    lines = [r["text"] for r in toy_rows(8, 55)] + test
    pool = tmp_path / "pool.txt"
    pool.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    manifest = distill(teacher, pool, tmp_path / "s", ["method.name=soft", "train.max_steps=2"])
    assert manifest.metrics["distillation"]["pool"] == {"source": str(pool), "read": 10,
                                                        "in_splits_removed": 2, "size": 8}
