"""Generation: the answer is text.

What must hold for every method x family that writes text:
- decoding continues exactly the model that training computes. Each token greedy decoding
  writes is the argmax of the teacher-forced logits at that position, so the prompt (soft rows,
  prefix keys and values, LoRA, the shared-prompt cache) is in place at every step;
- batched output equals one-by-one output, for greedy, beam search and sampling;
- the loss is on the answer tokens only;
- a tuned prompt changes what `generate` writes, also after reloading the run directory.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import copy_rows, save_tiny, write_jsonl

import cuetune
from cuetune.config import GenerateConfig, validate
from cuetune.data.examples import Example
from cuetune.engine.generation import generate, generate_ids, penalize, prompt_only
from cuetune.engine.inference import token_nll
from cuetune.engine.pipeline import build
from cuetune.errors import ConfigError, ModelError
from cuetune.prompt.batch import collate
from cuetune.prompt.encoder import Encoded

METHODS = {
    "soft": {"name": "soft"},
    "prefix": {"name": "prefix", "num_tokens": 3},
    "ptuning": {"name": "ptuning", "hidden_size": 16},
    "lora": {"name": "lora", "r": 4},
    "prompt-ft": {"name": "prompt-ft"},
    "full": {"name": "full"},
    "two-stage": {"name": "two-stage", "r": 4},
    "zero-shot": {"name": "zero-shot"},
}
KINDS = ["causal", "gpt2", "gemma3", "seq2seq"]
TEMPLATE = "{soft:4} review : {text} answer : {answer}"


@pytest.fixture(scope="module")
def gen_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    return {"train": write_jsonl(root / "train.jsonl", copy_rows(48, 1)),
            "dev": write_jsonl(root / "dev.jsonl", copy_rows(12, 2)),
            "test": write_jsonl(root / "test.jsonl", copy_rows(12, 3))}


@pytest.fixture(scope="module")
def gen_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("genmodels")
    models = {kind: save_tiny(root / kind, kind, seed=3) for kind in KINDS}
    # gemma3 with a window the prompts fit in (prefix keys beyond the window are refused)
    models["gemma3"] = save_tiny(root / "gemma3-wide", "gemma3", seed=3, window=64)
    models["gemma3-narrow"] = save_tiny(root / "gemma3-narrow", "gemma3", seed=3)
    return models


def written(pipe, prompts, cfg):
    """The token ids a pipeline's prompt model writes after each prompt."""
    return generate_ids(pipe.model, pipe.loaded.tokenizer, prompts, cfg)


def decoded(pipe, prompts, cfg):
    """The texts a pipeline's prompt model writes after each prompt."""
    return generate(pipe.model, pipe.loaded.tokenizer, prompts, cfg)


def gen_config(model_dir, data, out, **sections) -> dict:
    cfg = {"model": {"name": str(model_dir)},
           "data": {"task": "generation", **{k: str(v) for k, v in data.items()}},
           "prompt": {"template": TEMPLATE}, "method": {"name": "soft"},
           "train": {"seed": 0, "lr": 0.05, "batch_size": 8, "max_steps": 30, "eval_every": 10,
                     "patience": None, "progress": False, "warmup_ratio": 0.0,
                     "zero_shot_baseline": False},
           "generate": {"max_new_tokens": 5}, "output_dir": str(out)}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg


def _pipeline(model_dir, data, method):
    pipe = build(validate(gen_config(model_dir, data, "unused", method=dict(METHODS[method]))), [])
    with torch.no_grad():  # move zero-initialised factors (LoRA B) off zero so every part matters
        for p in pipe.method.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return pipe


def _inputs(n: int = 5) -> list[Example]:
    rows = copy_rows(n, 9)
    return [Example(" ".join(r["text"].split()[: 1 + i % 4])) for i, r in enumerate(rows)]


