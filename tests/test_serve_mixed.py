"""Rows of several adapters in one forward give what each adapter gives alone (`cuetune.serve`).

Pipelines of every frozen-base method share one tiny base; their adapter tensors are drawn at
random (LoRA's B starts at zero, which would hide a wrong row gather). Classification: label
probabilities within 1e-5 of `Pipeline.label_probs`; generation: the same greedy text as
`generate`, also when rows join and leave the running batch at different steps.
"""

from __future__ import annotations

import pytest
import torch
from conftest import save_tiny, toy_config, toy_rows

from cuetune.config import RunConfig
from cuetune.data.examples import Example
from cuetune.engine.generation import Stops, generate
from cuetune.engine.pipeline import build
from cuetune.families.pretrained import load_model
from cuetune.serve.decoding import Decoding, GenRow
from cuetune.serve.mixed import can_mix, mixed_probs

LABELS = ["negative", "positive"]
METHODS = {  # name -> (method section, template)
    "soft": ({"name": "soft"}, "{soft:4} {text} sentiment : {answer}"),
    "ptuning": ({"name": "ptuning"}, "{soft:3} {text} sentiment : {answer}"),
    "prefix": ({"name": "prefix", "num_tokens": 5}, "review : {text} sentiment : {answer}"),
    "prefix3": ({"name": "prefix", "num_tokens": 3}, "{text} sentiment : {answer}"),
    "lora": ({"name": "lora", "r": 4}, "review : {text} sentiment : {answer}"),
    "lora-soft": ({"name": "lora", "r": 2}, "{soft:2} {text} it is {answer}"),
    "zero-shot": ({"name": "zero-shot"}, "question : {text} sentiment : {answer}"),
    "two-stage": ({"name": "two-stage", "r": 2}, "{soft:3} review : {text} sentiment : {answer}"),
}


@pytest.fixture(scope="module", params=["causal", "gemma3"])
def base(request, tmp_path_factory, toy_data):
    path = save_tiny(tmp_path_factory.mktemp("serve") / request.param, request.param, window=64)
    return load_model(str(path), "float32", "cpu")


def pipelines(base, toy_data, tmp_path, task: str = "classification") -> dict:
    out = {}
    for i, (name, (method, template)) in enumerate(METHODS.items()):
        if task == "generation" and name == "zero-shot":
            template = "question : {text} answer : {answer}"
        elif task == "generation":
            template = template.replace("sentiment : {answer}", "answer : {answer}")
        raw = toy_config(base.name, toy_data, tmp_path / name, method=method, prompt={"template": template})
        if task == "generation":
            raw["data"] = {"task": "generation", "train": raw["data"]["train"]}
            raw["generate"] = {"max_new_tokens": 6}
        cfg = RunConfig.model_validate(raw)
        pipe = build(cfg, LABELS if task == "classification" else [], loaded=base)
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in pipe.method.trainable_parameters():
                scale = (p.std() if p.numel() > 1 else torch.tensor(1.0)).clamp(min=0.1)
                p.add_(torch.randn(p.shape, generator=gen) * 0.3 * scale)
        out[name] = pipe
    return out


def test_every_frozen_base_method_mixes(base, toy_data, tmp_path):
    pipes = pipelines(base, toy_data, tmp_path)
    assert all(can_mix(p) for p in pipes.values())


def test_mixed_classification_equals_each_adapter_alone(base, toy_data, tmp_path):
    pipes = pipelines(base, toy_data, tmp_path)
    texts = [r["text"] for r in toy_rows(14, 7)]
    texts[3] += " and the movie was really quite a fine day and very good"  # lengths differ
    names = list(pipes)
    rows = []
    for i, text in enumerate(texts):  # every adapter, interleaved, some twice
        pipe = pipes[names[i % len(names)]]
        rows.append((pipe, pipe.encoder.encode([Example(text)], "inputs")[0]))
    with torch.inference_mode():
        mixed = mixed_probs(rows, base.tokenizer.pad_token_id)
    for (pipe, item), got in zip(rows, mixed, strict=True):
        alone = pipe.label_probs([item])[0]
        torch.testing.assert_close(got, alone, atol=1e-5, rtol=0)


