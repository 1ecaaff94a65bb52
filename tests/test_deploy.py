"""`cuetune merge`: a LoRA or full-weight run folded into the base weights is a plain
transformers folder that computes the run's probabilities; adapters that are no weight change
are refused with the reason."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import toy_config
from transformers import AutoModelForCausalLM

import cuetune
from cuetune.config import validate
from cuetune.data.examples import Example
from cuetune.engine.inference import predict_probs
from cuetune.engine.pipeline import build
from cuetune.errors import ArtifactError
from cuetune.prompt.batch import collate
from cuetune.runs import merge as deploy

TEXTS = ["the movie was great", "the food was awful and dull", "a very poor day", "lovely phone"]
EXAMPLES = [Example(t) for t in TEXTS]
TEMPLATE = "it is {text} sentiment : {answer}"  # no pretrained trigger: zero-shot is not saturated


def _train(tiny_dirs, toy_data, tmp_path, kind, method, lr):
    raw = toy_config(tiny_dirs[kind], toy_data, tmp_path / "run", method=method,
                     prompt={"template": TEMPLATE}, train={"lr": lr, "max_steps": 10})
    cuetune.train(raw)
    return tmp_path / "run"


@pytest.mark.parametrize("kind, method, lr", [
    ("causal", {"name": "lora", "r": 4}, 0.05),
    ("gpt2", {"name": "lora", "r": 4}, 0.05),  # Conv1D layers: weight stored [in, out]
    ("causal", {"name": "prompt-ft"}, 3e-3),
    ("masked", {"name": "prompt-ft"}, 3e-3),
])
def test_merged_folder_computes_what_the_run_computes(tiny_dirs, toy_data, tmp_path, kind, method, lr):
    run = _train(tiny_dirs, toy_data, tmp_path, kind, method, lr)
    tuned = cuetune.load(run)
    want = torch.tensor([[p["probs"][lab] for lab in tuned.labels] for p in tuned.predict(TEXTS)])
    out = deploy.merge(run, tmp_path / "merged")
    assert {"config.json", "model.safetensors", "tokenizer.json", "cuetune_prompt.json"} <= {
        p.name for p in out.iterdir()}
    # as a zero-shot cuetune model on the merged weights, with the run's prompt
    raw = {**tuned.manifest.config, "method": {"name": "zero-shot"}}
    raw["model"] = {**raw["model"], "name": str(out)}
    pipe = build(validate(raw), tuned.labels)
    got = predict_probs(pipe.model, pipe.encoder.encode(EXAMPLES),
                        pipe.loaded.tokenizer.pad_token_id)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)
    assert not torch.allclose(got, _zero_shot(tuned, raw, tiny_dirs[kind]), atol=1e-3), "nothing merged"
    if kind != "masked":  # and as any transformers user loads it
        plain = AutoModelForCausalLM.from_pretrained(out).eval()
        batch = collate(pipe.encoder.encode(EXAMPLES), pipe.loaded.tokenizer.pad_token_id)
        with torch.no_grad():
            logits = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        rows = logits[torch.arange(len(TEXTS)), batch["answer_pos"]][:, pipe.model.token_ids]
        torch.testing.assert_close(pipe.verbalizer.label_logits(rows).softmax(-1), want, atol=2e-5, rtol=0)


def _zero_shot(tuned, raw, base_dir):
    raw = {**raw, "model": {**raw["model"], "name": str(base_dir)}}
    pipe = build(validate(raw), tuned.labels)
    return predict_probs(pipe.model, pipe.encoder.encode(EXAMPLES),
                         pipe.loaded.tokenizer.pad_token_id)


@pytest.mark.parametrize("method, reason", [
    ({"name": "soft"}, "input embeddings the model reads"),
    ({"name": "prefix", "num_tokens": 2}, "keys and values added to every attention layer"),
    ({"name": "zero-shot"}, "nothing was trained"),
])
def test_adapters_that_are_no_weight_change_are_refused(tiny_dirs, toy_data, tmp_path, method, reason):
    lr = None if method["name"] == "zero-shot" else 0.05
    run = _train(tiny_dirs, toy_data, tmp_path, "causal", method, lr)
    with pytest.raises(ArtifactError, match=reason):
        deploy.merge(run, tmp_path / "merged")
    assert not (tmp_path / "merged").exists() and not list(tmp_path.glob(".merged.*"))


def test_merge_recipe_points_at_the_merged_folder(tiny_dirs, toy_data, tmp_path):
    run = _train(tiny_dirs, toy_data, tmp_path, "causal", {"name": "lora", "r": 2}, 0.05)
    out = deploy.merge(run, tmp_path / "merged")
    recipe = json.loads((out / "cuetune_prompt.json").read_text())
    assert recipe["base_model"]["path"] == str(out.resolve())
    assert {"slot": "text", "lead_space": True} in recipe["pieces"]
    with pytest.raises(ArtifactError, match="already exists"):
        deploy.merge(run, out)


@pytest.fixture(scope="module")
def bpe_llama(tmp_path_factory):
    """A tiny Llama with a byte-level BPE tokenizer (what SmolLM2 has), pretrained briefly on
    the toy task so a LoRA run has something to move."""
    from conftest import pretrain, toy_rows
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [r["text"] + " review : question : sentiment : positive negative" for r in toy_rows(300, 0)]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=alphabet))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=True, initializer_range=0.1))
    pretrain(model, fast, "causal", 300, 0)
    path = tmp_path_factory.mktemp("bpe") / "llama"
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.mark.parametrize("kind, tolerance", [("f16", 5e-4), ("q8_0", 1e-2)])  # measured 5.1e-5, 2.7e-3
@pytest.mark.slow  # writes and reads back GGUF files
def test_gguf_loads_back_with_the_runs_probabilities(bpe_llama, toy_data, tmp_path, kind, tolerance):
    """The GGUF read back by transformers (gguf_file=) gives the run's label probabilities
    within the quantisation's error, and its tokenizer encodes as the run's does."""
    from transformers import AutoTokenizer

    run = _train({"causal": bpe_llama}, toy_data, tmp_path, "causal", {"name": "lora", "r": 4}, 0.05)
    tuned = cuetune.load(run)
    want = torch.tensor([[p["probs"][lab] for lab in tuned.labels] for p in tuned.predict(TEXTS)])
    out = deploy.merge(run, tmp_path / "merged", gguf=kind)
    gguf_file = f"model-{kind}.gguf"
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file=gguf_file).eval()
    pipe = tuned.pipe
    batch = collate(pipe.encoder.encode(EXAMPLES), pipe.loaded.tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    rows = logits[torch.arange(len(TEXTS)), batch["answer_pos"]][:, pipe.model.token_ids]
    got = pipe.verbalizer.label_logits(rows).softmax(-1)
    assert (got - want).abs().max() < tolerance, (got - want).abs().max()
    assert (got - want).abs().max() > 0 or kind == "f16"  # q8_0 does round
    tok = AutoTokenizer.from_pretrained(out, gguf_file=gguf_file)
    assert [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS] == [
        pipe.loaded.tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]


def test_gguf_refuses_what_it_cannot_write(tiny_dirs, toy_data, tmp_path):
    run = _train(tiny_dirs, toy_data, tmp_path, "gpt2", {"name": "lora", "r": 2}, 0.05)
    with pytest.raises(ArtifactError, match="Llama-architecture models only"):
        deploy.merge(run, tmp_path / "merged", gguf="q8_0")
    with pytest.raises(ArtifactError, match="choose one of"):
        deploy.merge(run, tmp_path / "merged", gguf="q4")
    assert not (tmp_path / "merged").exists() and not list(tmp_path.glob(".merged.*"))
