"""The fast path is exact: loss, gradients and predictions equal the plain path.

On a causal model the tokens before the first input slot (BOS, instruction, soft blocks,
template words) are the same in every row, so the engine runs them once with batch size 1 and
broadcasts their keys and values; a batch of mixed lengths is packed into one unpadded
sequence, or (sliding-window models) split into groups of similar length. The reference is
one padded pass without the shared block. Compared for every causal architecture, prompt and
weight methods, right and left padding, single sentences and pairs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import save_tiny, toy_config, toy_rows

from cuetune.config import validate
from cuetune.data.examples import Example
from cuetune.engine.inference import predict_probs
from cuetune.engine.pipeline import build
from cuetune.families import fastpath
from cuetune.prompt.batch import collate

METHODS = {
    "soft": {"name": "soft"},
    "prefix": {"name": "prefix", "num_tokens": 3},
    "ptuning": {"name": "ptuning", "hidden_size": 16},
    "lora": {"name": "lora", "r": 4},
    "prompt-ft": {"name": "prompt-ft"},
}
TEMPLATES = {
    False: "{soft:4} review : {text} sentiment : {answer}",
    True: "{soft:4} review : {text} question : {text_pair} sentiment : {answer}",
}


@pytest.fixture(scope="module")
def models(tiny_dirs, tmp_path_factory):
    """The causal tiny models; gemma3 with a window wide enough for the shared path."""
    wide = save_tiny(tmp_path_factory.mktemp("g") / "gemma3", "gemma3", pretrain_steps=0, window=64)
    return {"causal": tiny_dirs["causal"], "gpt2": tiny_dirs["gpt2"], "gemma3": wide}


def _pipeline(model_dir, toy_data, method, pair):
    raw = toy_config(model_dir, toy_data, "unused", method=dict(METHODS[method]))
    raw["prompt"]["template"] = TEMPLATES[pair]
    pipe = build(validate(raw), ["negative", "positive"])
    with torch.no_grad():  # move zero-initialised factors (LoRA B) off zero so all paths matter
        for p in pipe.method.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return pipe


def _examples(pair: bool, n: int = 10) -> list[Example]:
    rows = toy_rows(n, 7)
    words = [r["text"].split() for r in rows]
    return [Example(" ".join(w[:2 + i % 4]), " ".join(w[:1 + i % 3]) if pair else None,
                    int(r["label"] == "positive")) for i, (w, r) in enumerate(zip(words, rows, strict=True))]


def _loss_and_grads(pipe, batch):
    params = pipe.method.trainable_parameters()
    for p in params:
        p.grad = None
    loss = F.cross_entropy(pipe.model(batch), batch["labels"])
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in params]


@pytest.mark.parametrize("mode", ["pack", "groups"])
@pytest.mark.parametrize("pair", [False, True], ids=["single", "pair"])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("kind", ["causal", "gpt2", "gemma3"])
def test_fast_path_equals_plain_path(models, toy_data, monkeypatch, kind, method, side, pair, mode):
    pipe = _pipeline(models[kind], toy_data, method, pair)
    assert pipe.model.shared_len >= 3  # BOS, "review :" (and 4 soft tokens where kept)
    items = pipe.encoder.encode(_examples(pair))
    assert len({len(e.input_ids) for e in items}) > 1, "rows must differ in length to test padding"
    batch = collate(items, pipe.loaded.tokenizer.pad_token_id, side)
    batch = {k: v.to(pipe.model.device) for k, v in batch.items()}
    pipe.model.eval()  # GPT-2's dropout would otherwise switch the shared path off

    calls, passes = [], []
    original = fastpath.shared_kv
    monkeypatch.setattr(fastpath, "shared_kv", lambda *a: calls.append(1) or original(*a))
    for name in ("packed", "rows"):
        real = getattr(fastpath, name)
        monkeypatch.setattr(fastpath, name, lambda *a, real=real, name=name: passes.append(name) or real(*a))

    def fast():  # packed into one unpadded sequence, or split into groups of similar length
        monkeypatch.setattr(fastpath, "PACK_WASTE", 0.0 if mode == "pack" else float("inf"))
        monkeypatch.setattr(fastpath, "GROUP_OVERHEAD_TOKENS", 0)

    def plain():  # one padded pass over the batch as it is
        monkeypatch.setattr(fastpath, "PACK_WASTE", float("inf"))
        monkeypatch.setattr(fastpath, "GROUP_OVERHEAD_TOKENS", 10**9)

    fast()
    fast_loss, fast_grads = _loss_and_grads(pipe, batch)
    assert calls, "the shared path was not taken"
    packs = kind != "gemma3"  # a sliding-window layer is never packed
    assert passes == (["packed"] if mode == "pack" and packs else ["rows"] * len(passes))
    assert mode == "pack" or len(passes) > 1, "the batch was not split by length"
    shared, pipe.model.shared_len = pipe.model.shared_len, 0
    plain()
    passes.clear()
    plain_loss, plain_grads = _loss_and_grads(pipe, batch)
    assert len(calls) == 1 and passes == ["rows"]

    torch.testing.assert_close(fast_loss, plain_loss, atol=1e-5, rtol=1e-5)
    for got, want in zip(fast_grads, plain_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in fast_grads)

    plain_probs = predict_probs(pipe.model, items, pipe.loaded.tokenizer.pad_token_id, 4)
    pipe.model.shared_len = shared
    fast()
    fast_probs = predict_probs(pipe.model, items, pipe.loaded.tokenizer.pad_token_id, 4)
    torch.testing.assert_close(fast_probs, plain_probs, atol=1e-5, rtol=1e-5)
    assert torch.equal(fast_probs.argmax(-1), plain_probs.argmax(-1))


def test_inference_computes_the_shared_prompt_once(models, toy_data, monkeypatch):
    pipe = _pipeline(models["causal"], toy_data, "soft", False)
    calls = []
    original = fastpath.shared_kv
    monkeypatch.setattr(fastpath, "shared_kv", lambda model, inputs, *a: calls.append(
        inputs.memo is not None and len(inputs.memo)) or original(model, inputs, *a))
    items = pipe.encoder.encode(_examples(False, 24))
    predict_probs(pipe.model, items, pipe.loaded.tokenizer.pad_token_id, 4)
    assert calls == [0, 1, 1, 1, 1, 1]  # 6 batches; computed in the first, reused after


def test_sliding_window_shorter_than_the_input_takes_the_plain_path(tiny_dirs, toy_data, monkeypatch):
    pipe = _pipeline(tiny_dirs["gemma3"], toy_data, "soft", False)  # window 8
    monkeypatch.setattr(fastpath, "shared_kv", lambda *a: pytest.fail("a window of 8 cannot share"))
    items = pipe.encoder.encode(_examples(False))
    pipe.model(collate(items, pipe.loaded.tokenizer.pad_token_id))


def test_dropout_in_training_turns_the_shared_path_off(tiny_dirs, toy_data, monkeypatch):
    pipe = _pipeline(tiny_dirs["gpt2"], toy_data, "soft", False)
    pipe.model.train()
    monkeypatch.setattr(fastpath, "shared_kv", lambda *a: pytest.fail("dropout differs per row"))
    pipe.model(collate(pipe.encoder.encode(_examples(False)), pipe.loaded.tokenizer.pad_token_id))


@pytest.mark.parametrize("kind,rate,shares", [("causal", 0.2, False), ("gpt2", 0.0, True)])
def test_model_dropout_sets_every_rate_and_the_fast_path_follows(tiny_dirs, toy_data, kind, rate, shares):
    raw = toy_config(tiny_dirs[kind], toy_data, "unused")
    raw["model"]["dropout"] = rate
    pipe = build(validate(raw), ["negative", "positive"])
    rates = [m.p for m in pipe.loaded.model.modules() if isinstance(m, torch.nn.Dropout)]
    rates += [m.attention_dropout for m in pipe.loaded.model.modules()
              if isinstance(getattr(m, "attention_dropout", None), float)]
    assert rates and set(rates) == {rate}
    pipe.model.train()
    assert (pipe.model._shared_len() > 0) is shares
