"""Adapters beside one frozen base: runs of different methods share a loaded base model and
each predicts exactly as it does alone; nothing a method does changes the base; LoRA's hooks
compute what peft's injected layers compute; settings without an effect are refused; the
manifest is typed, records each phase's rate, and version-1 files still load."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import save_tiny, toy_config
from peft import LoraConfig as PeftLoraConfig
from peft import inject_adapter_in_model

import cuetune
from cuetune.config import validate
from cuetune.data.splits import load_splits
from cuetune.engine.inference import predict_probs
from cuetune.engine.pipeline import build
from cuetune.errors import ConfigError
from cuetune.families.pretrained import load_model
from cuetune.methods.lora import LoraConfig, LoraWeights
from cuetune.runs import artifacts

TEXTS = ["the movie was great", "the food was awful and dull", "a very poor day", "lovely phone"]
RUNS = {  # method section, learning rate: three kinds of adapter (inputs, weights, whole copy)
    "soft": ({"name": "soft"}, 0.1),
    "lora": ({"name": "lora", "r": 4}, 0.02),
    "prompt-ft": ({"name": "prompt-ft"}, 3e-3),
}


@pytest.fixture(scope="module")
def runs(tiny_dirs, toy_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    for name, (method, lr) in RUNS.items():
        raw = toy_config(tiny_dirs["causal"], toy_data, root / name, method=dict(method))
        raw["train"].update(lr=lr, max_steps=20)
        cuetune.train(raw)
    return root


def _base_state(model):
    return ({n: p.detach().clone() for n, p in model.named_parameters()},
            {n: p.requires_grad for n, p in model.named_parameters()})


def test_runs_of_different_methods_share_one_base(runs, tiny_dirs):
    alone = {name: cuetune.load(runs / name).predict(TEXTS) for name in RUNS}
    base = load_model(str(tiny_dirs["causal"]))
    weights, flags = _base_state(base.model)
    shared = {name: cuetune.load(runs / name, base=base) for name in RUNS}
    assert len({id(m.pipe.loaded.model) for m in shared.values()}) == 1
    for _ in range(2):  # interleaved, twice: no adapter leaks into another's forward
        for name, model in shared.items():
            assert model.predict(TEXTS) == alone[name], name
    assert alone["soft"] != alone["lora"] != alone["prompt-ft"]
    after, after_flags = _base_state(base.model)
    assert after_flags == flags and all(torch.equal(after[n], w) for n, w in weights.items())


def test_zero_shot_baseline_is_scored_with_adapters_off(runs, tiny_dirs, toy_data):
    """A zero-shot pipeline over a base that a trained LoRA (B far from zero) and a full copy
    are loaded on scores what it scores on a fresh base."""
    raw = toy_config(tiny_dirs["causal"], toy_data, "unused", method={"name": "zero-shot"})
    cfg = validate(raw)
    fresh = build(cfg, load_splits(cfg.data).labels)
    items = fresh.encoder.encode(load_splits(cfg.data).test)
    want = predict_probs(fresh.model, items, fresh.loaded.tokenizer.pad_token_id)
    lora = cuetune.load(runs / "lora", base=fresh.loaded)
    trained_b = [p for n, p in lora.pipe.method.adapter_tensors().items() if "lora_B" in n]
    assert max(float(p.detach().abs().max()) for p in trained_b) > 0
    cuetune.load(runs / "prompt-ft", base=fresh.loaded).predict(TEXTS)
    zero = build(cfg, fresh.labels, loaded=fresh.loaded)
    torch.testing.assert_close(predict_probs(zero.model, items, fresh.loaded.tokenizer.pad_token_id),
                               want, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["causal", "gpt2", "seq2seq"])
def test_lora_hooks_equal_peft_injection(tmp_path, kind):
    """Same seed -> the same factors as peft draws, and the same outputs once B is non-zero;
    GPT-2's Conv1D layers included."""
    model = load_model(str(save_tiny(tmp_path / kind, kind))).model
    cfg = LoraConfig(r=4, alpha=8.0, seed=7)
    ours = LoraWeights(model, cfg)
    injected = copy.deepcopy(model)
    torch.manual_seed(cfg.seed)
    inject_adapter_in_model(PeftLoraConfig(r=4, lora_alpha=8.0, bias="none"), injected)
    theirs = {f"base.{n}": p for n, p in injected.named_parameters() if "lora_" in n}
    assert theirs.keys() == ours.tensors().keys()
    with torch.no_grad():
        for name, p in ours.tensors().items():
            assert torch.equal(p, theirs[name]), name
            if "lora_B" in name:
                p.normal_(0, 0.1)
                theirs[name].copy_(p)
    ids = torch.tensor([[5, 7, 9, 11, 13, 8]])
    extra = {"decoder_input_ids": ids[:, :3]} if kind == "seq2seq" else {}
    with torch.no_grad(), ours.patch():
        got = model(input_ids=ids, **extra).logits
    want = injected(input_ids=ids, **extra).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(model(input_ids=ids, **extra).logits, want), "hooks left behind"