def _teacher_forced(pipe, prompt: Encoded, written: list[int]) -> Encoded:
    """The item training would build for this prompt with `written` as the answer."""
    if pipe.loaded.family.answer_is_next:
        return Encoded(prompt.input_ids + written[:-1],
                       prompt.soft_index + [-1] * (len(written) - 1), prompt.answer_pos, None,
                       target=written,
                       target_pos=list(range(prompt.answer_pos, prompt.answer_pos + len(written))))
    sentinel = pipe.encoder._answer_token()
    return Encoded(prompt.input_ids, prompt.soft_index, prompt.answer_pos, None, target=written,
                   target_pos=list(range(1, len(written) + 1)),
                   decoder_ids=[sentinel] + written[:-1])


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("kind", KINDS)
def test_greedy_decoding_continues_the_trained_model(gen_models, gen_data, kind, method):
    pipe = _pipeline(gen_models[kind], gen_data, method)
    prompts = pipe.encoder.encode(_inputs(), with_target=False)
    every = written(pipe, prompts, GenerateConfig(max_new_tokens=5, batch_size=8))
    assert all(every), "every row writes at least one token"
    pad = pipe.loaded.tokenizer.pad_token_id
    pipe.model.eval()
    for prompt, tokens in zip(prompts, every, strict=True):
        batch = collate([_teacher_forced(pipe, prompt, tokens)], pad)
        with torch.no_grad():
            logits = pipe.model(batch)  # [N, V]
        assert logits.argmax(-1).tolist() == tokens


@pytest.mark.parametrize("strategy", ["greedy", "beam", "sample"])
@pytest.mark.parametrize("method", ["soft", "prefix", "lora"])
@pytest.mark.parametrize("kind", ["causal", "gemma3", "seq2seq"])
def test_batched_output_equals_one_by_one(gen_models, gen_data, kind, method, strategy):
    pipe = _pipeline(gen_models[kind], gen_data, method)
    prompts = pipe.encoder.encode(_inputs(6), with_target=False)
    assert len({len(e.input_ids) for e in prompts}) > 1, "lengths must differ to test left padding"
    # 16 steps: rows finish at different steps, so a finished row waits while others run on
    cfg = GenerateConfig(strategy=strategy, max_new_tokens=16, num_beams=3, top_k=10, batch_size=6,
                         temperature=1.5)
    together = written(pipe, prompts, cfg)
    alone = [written(pipe, [p], cfg.model_copy(update={"seed": cfg.seed + i}))[0]
             for i, p in enumerate(prompts)]
    assert together == alone


def test_beam_search_scores_at_least_greedy(gen_models, gen_data):
    """Beam search finds a sequence at least as likely as greedy's (length penalty 0)."""
    pipe = _pipeline(gen_models["causal"], gen_data, "soft")
    prompts = pipe.encoder.encode(_inputs(4), with_target=False)
    greedy = written(pipe, prompts, GenerateConfig(max_new_tokens=4))
    beam = written(pipe, prompts, GenerateConfig(strategy="beam", num_beams=4, max_new_tokens=4,
                                                 length_penalty=0.0))
    pad = pipe.loaded.tokenizer.pad_token_id

    def logprob(prompt, tokens):
        batch = collate([_teacher_forced(pipe, prompt, tokens)], pad)
        with torch.no_grad():
            logp = pipe.model(batch).log_softmax(-1)
        return logp[torch.arange(len(tokens)), torch.tensor(tokens)].sum().item()

    for prompt, g, b in zip(prompts, greedy, beam, strict=True):
        if len(g) == len(b):  # same length: beam's must be no less likely
            assert logprob(prompt, b) >= logprob(prompt, g) - 1e-5


def test_sampling_differs_by_seed_and_follows_filters(gen_models, gen_data):
    pipe = _pipeline(gen_models["causal"], gen_data, "soft")
    prompts = pipe.encoder.encode(_inputs(6), with_target=False)
    base = GenerateConfig(strategy="sample", max_new_tokens=6, temperature=2.0)
    a = written(pipe, prompts, base)
    assert a == written(pipe, prompts, base)
    assert a != written(pipe, prompts, base.model_copy(update={"seed": 1}))
    greedy = written(pipe, prompts, GenerateConfig(max_new_tokens=6))
    assert written(pipe, prompts, base.model_copy(update={"top_k": 1})) == greedy


def test_stop_strings_cut_the_text(gen_models, gen_data):
    pipe = _pipeline(gen_models["causal"], gen_data, "soft")
    prompts = pipe.encoder.encode(_inputs(4), with_target=False)
    full = decoded(pipe, prompts, GenerateConfig(max_new_tokens=6))
    word = full[0].split()[1] if len(full[0].split()) > 1 else full[0].split()[0]
    cut = decoded(pipe, prompts, GenerateConfig(max_new_tokens=6, stop=[word]))
    assert word not in cut[0] and full[0].startswith(cut[0])


