"""Chain-rule scoring of label words (`prompt.multi_token: chain`): a word of several tokens
scores sum_i log P(t_i | x, t_<i) over the whole vocabulary. Pinned against a hand computation
with the plain transformers model on causal (Llama, Gemma) and seq2seq (T5) models; masked
models are refused with the reason; trained methods learn through it."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import toy_config
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

import cuetune
from cuetune.config import validate
from cuetune.data.splits import load_splits
from cuetune.engine.pipeline import build
from cuetune.errors import CuetuneError

WORDS = {"negative": ["very bad", "poor"], "positive": ["very good"]}
TEMPLATE = "review : {text} sentiment : {answer}"


def _pipe(model_dir, data, method="zero-shot", **prompt):
    cfg = validate(toy_config(model_dir, data, "unused", method={"name": method},
                              prompt={"template": TEMPLATE, "verbalizer": WORDS, "multi_token": "chain",
                                      **prompt}))
    splits = load_splits(cfg.data)
    return build(cfg, splits.labels), splits


def _hand_causal(model_dir, tok, text: str, word: str) -> float:
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt = tok(f"review : {text} sentiment :")["input_ids"]
    word_ids = tok(word, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + word_ids])
    with torch.no_grad():
        logp = model(ids).logits[0].log_softmax(-1)
    return sum(logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(word_ids))


def _hand_seq2seq(model_dir, tok, text: str, word: str) -> float:
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    enc = tok(f"review : {text} sentiment : <extra_id_0>")["input_ids"]
    word_ids = tok(word, add_special_tokens=False)["input_ids"]
    sentinel = tok.convert_tokens_to_ids("<extra_id_0>")
    dec = [model.config.decoder_start_token_id, sentinel] + word_ids[:-1]
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([enc]), decoder_input_ids=torch.tensor([dec])).logits[0]
    logp = logp.log_softmax(-1)
    return sum(logp[1 + i, t].item() for i, t in enumerate(word_ids))


@pytest.mark.parametrize("kind", ["causal", "gemma3", "seq2seq"])
def test_chain_scores_equal_a_hand_computation(tiny_dirs, toy_data, kind):
    pipe, splits = _pipe(tiny_dirs[kind], toy_data)
    examples = splits.dev[:5]
    probs = pipe.label_probs(pipe.encoder.encode(examples))  # [5, 2]
    hand = _hand_seq2seq if kind == "seq2seq" else _hand_causal
    tok = pipe.loaded.tokenizer
    for row, ex in enumerate(examples):
        words = {label: [hand(tiny_dirs[kind], tok, ex.text, w) for w in ws] for label, ws in WORDS.items()}
        label = torch.tensor([torch.tensor(words[lab]).logsumexp(0).item() for lab in pipe.labels])
        torch.testing.assert_close(probs[row], label.softmax(0), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["causal", "gemma3"])
def test_chain_scores_rows_of_different_lengths_as_if_each_ran_alone(tiny_dirs, toy_data, kind):
    """Right-padded rows of 10, 15 and 20 tokens: the tiny Gemma-3's sliding window (8) counts
    cache slots, so a shorter row's word placed after the padding would read padding, not its
    own last tokens (it did: up to 0.2 nats off); every row must equal the hand computation."""
    pipe, splits = _pipe(tiny_dirs[kind], toy_data)
    varied = [replace(ex, text=" ".join([ex.text] * (1 + i % 3))) for i, ex in enumerate(splits.dev[:6])]
    from cuetune.prompt.batch import collate

    batch = collate(pipe.encoder.encode(varied), pipe.loaded.tokenizer.pad_token_id)
    assert len(set(batch["attention_mask"].sum(1).tolist())) == 3
    with pipe.model.inference():
        got = pipe.loaded.family.word_logprobs(pipe.model, batch, pipe.verbalizer.word_ids)  # [6, 3]
    tok, flat = pipe.loaded.tokenizer, [w for ws in WORDS.values() for w in ws]
    hand = torch.tensor([[_hand_causal(tiny_dirs[kind], tok, ex.text, w) for w in flat] for ex in varied])
    torch.testing.assert_close(got, hand, atol=1e-5, rtol=1e-5)


def test_chain_differs_from_one_position_scoring(tiny_dirs, toy_data):
    """The shared first token "very" decides nothing under `first`; the chain rule reads on."""
    chain, splits = _pipe(tiny_dirs["causal"], toy_data)
    mean, _ = _pipe(tiny_dirs["causal"], toy_data, multi_token="mean")
    items = chain.encoder.encode(splits.dev)
    assert not torch.allclose(chain.label_probs(items), mean.label_probs(items), atol=1e-3)


def test_masked_models_refuse_chain_scoring(tiny_dirs, toy_data):
    with pytest.raises(CuetuneError, match="multi_token: chain"):
        _pipe(tiny_dirs["masked"], toy_data)


def test_a_soft_prompt_trains_through_chain_scoring(tiny_dirs, toy_data, tmp_path):
    """The skill the soft prompt must unlock answers negative / positive; "very good" is a
    second, two-token word for positive."""
    words = {"negative": ["negative"], "positive": ["positive", "very good"]}
    cfg = toy_config(tiny_dirs["causal"], toy_data, tmp_path / "run",
                     prompt={"template": "{soft:4} {text} sentiment : {answer}", "verbalizer": words,
                             "multi_token": "chain"})
    manifest = cuetune.train(cfg)
    assert manifest.score("test", "accuracy") > manifest.score("zero_shot_test", "accuracy") + 0.2


@pytest.mark.parametrize("kind,method", [("causal", "prefix"), ("gemma3", "soft"), ("gpt2", "lora")])
def test_the_prompt_runs_once_and_scores_as_if_run_per_word(tiny_dirs, toy_data, kind, method, monkeypatch):
    """A causal model's chain scores run the prompt once and append each word to its cache;
    they equal the generic path that repeats the whole prompt per word, under the methods'
    hooks (prefix keys, soft embeddings, LoRA weights; trained-looking random adapters), also
    when the batch's rows run in length groups, each cut to its longest row."""
    from cuetune.families import fastpath
    from cuetune.families.family import Family
    from cuetune.prompt.batch import collate

    template = "{soft:3} review : {text} sentiment : {answer}" if method == "soft" else TEMPLATE
    pipe, splits = _pipe(tiny_dirs[kind], toy_data, method, template=template)
    with torch.no_grad():
        for p in pipe.method.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.05)
    varied = [replace(ex, text=" ".join([ex.text] * (1 + i % 3))) for i, ex in enumerate(splits.dev[:6])]
    batch = collate(pipe.encoder.encode(varied), pipe.loaded.tokenizer.pad_token_id)  # 3 lengths
    words = pipe.verbalizer.word_ids
    with pipe.model.inference():
        once = pipe.loaded.family.word_logprobs(pipe.model, batch, words)
        per_word = Family.word_logprobs(pipe.loaded.family, pipe.model, batch, words)
        monkeypatch.setattr(fastpath, "GROUP_OVERHEAD_TOKENS", 0)  # a group per length
        assert len(fastpath.length_groups(batch["attention_mask"].sum(1).tolist())) > 1
        grouped = pipe.loaded.family.word_logprobs(pipe.model, batch, words)
    assert once.shape == (6, 3)
    torch.testing.assert_close(once, per_word, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grouped, per_word, atol=1e-5, rtol=1e-5)
