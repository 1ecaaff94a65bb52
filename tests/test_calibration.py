"""Contextual calibration (`prompt.calibrate`): a model biased toward one label word answers
it for every input; calibration divides that bias out with the prompt's distribution on
content-free inputs and recovers the model's skill."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import toy_config, toy_rows, toy_vocab, write_jsonl
from transformers import BertForMaskedLM

import cuetune
from cuetune.config import validate
from cuetune.data.examples import Example
from cuetune.data.splits import load_splits
from cuetune.engine.inference import predict_probs
from cuetune.engine.pipeline import build
from cuetune.errors import ConfigError
from cuetune.prompt.batch import collate
from cuetune.prompt.encoder import CONTENT_FREE

TEMPLATE = "review : {text} sentiment : {answer}"


@pytest.fixture(scope="module")
def biased(tiny_dirs, tmp_path_factory):
    """The pretrained tiny BERT with +8 added to the output bias of the word "positive": a
    constant shift of that label's logit for every input, the bias calibration assumes."""
    model = BertForMaskedLM.from_pretrained(tiny_dirs["masked"])
    with torch.no_grad():
        model.cls.predictions.bias[toy_vocab()["positive"]] += 8.0
    out = tmp_path_factory.mktemp("biased") / "bert"
    model.save_pretrained(out)
    for f in tiny_dirs["masked"].iterdir():
        if "token" in f.name:
            shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="module")
def data(toy_data):
    return toy_data  # test: toy_rows(24, 3), balanced, so "always positive" scores 0.5


def _pipe(model_dir, data, calibrate, method="zero-shot"):
    cfg = validate(toy_config(model_dir, data, "unused", method={"name": method},
                              prompt={"template": TEMPLATE, "calibrate": calibrate}))
    splits = load_splits(cfg.data)
    return build(cfg, splits.labels), splits


def test_calibration_removes_a_label_bias(biased, data):
    for calibrate, accuracy, positive_share in ((False, 0.5, 1.0), (True, 1.0, 0.5)):
        pipe, splits = _pipe(biased, data, calibrate)
        items = pipe.encoder.encode(splits.test)
        predicted = pipe.label_probs(items).argmax(-1)
        gold = torch.tensor([e.label for e in items])
        assert (predicted == gold).float().mean().item() == pytest.approx(accuracy)
        assert (predicted == 1).float().mean().item() == pytest.approx(positive_share)
    assert pipe.content_free_probs()[1] > 0.99, "the content-free inputs show the planted bias"


def test_calibrated_probabilities_equal_a_hand_computation(biased, data):
    pipe, splits = _pipe(biased, data, True)
    items = pipe.encoder.encode(splits.test[:5])
    pad = pipe.loaded.tokenizer.pad_token_id
    raw = predict_probs(pipe.model, items, pad)  # [5, L]
    cf = predict_probs(pipe.model, pipe.encoder.encode([Example(t) for t in CONTENT_FREE]), pad).mean(0)
    want = (raw / cf) / (raw / cf).sum(-1, keepdim=True)
    torch.testing.assert_close(pipe.label_probs(items), want, rtol=1e-5, atol=1e-7)


def test_a_run_reports_and_predicts_calibrated(biased, data, tmp_path):
    raw = toy_config(biased, data, tmp_path / "run", method={"name": "zero-shot"},
                     prompt={"template": TEMPLATE, "calibrate": True})
    manifest = cuetune.train(raw)
    test = manifest.metrics["test"]
    assert test["accuracy"] == 1.0 and test["content_free"]["positive"] > 0.99
    rows = toy_rows(24, 3)  # the test file's rows: predict() is calibrated as eval was
    preds = cuetune.load(tmp_path / "run").predict([r["text"] for r in rows])
    assert [p["label"] for p in preds] == [r["label"] for r in rows]


def test_calibration_is_refused_for_generation(tiny_dirs, data, tmp_path):
    files = {s: write_jsonl(tmp_path / f"{s}.jsonl", [{"text": r["text"], "target": r["label"]}
                                                       for r in toy_rows(8, seed)])
             for seed, s in enumerate(("train", "dev", "test"))}
    raw = toy_config(tiny_dirs["causal"], files, tmp_path / "run", method={"name": "zero-shot"},
                     prompt={"template": TEMPLATE, "calibrate": True})
    raw["data"].update(task="generation", labels=None)
    with pytest.raises(ConfigError, match="prompt.calibrate: calibrates label probabilities"):
        cuetune.train(raw)


@pytest.mark.parametrize("calibrate", [False, True])
def test_a_calibrated_run_trains_the_prediction_it_makes(biased, data, calibrate):
    """The training loss is the cross-entropy of the prediction the run will make: with
    calibration, of p(y|x) / p_cf(y) renormalised, p_cf from the same parameters. (Training
    the raw scores and dividing at prediction let a prefix fit SST-2's training set while dev
    read 50% at every evaluation.)"""
    pipe, splits = _pipe(biased, data, calibrate, method="soft")
    pipe.model.eval()  # no dropout: the hand computation below runs the same forwards
    pad = pipe.loaded.tokenizer.pad_token_id
    batch = collate(pipe.encoder.encode(splits.train[:6]), pad)
    loss = pipe.objective.loss(pipe.model, batch, 0.0)
    with torch.no_grad():
        probs = pipe.model(batch).softmax(-1)  # [6, L]
        if calibrate:
            free = collate(pipe.encoder.encode([Example(t) for t in CONTENT_FREE]), pad)
            cf = pipe.model(free).softmax(-1).mean(0)
            probs = (probs / cf) / (probs / cf).sum(-1, keepdim=True)
    want = -probs[torch.arange(6), batch["labels"]].log().mean()
    torch.testing.assert_close(loss.detach(), want, rtol=1e-5, atol=1e-6)
    loss.backward()  # the content-free term is differentiable too: it is part of the prediction
    assert all(p.grad is not None for p in pipe.method.trainable_parameters())