def test_loss_is_on_answer_tokens_only(gen_models, gen_data):
    """Changing prompt words the answer cannot see is impossible; changing answer tokens must
    change the loss, and the number of scored positions is the answer length + end token."""
    pipe = _pipeline(gen_models["causal"], gen_data, "soft")
    items = pipe.encoder.encode([Example("good movie", target="good ."), Example("bad day", target="bad .")])
    tok = pipe.loaded.tokenizer
    batch = collate(items, tok.pad_token_id)
    logits = pipe.model(batch)
    assert logits.shape[0] == sum(len(tok(" good .", add_special_tokens=False)["input_ids"]) + 1
                                  for _ in items)
    assert (batch["target"][:, -1] == tok.eos_token_id).all()


def test_prefix_past_a_sliding_window_is_refused_and_soft_is_exact(gen_models, gen_data):
    narrow = gen_models["gemma3-narrow"]  # window 8, prompts of 6-9 tokens plus the answer
    pipe = _pipeline(narrow, gen_data, "soft")
    prompts = pipe.encoder.encode(_inputs(), with_target=False)
    every = written(pipe, prompts, GenerateConfig(max_new_tokens=5))
    for prompt, tokens in zip(prompts, every, strict=True):
        with torch.no_grad():
            logits = pipe.model(collate([_teacher_forced(pipe, prompt, tokens)], 0))
        assert logits.argmax(-1).tolist() == tokens
    pipe = _pipeline(narrow, gen_data, "prefix")
    with pytest.raises(ModelError, match="sliding attention window"):
        written(pipe, prompts, GenerateConfig(max_new_tokens=5))


def test_a_prefix_run_that_could_not_decode_at_its_length_cap_is_refused_before_training(
        gen_models, gen_data, tmp_path):
    """Gemma-3 (here a 64-token window): 4 prefix tokens + data.max_length 56 + 5 new tokens do not
    fit, so the run stops before training and says how long inputs may be; 55 fits."""
    raw = gen_config(gen_models["gemma3"], gen_data, tmp_path / "run",
                     method={"name": "prefix", "num_tokens": 4}, train={"max_steps": 2})
    raw["data"]["max_length"] = 56
    with pytest.raises(ConfigError, match=r"= 65 exceeds this model's 64-token sliding .* at most 55"):
        cuetune.train(raw)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    raw["data"]["max_length"] = 55
    cuetune.train(raw)


def test_generation_rejects_classification_only_methods(gen_models, gen_data, tmp_path):
    with pytest.raises(ConfigError, match="classification only"):
        build(validate(gen_config(gen_models["causal"], gen_data, "x", method={"name": "head"})), [])
    with pytest.raises(ConfigError, match="classification only"):  # through train's preparation
        cuetune.train(gen_config(gen_models["causal"], gen_data, tmp_path / "run",
                                 method={"name": "in-context"}))


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_tuned_prompt_changes_generate_output_after_reload(gen_models, gen_data, tmp_path, kind):
    """The failure PEFT users report: generate() ignoring a trained soft prompt. Here the tuned
    prompt must lower the answer loss and change the text written, through the reloaded run."""
    cfg = gen_config(gen_models[kind], gen_data, tmp_path / "run",
                     method={"name": "prefix", "num_tokens": 4}, train={"max_steps": 80, "lr": 0.05})
    manifest = cuetune.train(cfg)
    untouched = build(validate(gen_config(gen_models[kind], gen_data, "x",
                                          method={"name": "prefix", "num_tokens": 4})), [])
    inputs = [r["text"] for r in copy_rows(12, 3)]
    before = decoded(untouched, untouched.encoder.encode([Example(t) for t in inputs], with_target=False),
                      GenerateConfig(max_new_tokens=5))
    tuned = cuetune.load(tmp_path / "run")
    after = tuned.generate(inputs)
    assert sum(a != b for a, b in zip(after, before, strict=True)) >= len(inputs) // 2
    assert manifest.task == "generation"
    test = manifest.metrics["test"]
    assert test["token_nll"] < token_nll(
        untouched.model, untouched.encoder.encode([Example(r["text"], target=r["target"], refs=(r["target"],))
                                           for r in copy_rows(12, 3)]),
        untouched.loaded.tokenizer.pad_token_id, 8) - 0.3
    assert {"bleu", "chrf", "rouge_l", "exact_match", "token_f1"} <= set(test)
    assert tuned.evaluate(gen_data["test"])["token_nll"] == pytest.approx(test["token_nll"], abs=1e-5)


