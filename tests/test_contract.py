"""The contract every method keeps on every model family (a new method adds a row).

- training on the learnable toy task lowers the loss by a clear margin;
- save then load gives identical predictions, and the saved adapter scores test as training did;
- for parameter-efficient methods the base weights are bit-identical after training and
  only the method's parameters receive gradients;
- baselines that do not train still run through the same eval and artifact path.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import KINDS, toy_config

import cuetune
from cuetune import methods
from cuetune.config import validate
from cuetune.data.splits import load_splits
from cuetune.engine.pipeline import build
from cuetune.prompt.batch import collate
from cuetune.runs import train as api

FAMILIES = list(KINDS)
# One row per method: its settings for the toy task (learning rates suit 32-wide tiny models;
# a dict gives one per family, None for the rest).
ROWS = {
    "soft": ({"name": "soft"}, 0.1),
    # T5's encoder reads no cache, so the prefix acts in the decoder only and needs a larger step
    # to overturn the tiny T5's confidently wrong zero-shot answer (loss 5.8 at the start).
    "prefix": ({"name": "prefix", "num_tokens": 4}, {"seq2seq": 0.5, None: 0.05}),
    "ptuning": ({"name": "ptuning", "hidden_size": 16}, 0.05),
    "lora": ({"name": "lora", "r": 4}, 0.02),
    "prompt-ft": ({"name": "prompt-ft"}, 3e-3),
    # Without prompt words the tiny models already answer the toy task one way or the other
    # (BERT right, T5 inverted), so `full` gets label words never used as answers in pretraining.
    "full": ({"name": "full"}, 3e-3, {"verbalizer": {"positive": "yes", "negative": "no"}}),
    "head": ({"name": "head"}, 3e-3),
    "two-stage": ({"name": "two-stage", "soft_lr": 0.1, "tune_lr": 0.02}, None),
    # Two soft prompts on the toy template ({soft:4}), under a learned prior.
    "mixture": ({"name": "mixture", "copies": 2}, 0.03),
    "zero-shot": ({"name": "zero-shot"}, None),
    "in-context": ({"name": "in-context"}, None),
}
TRAINED = [name for name, cls in methods.REGISTRY.items() if cls.trains]
FAMILY_ROWS = [pytest.param(f, marks=() if f == "causal" else pytest.mark.slow) for f in FAMILIES]
"""Every method trains on every family in the full suite; the quick loop keeps the causal one."""
BASELINES = [name for name, cls in methods.REGISTRY.items() if not cls.trains]


def test_every_registered_method_has_a_row():
    assert set(ROWS) == set(methods.REGISTRY)


def _raw(tiny_dirs, toy_data, out, family, method):
    settings, lr, *prompt = ROWS[method]
    raw = toy_config(tiny_dirs[family], toy_data, out, method=dict(settings))
    raw["prompt"].update(*prompt)
    raw["train"]["lr"] = lr.get(family, lr[None]) if isinstance(lr, dict) else lr
    return raw


def _run(tiny_dirs, toy_data, tmp_path, family, method):
    return cuetune.train(_raw(tiny_dirs, toy_data, tmp_path / "run", family, method)), tmp_path / "run"


@pytest.mark.parametrize("family", FAMILY_ROWS)
@pytest.mark.parametrize("method", TRAINED)
def test_training_lowers_loss_and_round_trips(tiny_dirs, toy_data, tmp_path, family, method):
    manifest, run_dir = _run(tiny_dirs, toy_data, tmp_path, family, method)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first = sum(r["loss"] for r in rows[:5]) / 5
    last = sum(r["loss"] for r in rows[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert manifest.metrics["test"]["accuracy"] > 0.7
    texts = ["the movie was great", "the food was awful and dull", "a very poor day"]
    before = cuetune.load(run_dir).predict(texts)
    again = cuetune.load(run_dir).predict(texts)
    assert before == again
    # The saved adapter scores test exactly as training's in-memory best-dev state did (the
    # bench relies on it: it scores test from the saved adapter of dev's pick).
    assert api.score_test(run_dir).metrics["test"] == manifest.metrics["test"]
    assert (run_dir / "training_curves.png").stat().st_size > 1000
    assert (run_dir / "confusion_matrix.png").stat().st_size > 1000


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", TRAINED)
def test_only_the_intended_parameters_train(tiny_dirs, toy_data, family, method):
    """Every method trains its own tensors beside the base model: the base's weights, gradients
    and requires_grad flags are as loaded after training steps, full fine-tuning included."""
    cfg = validate(_raw(tiny_dirs, toy_data, "unused", family, method))
    splits = load_splits(cfg.data)
    pipe = build(cfg, splits.labels)
    base = pipe.loaded.model
    adapter = pipe.method.trainable_parameters()
    assert adapter, "a trained method must have trainable parameters"
    assert not {id(p) for p in adapter} & {id(p) for p in base.parameters()}, "adapter inside base"
    if not pipe.method.freezes_base:  # its adapter holds a copy of every base weight
        embedding = next(n for n, p in base.named_parameters() if p is base.get_input_embeddings().weight)
        assert f"base.{embedding}" in pipe.method.adapter_tensors()
    flags = {n: p.requires_grad for n, p in base.named_parameters()}
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    batch = collate(pipe.encoder.encode(splits.train[:8]), pipe.loaded.tokenizer.pad_token_id)
    pipe.model.train()
    optimizer = torch.optim.AdamW(adapter, lr=0.1)
    for _ in range(2):  # the second pass reaches factors initialised to zero (LoRA's B, p-tuning)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(pipe.model(batch), batch["labels"]).backward()
        optimizer.step()
    for name, p in pipe.method.adapter_tensors().items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for n, p in base.named_parameters():
        assert p.grad is None, f"base weight {n} received a gradient"
        assert torch.equal(p, before[n]), f"base weight {n} changed"
        assert p.requires_grad == flags[n] is False, f"base weight {n}: requires_grad changed"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", BASELINES)
def test_baselines_run_through_eval_and_artifacts(tiny_dirs, toy_data, tmp_path, family, method):
    manifest, run_dir = _run(tiny_dirs, toy_data, tmp_path, family, method)
    assert manifest.training is None
    assert api.score_test(run_dir).metrics["test"] == manifest.metrics["test"]
    # the reported accuracy is what the saved run's predictions score on the test file
    model = cuetune.load(run_dir)
    test = model.read(toy_data["test"])
    preds = model.predict([e.text for e in test])
    hits = sum(p["label"] == model.labels[e.label] for p, e in zip(preds, test, strict=True))
    assert manifest.metrics["test"]["n"] == len(test)
    assert manifest.metrics["test"]["accuracy"] == pytest.approx(hits / len(test))
    assert set(preds[0]["probs"]) == {"negative", "positive"}


@pytest.mark.parametrize("family", FAMILIES)
def test_sentence_pairs_reach_the_model(tiny_dirs, tmp_path, family):
    """The pair carries the trigger: "question" flips the label. If {text_pair} were dropped, half
    the test set would be answered wrongly; with it, the pretrained skill answers both halves."""
    from conftest import toy_rows, write_jsonl

    def rows(n, seed):
        out = []
        for i, r in enumerate(toy_rows(n, seed)):
            flip = i % 4 >= 2
            label = r["label"] if not flip else {"positive": "negative", "negative": "positive"}[r["label"]]
            out.append({"text": r["text"], "pair": "question" if flip else "review", "label": label})
        return out

    data = {s: write_jsonl(tmp_path / f"{s}.jsonl", rows(n, seed))
            for s, n, seed in (("train", 32, 1), ("dev", 16, 2), ("test", 40, 3))}
    raw = _raw(tiny_dirs, data, tmp_path / "run", family, "zero-shot")
    raw["data"]["text_pair_column"] = "pair"
    raw["prompt"]["template"] = "{text_pair} : {text} sentiment : {answer}"
    manifest = cuetune.train(raw)
    assert manifest.metrics["test"]["accuracy"] >= 0.85
    model = cuetune.load(tmp_path / "run")
    review, question = model.predict(["the food was superb"] * 2, ["review", "question"])
    assert review["label"] != question["label"]


@pytest.mark.parametrize("method", TRAINED)
def test_a_bf16_base_trains_fp32_master_weights_and_optimizer_state(tiny_dirs, toy_data, tmp_path,
                                                                    method, monkeypatch):
    """Mixed precision as on a GPU (bf16 is the CUDA default): the frozen base computes in
    bf16, while every trained tensor, its gradient and AdamW's moments stay fp32, so small
    updates are not rounded away (bf16 keeps 8 bits of mantissa). Run on CPU: the dtypes are
    the contract, the device is not."""
    from cuetune.engine import fit as training

    made = []

    class Recording(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(training.torch.optim, "AdamW", Recording)
    raw = _raw(tiny_dirs, toy_data, tmp_path / method, "causal", method)
    raw["model"]["dtype"] = "bfloat16"
    raw["train"].update(max_steps=2, eval_every=2)
    manifest = api.train(raw)
    assert manifest.metrics["test"]["n"] == 24
    assert made and all(p.dtype == torch.float32 for opt in made for group in opt.param_groups
                        for p in group["params"])
    moments = [t for opt in made for s in opt.state.values() for k, t in s.items() if k != "step"]
    assert moments and all(t.dtype == torch.float32 for t in moments)
    tuned = cuetune.load(manifest.run_dir)
    assert next(tuned.pipe.loaded.model.parameters()).dtype == torch.bfloat16  # the base: as loaded
