"""PEFT round trips: our adapters load in PEFT with the same logits, and PEFT's load in cuetune.

The causal model here has no BOS token, because PEFT puts virtual tokens before everything and
our soft block must be first for the two to compute the same thing.
"""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
import warnings
from contextlib import contextmanager

import pytest
import torch
from conftest import pretrain, tiny_model, toy_config, toy_tokenizer
from peft import (
    LoraConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    get_peft_model,
)
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM

import cuetune
from cuetune.data.examples import Example
from cuetune.errors import ArtifactError
from cuetune.prompt.batch import collate
from cuetune.runs import peft as interop

TEXTS = ["the movie was great", "the food was awful and dull", "a very poor day", "lovely phone"]
SOFT_TEMPLATE = "{soft:4} {text} sentiment : {answer}"
HARD_TEMPLATE = "{text} sentiment : {answer}"
EXPORTS = {  # method settings, template, lr
    "soft": ({"name": "soft"}, SOFT_TEMPLATE, 0.1),
    "ptuning": ({"name": "ptuning", "hidden_size": 16}, SOFT_TEMPLATE, 0.05),
    "prefix": ({"name": "prefix", "num_tokens": 4}, HARD_TEMPLATE, 0.05),
    "prefix-mlp": ({"name": "prefix", "num_tokens": 4, "projection": True, "projection_hidden": 16},
                   HARD_TEMPLATE, 0.05),
    "lora": ({"name": "lora", "r": 4}, HARD_TEMPLATE, 0.02),
}