def test_prompt_only_recovers_the_prompt(gen_models, gen_data):
    pipe = _pipeline(gen_models["causal"], gen_data, "soft")
    ex = Example("good movie", target="good .")
    alone = pipe.encoder.encode([ex], with_target=False)[0]
    assert prompt_only(pipe.encoder.encode([ex])[0]).input_ids == alone.input_ids


def test_cli_generate_and_eval(gen_models, gen_data, tmp_path, capsys):
    from test_artifacts_cli import run_cli

    cfg = gen_config(gen_models["causal"], gen_data, tmp_path / "run",
                     method={"name": "lora", "r": 4},
                     prompt={"template": "review : {text} answer : {answer}"},  # PEFT's LoRA: no soft
                     train={"max_steps": 10, "lr": 3e-3, "zero_shot_baseline": True})
    config_file = tmp_path / "gen.yaml"
    config_file.write_text(__import__("yaml").safe_dump(cfg))
    code, out, _ = run_cli(["train", str(config_file)], capsys)
    assert code == 0 and "test bleu: zero-shot" in out, out
    summary = json.loads(out.split("test bleu")[0])
    assert {"test_bleu", "test_token_f1", "zero_shot_test_chrf", "test_rouge_1", "test_rouge_2"} \
        <= set(summary)
    code, out, _ = run_cli(["eval", str(tmp_path / "run"), "--data", str(gen_data["test"])], capsys)
    metrics = json.loads(out)
    assert code == 0 and {"bleu", "chrf", "rouge_l", "exact_match", "token_f1"} <= set(metrics)
    # decoding settings for one evaluation: the API and the CLI agree, and nothing sticks
    short_cmd = ["eval", str(tmp_path / "run"), "--data", str(gen_data["test"]),
                 "--set", "max_new_tokens=1", "--set", "generate.no_repeat_ngram_size=1"]
    code, out, _ = run_cli(short_cmd, capsys)
    short = json.loads(out)
    tuned = cuetune.load(tmp_path / "run")
    assert code == 0 and short == tuned.evaluate(gen_data["test"], max_new_tokens=1, no_repeat_ngram_size=1)
    assert short["examples"] != metrics["examples"] and tuned.evaluate(gen_data["test"]) == metrics
    code, _, err = run_cli(short_cmd[:4] + ["--set", "beams=2"], capsys)
    assert code != 0 and "beams" in err
    # through PEFT and back: a generation run has no accuracy, and nothing may ask for one
    code, out, err = run_cli(["export", str(tmp_path / "run"), "--out", str(tmp_path / "peft")], capsys)
    assert code == 0, err
    code, out, err = run_cli(["import-peft", str(tmp_path / "peft"), str(config_file),
                              "--out", str(tmp_path / "imported")], capsys)
    assert code == 0, err
    imported = json.loads(out)
    assert imported["method"] == "lora" and imported["test_bleu"] == summary["test_bleu"]
    inp = tmp_path / "in.txt"
    inp.write_text("the movie good was\n\nawful day and\n")
    dest = tmp_path / "out.jsonl"
    code, _, _ = run_cli(["generate", str(tmp_path / "run"), "-i", str(inp), "-o", str(dest),
                          "--set", "strategy=beam", "--set", "num_beams=2", "--set", "max_new_tokens=3"],
                         capsys)
    rows = [json.loads(x) for x in dest.read_text().splitlines()]
    assert code == 0 and [r["text"] for r in rows] == ["the movie good was", "awful day and"]
    assert all(isinstance(r["output"], str) for r in rows)
    code, _, err = run_cli(["generate", str(tmp_path / "run"), "-i", str(inp), "--set", "beams=2"],
                           capsys)
    assert code != 0 and "beams" in err


def test_references_are_grouped_per_input(tmp_path):
    from cuetune.config import DataConfig
    from cuetune.data.splits import load_splits

    rows = [{"text": "a", "target": "x"}, {"text": "a", "target": "y"},
            {"text": "b", "target": ["z", "w"]}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    splits = load_splits(DataConfig(task="generation", train=str(path), test=str(path),
                                    clean={"drop_test_overlap": False}))
    assert [(e.text, e.refs) for e in splits.test] == [("a", ("x", "y")), ("b", ("z", "w"))]
    assert len(splits.train) == 3 and splits.labels == []
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "a", "target": ""}])
    with pytest.raises(Exception, match="bad.jsonl:1: column 'target' is empty"):
        load_splits(DataConfig(task="generation", train=str(bad)))