PENALTIES = {"repetition_penalty": 1.5, "no_repeat_ngram_size": 2, "max_new_tokens": 12}


@pytest.mark.parametrize("settings", [{}, PENALTIES], ids=["plain", "penalties"])
def test_mixed_decoding_writes_each_adapters_greedy_text(base, toy_data, tmp_path, settings):
    """Also with repetition penalties: a served row penalizes its own written tokens only."""
    pipes = pipelines(base, toy_data, tmp_path, "generation")
    texts = [r["text"] for r in toy_rows(len(METHODS), 9)]
    texts[1] += " and a very dull day"
    names = list(pipes)
    rows = []
    for i, text in enumerate(texts):
        pipe = pipes[names[i]]
        cfg = pipe.config.generate.model_copy(update=settings)
        rows.append(GenRow(pipe, pipe.encoder.encode([Example(text)], "inputs", with_target=False)[0], cfg,
                           Stops(base.tokenizer, cfg.stop, base.family)))
    alone = [generate(r.pipe.model, r.pipe.loaded.tokenizer, [r.item], r.cfg)[0] for r in rows]
    dec = Decoding(base.model, base.family, base.tokenizer.pad_token_id)
    waiting = list(rows)
    with torch.inference_mode():
        step = 0
        while waiting or len(dec):
            if waiting:  # rows join two at a time, one step apart
                dec.join(waiting[:2])
                waiting = waiting[2:]
            dec.leave([r for r in dec.rows if r.done])
            if len(dec):
                dec.step()
                dec.leave([r for r in dec.rows if r.done])
            step += 1
    assert [r.text() for r in rows] == alone
    assert len(set(alone)) >= 4  # the adapters write different texts: a mix-up would show


def test_rows_past_a_sliding_window_run_apart_and_equal(tmp_path_factory, toy_data, tmp_path):
    """Gemma-3 with an 8-token window: a padded mixed batch would measure the window in padded
    columns, so such batches run each adapter's rows through its own path."""
    path = save_tiny(tmp_path_factory.mktemp("narrow") / "gemma3", "gemma3", window=8)
    narrow = load_model(str(path), "float32", "cpu")
    pipes = pipelines(narrow, toy_data, tmp_path)
    rows = [(pipes[n], pipes[n].encoder.encode([Example(r["text"])], "inputs")[0])
            for n, r in zip(["prefix", "soft", "lora", "prefix3"], toy_rows(4, 5), strict=True)]
    with torch.inference_mode():
        mixed = mixed_probs(rows, narrow.tokenizer.pad_token_id)
    for (pipe, item), got in zip(rows, mixed, strict=True):
        torch.testing.assert_close(got, pipe.label_probs([item])[0], atol=1e-5, rtol=0)


def test_generation_rows_past_a_sliding_window_are_refused_by_the_batch(tmp_path_factory, toy_data,
                                                                         tmp_path):
    path = save_tiny(tmp_path_factory.mktemp("narrow-gen") / "gemma3", "gemma3", window=8)
    narrow = load_model(str(path), "float32", "cpu")
    pipe = pipelines(narrow, toy_data, tmp_path, "generation")["soft"]
    cfg = pipe.config.generate
    item = pipe.encoder.encode([Example("the movie was good")], "inputs", with_target=False)[0]
    row = GenRow(pipe, item, cfg, Stops(narrow.tokenizer, cfg.stop, narrow.family))
    dec = Decoding(narrow.model, narrow.family, narrow.tokenizer.pad_token_id)
    with torch.inference_mode():
        assert dec.join([row]) == [row] and len(dec) == 0