@pytest.fixture(scope="module")
def nobos_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("nobos")
    model, tok = tiny_model("causal"), toy_tokenizer("causal", bos=False)
    pretrain(model, tok, "causal", 200, 0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@contextmanager
def peft_calls():
    """PEFT 0.21's own calls into transformers use names deprecated in 5.24 (`past_key_values`,
    `is_gradient_checkpointing`); the suite fails on FutureWarnings from cuetune's calls, so
    only PEFT's are let through, here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _batch(pipe):
    items = pipe.encoder.encode([Example(t) for t in TEXTS])
    return collate(items, pipe.loaded.tokenizer.pad_token_id)


def _peft_scores(peft_model, pipe, batch, strip: int) -> torch.Tensor:
    """Label scores from PEFT's full forward: PEFT gets our tokens without the soft placeholders."""
    ids, mask = batch["input_ids"][:, strip:], batch["attention_mask"][:, strip:]
    with torch.no_grad(), peft_calls():
        logits = peft_model(input_ids=ids, attention_mask=mask).logits  # [B, (P +) T, V]
    rows = logits[torch.arange(len(ids)), batch["answer_pos"]]  # [B, V]
    return pipe.verbalizer.label_logits(rows[:, pipe.model.token_ids].float())


def _cuetune_scores(pipe, batch) -> torch.Tensor:
    with torch.no_grad():
        return pipe.model(batch)


@pytest.mark.parametrize("kind", sorted(EXPORTS))
def test_export_loads_in_peft_with_the_same_logits(nobos_dir, toy_data, tmp_path, kind):
    settings, template, lr = EXPORTS[kind]
    raw = toy_config(nobos_dir, toy_data, tmp_path / "run", method=dict(settings))
    raw["prompt"]["template"] = template
    raw["train"].update(lr=lr, max_steps=10)
    cuetune.train(raw)
    peft_dir = interop.export_peft(tmp_path / "run", tmp_path / "peft")
    tuned = cuetune.load(tmp_path / "run")
    tuned.pipe.model.eval()
    batch = _batch(tuned.pipe)
    with peft_calls():
        base = AutoModelForCausalLM.from_pretrained(nobos_dir)
        peft_model = PeftModel.from_pretrained(base, peft_dir).eval()
    strip = tuned.pipe.encoder.num_soft
    ours, theirs = _cuetune_scores(tuned.pipe, batch), _peft_scores(peft_model, tuned.pipe, batch, strip)
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
    zero = tuned.pipe.verbalizer.label_logits(
        AutoModelForCausalLM.from_pretrained(nobos_dir)(input_ids=batch["input_ids"][:, strip:],
                                                        attention_mask=batch["attention_mask"][:, strip:])
        .logits[torch.arange(len(TEXTS)), batch["answer_pos"] - strip][:, tuned.pipe.model.token_ids])
    assert not torch.allclose(ours, zero, atol=1e-3), "the adapter must change the logits"


@pytest.mark.parametrize("kind", ["soft", "prefix", "lora"])
def test_the_exported_example_reproduces_cuetune_with_peft_alone(nobos_dir, toy_data, tmp_path, kind):
    """The folder says how cuetune built its input (fixed token ids, where the text goes and
    whether a space precedes it, label words and their ids); its example.py, run as a PEFT
    user would, gives cuetune's probabilities."""
    settings, template, lr = EXPORTS[kind]
    raw = toy_config(nobos_dir, toy_data, tmp_path / "run", method=dict(settings),
                     prompt={"template": template.replace("{text}", "review : {text}")})
    raw["train"].update(lr=lr, max_steps=10)
    cuetune.train(raw)
    peft_dir = interop.export_peft(tmp_path / "run", tmp_path / "peft")
    recipe = json.loads((peft_dir / "cuetune_prompt.json").read_text())
    assert {"slot": "text", "lead_space": True} in recipe["pieces"]
    assert {w["word"] for words in recipe["label_words"].values() for w in words} == {"negative", "positive"}
    with peft_calls():
        example = runpy.run_path(str(peft_dir / "example.py"), run_name="example")
        theirs = [example["label_probs"](t) for t in TEXTS]
    ours = cuetune.load(tmp_path / "run").predict(TEXTS)
    for got, want in zip(theirs, ours, strict=True):
        assert got == pytest.approx(want["probs"], abs=1e-5)
    assert len({round(p["positive"], 3) for p in theirs}) > 1, "inputs must change the answer"
    if kind == "soft":  # as a user runs it: the output is the probabilities, no library warning
        done = subprocess.run([sys.executable, str(peft_dir / "example.py"), TEXTS[0]], capture_output=True,
                              text=True, check=True)
        assert json.loads(done.stdout)["probs"] == pytest.approx(ours[0]["probs"], abs=1e-5)
        assert "Warning" not in done.stderr, done.stderr


IMPORTS = {  # PEFT config, template cuetune runs it with
    "PROMPT_TUNING": (PromptTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"), SOFT_TEMPLATE),
    "P_TUNING": (PromptEncoderConfig(num_virtual_tokens=4, task_type="CAUSAL_LM",
                                     encoder_hidden_size=16), SOFT_TEMPLATE),
    "PREFIX_TUNING": (PrefixTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"), HARD_TEMPLATE),
    "LORA": (LoraConfig(r=4, task_type="CAUSAL_LM", init_lora_weights=False), HARD_TEMPLATE),
}


@pytest.mark.parametrize("kind", sorted(IMPORTS))
def test_peft_adapter_imports_with_the_same_logits(nobos_dir, toy_data, tmp_path, kind):
    peft_config, template = IMPORTS[kind]
    torch.manual_seed(1)
    with peft_calls():
        peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(nobos_dir), peft_config)
    with torch.no_grad():  # a trained-looking adapter, not PEFT's neutral init
        for name, p in peft_model.named_parameters():
            if p.requires_grad and "embedding" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(tmp_path / "peft")
    raw = toy_config(nobos_dir, toy_data, tmp_path / "run")
    raw["prompt"]["template"] = template
    manifest = interop.import_peft(tmp_path / "peft", raw)
    assert manifest.imported_from.peft_type == kind
    tuned = cuetune.load(tmp_path / "run")
    batch = _batch(tuned.pipe)
    base = AutoModelForCausalLM.from_pretrained(nobos_dir)
    with peft_calls():
        loaded = PeftModel.from_pretrained(base, tmp_path / "peft").eval()
    ours = _cuetune_scores(tuned.pipe, batch)
    theirs = _peft_scores(loaded, tuned.pipe, batch, tuned.pipe.encoder.num_soft)
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()


@pytest.mark.parametrize("family,auto", [("masked", AutoModelForMaskedLM),
                                         ("seq2seq", AutoModelForSeq2SeqLM)])
def test_lora_export_on_other_families(tiny_dirs, toy_data, tmp_path, family, auto):
    raw = toy_config(tiny_dirs[family], toy_data, tmp_path / "run", method={"name": "lora", "r": 4})
    raw["prompt"]["template"] = HARD_TEMPLATE
    raw["train"].update(lr=0.02, max_steps=10)
    cuetune.train(raw)
    peft_dir = interop.export_peft(tmp_path / "run", tmp_path / "peft")
    tuned = cuetune.load(tmp_path / "run")
    with peft_calls():
        peft_model = PeftModel.from_pretrained(auto.from_pretrained(tiny_dirs[family]), peft_dir).eval()
    ids = torch.tensor([[2, 9, 10, 11, 3]])
    extra = {"decoder_input_ids": torch.tensor([[0, 7]])} if family == "seq2seq" else {}
    base = tuned.pipe.loaded.model.eval()
    with torch.no_grad():
        with tuned.pipe.method.applied():  # the adapter sits beside the base, applied per forward
            ours = base(input_ids=ids, **extra).logits
        with peft_calls():
            theirs = peft_model(input_ids=ids, **extra).logits
        untouched = base(input_ids=ids, **extra).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(untouched, theirs, atol=1e-3), "the base model itself stays as loaded"


def test_export_refuses_what_peft_cannot_hold(tiny_dirs, nobos_dir, toy_data, tmp_path):
    raw = toy_config(tiny_dirs["causal"], toy_data, tmp_path / "bos")  # BOS before the soft block
    raw["train"]["max_steps"] = 2
    cuetune.train(raw)
    with pytest.raises(ArtifactError, match="no special tokens before it"):
        interop.export_peft(tmp_path / "bos", tmp_path / "peft")
    assert not (tmp_path / "peft").exists()
    raw = toy_config(nobos_dir, toy_data, tmp_path / "full", method={"name": "head"})
    raw["train"].update(max_steps=2, lr=1e-3)
    cuetune.train(raw)
    with pytest.raises(ArtifactError, match="PEFT has no adapter type"):
        interop.export_peft(tmp_path / "full", tmp_path / "peft")


def test_import_refuses_pickle_and_unknown_types(tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (tmp_path / "adapter_model.bin").write_bytes(b"not read")
    with pytest.raises(ArtifactError, match="pickle"):
        interop.read_peft(tmp_path)
    with pytest.raises(ArtifactError, match="cannot be imported"):
        interop.importer_for("IA3")


@pytest.mark.parametrize("kind", ["soft", "prefix"])
def test_generated_text_equals_a_greedy_loop_over_peft_forward(nobos_dir, kind):
    """The written tokens are, step by step, the argmax of PEFT's own forward on the exported
    adapter: an independent check of the decoding path. The loop calls PEFT's forward, not its
    `generate()`, which with peft 0.21.2 and transformers 5.24 prepends prompt-learning adapters
    again at every cached step (docs/deploy.md)."""
    from peft import set_peft_model_state_dict

    from cuetune.config import GenerateConfig, validate
    from cuetune.engine.generation import generate_ids
    from cuetune.engine.pipeline import build

    settings, template, _ = EXPORTS[kind]
    pipe = build(validate({"model": {"name": str(nobos_dir)}, "data": {"task": "generation"},
                           "prompt": {"template": template}, "method": dict(settings)}), [])
    torch.manual_seed(0)
    with torch.no_grad():
        for p in pipe.method.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.5)
    prompts = pipe.encoder.encode([Example(t) for t in TEXTS], with_target=False)
    written = generate_ids(pipe.model, pipe.loaded.tokenizer, prompts,
                           GenerateConfig(max_new_tokens=6, batch_size=4))
    assert all(written), "every row writes at least one token"
    peft_config, tensors = pipe.method.peft_export()
    with peft_calls():
        peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(nobos_dir), peft_config).eval()
        set_peft_model_state_dict(peft_model, tensors)
    eos = pipe.loaded.tokenizer.eos_token_id
    for prompt, tokens in zip(prompts, written, strict=True):
        ids = [t for t, s in zip(prompt.input_ids, prompt.soft_index, strict=True) if s < 0]
        loop = []
        while len(loop) < len(tokens) and eos not in loop:
            row = torch.tensor([ids + loop])
            with torch.no_grad(), peft_calls():
                loop.append(int(peft_model(input_ids=row, attention_mask=torch.ones_like(row))
                                .logits[0, -1].argmax()))
        assert loop == tokens