def test_rouge_1_2_and_l_are_pinned_on_a_small_example():
    """"the cat sat" against "the cat sat on the mat": unigram P 1, R 0.5 -> F 2/3; bigrams
    2 of 2 against 2 of 5 -> F 4/7; LCS 3 -> as ROUGE-1."""
    from cuetune.metrics.text import generation_metrics

    m = generation_metrics(["the cat sat"], [("the cat sat on the mat",)])
    assert m["rouge_1"] == pytest.approx(100 * 2 / 3, abs=1e-3)
    assert m["rouge_2"] == pytest.approx(100 * 4 / 7, abs=1e-3)
    assert m["rouge_l"] == pytest.approx(100 * 2 / 3, abs=1e-3)


def test_a_stop_string_counts_only_once_the_text_has_begun():
    """SAMSum zero-shot: the model answers "Summary:" on a new line; stopping at that first
    line break gave empty summaries (ROUGE-1 0.7). White space before the text is no stop."""
    from cuetune.engine.generation import Stops

    pieces = {0: "", 1: "\n", 2: "Amanda", 3: " calls", 4: "\n", 5: "Bob:"}

    class Tok:
        def decode(self, ids, skip_special_tokens=True):
            return "".join(pieces[i] for i in ids)

    class Family:
        def end_token_ids(self, tokenizer):
            return {0}

    stops = Stops(Tok(), ["\n"], Family())
    assert not stops.ended([1]) and not stops.ended([1, 1, 2, 3])
    assert stops.ended([1, 2, 3, 4])
    assert stops.finish([1, 2, 3, 4, 5]) == "Amanda calls"
    assert stops.finish([1, 2, 0]) == "Amanda"


def test_penalties_equal_transformers_processors_over_the_written_tokens():
    """`penalize` is transformers' repetition penalty and no-repeat n-gram processors, applied
    to the tokens a row has written (equal-length rows here, as the processors need)."""
    from transformers import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

    gen = torch.Generator().manual_seed(0)
    written = torch.randint(0, 3, (4, 9), generator=gen)  # [B, T]: three tokens: n-grams repeat
    scores = torch.randn(4, 11, generator=gen)  # [B, V]
    seqs = written.tolist()
    for n in (1, 2, 3):
        want = NoRepeatNGramLogitsProcessor(n)(written, scores.clone())
        got = penalize(scores, seqs, GenerateConfig(no_repeat_ngram_size=n))
        assert torch.equal(got, want) and (got == float("-inf")).any()
    want = RepetitionPenaltyLogitsProcessor(1.7)(written, scores.clone())
    torch.testing.assert_close(penalize(scores, seqs, GenerateConfig(repetition_penalty=1.7)), want)
    assert penalize(scores, seqs, GenerateConfig()) is scores  # off: untouched, no copy


def _bigrams_repeat(tokens: list[int]) -> bool:
    pairs = list(zip(tokens, tokens[1:], strict=False))
    return len(pairs) != len(set(pairs))


@pytest.mark.parametrize("strategy", ["greedy", "beam", "sample"])
def test_no_repeat_ngrams_hold_in_every_strategy_and_batching_keeps_them(gen_models, gen_data,
                                                                          strategy):
    pipe = _pipeline(gen_models["causal"], gen_data, "soft")
    prompts = pipe.encoder.encode(_inputs(5), with_target=False)
    plain = GenerateConfig(strategy=strategy, max_new_tokens=16, num_beams=3, batch_size=5,
                           temperature=0.5)
    assert any(_bigrams_repeat(t) for t in written(pipe, prompts, plain)), \
        "the tiny model must loop without the setting, or this test shows nothing"
    cfg = plain.model_copy(update={"no_repeat_ngram_size": 2})
    together = written(pipe, prompts, cfg)
    assert not any(_bigrams_repeat(t) for t in together)
    alone = [written(pipe, [p], cfg.model_copy(update={"seed": cfg.seed + i}))[0]
             for i, p in enumerate(prompts)]
    assert together == alone
