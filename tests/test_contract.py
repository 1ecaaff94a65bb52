"""The contract every method keeps on every model family (a new method adds a row).

- training on the learnable toy task lowers the loss by a clear margin;
- save then load gives identical predictions;
- for parameter-efficient methods the base weights are bit-identical after training and
  only the method's parameters receive gradients;
- baselines that do not train still run through the same eval and artifact path.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import toy_config

import cuetune
from cuetune import methods
from cuetune.config import validate
from cuetune.data import load_splits
from cuetune.encoding import collate
from cuetune.engine import build

FAMILIES = ["causal", "masked", "seq2seq"]
TRAINED = [name for name, cls in methods.REGISTRY.items() if cls.trains]
BASELINES = [name for name, cls in methods.REGISTRY.items() if not cls.trains]


def _run(tiny_dirs, toy_data, tmp_path, family, method, **extra):
    raw = toy_config(tiny_dirs[family], toy_data, tmp_path / "run", method={"name": method}, **extra)
    return cuetune.train(raw), tmp_path / "run"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", TRAINED)
def test_training_lowers_loss_and_round_trips(tiny_dirs, toy_data, tmp_path, family, method):
    manifest, run_dir = _run(tiny_dirs, toy_data, tmp_path, family, method)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first = sum(r["loss"] for r in rows[:5]) / 5
    last = sum(r["loss"] for r in rows[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert manifest["metrics"]["test"]["accuracy"] > 0.7
    texts = ["the movie was great", "the food was awful and dull", "a very poor day"]
    before = cuetune.load(run_dir).predict(texts)
    again = cuetune.load(run_dir).predict(texts)
    assert before == again
    assert (run_dir / "training_curves.png").stat().st_size > 1000
    assert (run_dir / "confusion_matrix.png").stat().st_size > 1000


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", TRAINED)
def test_base_frozen_and_only_adapter_gets_gradients(tiny_dirs, toy_data, family, method):
    cfg = validate(toy_config(tiny_dirs[family], toy_data, "unused", method={"name": method}))
    splits = load_splits(cfg.data)
    pipe = build(cfg, splits.labels)
    base_before = {k: v.clone() for k, v in pipe.loaded.model.state_dict().items()}
    batch = collate(pipe.encode(splits.train[:8]), pipe.loaded.tokenizer.pad_token_id)
    loss = torch.nn.functional.cross_entropy(pipe.model(batch), batch["labels"])
    loss.backward()
    adapter = {id(p) for p in pipe.method.trainable_parameters()}
    assert adapter, "a trained method must have trainable parameters"
    for name, p in pipe.model.named_parameters():
        if id(p) in adapter:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, f"{name} received a gradient"
    torch.optim.AdamW(pipe.method.trainable_parameters(), lr=0.1).step()
    for k, v in pipe.loaded.model.state_dict().items():
        assert torch.equal(v, base_before[k]), f"base weight {k} changed"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", BASELINES)
def test_baselines_run_through_eval_and_artifacts(tiny_dirs, toy_data, tmp_path, family, method):
    manifest, run_dir = _run(tiny_dirs, toy_data, tmp_path, family, method)
    assert manifest["training"] is None
    assert 0.0 <= manifest["metrics"]["test"]["accuracy"] <= 1.0
    preds = cuetune.load(run_dir).predict(["the movie was great"])
    assert set(preds[0]["probs"]) == {"negative", "positive"}