@pytest.mark.parametrize("sets, key", [
    ({"method": {"name": "soft", "num_tokens": 10}}, "method.num_tokens"),
    ({"method": {"name": "two-stage"}, "train": {"lr": 0.01}}, "train.lr"),
    ({"method": {"name": "lora", "init_words": "good"}, "prompt": {"template": "{text} it is {answer}"}},
     "method.init_words"),
    ({"method": {"name": "prefix", "projection_hidden": 64}}, "method.projection_hidden"),
])
def test_settings_without_an_effect_are_refused(tiny_dirs, toy_data, tmp_path, sets, key):
    raw = toy_config(tiny_dirs["causal"], toy_data, tmp_path / "run", **sets)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ": has no effect"):
        cuetune.train(raw)
    assert not (tmp_path / "run").exists(), "refused before anything is written"


def test_num_tokens_still_sizes_a_template_without_soft_blocks(tiny_dirs, toy_data, tmp_path):
    raw = toy_config(tiny_dirs["causal"], toy_data, tmp_path / "run",
                     method={"name": "soft", "num_tokens": 3},
                     prompt={"template": "{text} sentiment : {answer}"}, train={"max_steps": 2})
    assert cuetune.train(raw).trainable_parameters == 3 * 32


def test_each_phase_records_the_rate_it_ran_with(tiny_dirs, toy_data, tmp_path):
    raw = toy_config(tiny_dirs["causal"], toy_data, tmp_path / "run",
                     method={"name": "two-stage", "soft_lr": 0.05, "r": 2}, train={"max_steps": 4})
    del raw["train"]["lr"]
    phases = cuetune.train(raw).training.phases
    assert [(p.name, p.lr, p.steps) for p in phases] == [("soft", 0.05, 2), ("lora", 5e-4, 2)]
    soft = toy_config(tiny_dirs["causal"], toy_data, tmp_path / "soft", train={"max_steps": 2, "lr": 0.2})
    assert [(p.name, p.lr) for p in cuetune.train(soft).training.phases] == [("train", 0.2)]


def test_version_1_manifest_still_loads(runs, tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    for name in (artifacts.ADAPTER, artifacts.MANIFEST, "config.yaml"):
        (run / name).write_bytes((runs / "lora" / name).read_bytes())
    raw = json.loads((run / artifacts.MANIFEST).read_text())
    raw["format_version"] = 1
    del raw["training"]["phases"]
    raw["method"]["num_tokens"] = 20  # a v1 soft-style key inside the method section stays
    (run / artifacts.MANIFEST).write_text(json.dumps(raw))
    manifest = artifacts.read_manifest(run)
    assert manifest.format_version == 2 and manifest.training.phases == []
    assert cuetune.load(run).predict(TEXTS) == cuetune.load(runs / "lora").predict(TEXTS)
    raw.pop("labels")
    (run / artifacts.MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(cuetune.errors.ArtifactError, match="field 'labels' missing"):
        artifacts.read_manifest(run)
