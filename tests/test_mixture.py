"""Method `mixture`: M prompts under a prior P(phi). The prior learns the prompt that unlocks a
tiny model's planted skill (conftest.pretrain: "review :" answers the sentiment, "question :"
the opposite); the marginal likelihood and the expected cost equal hand computations from each
prompt alone; settings that cannot work are refused with the reason."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import toy_config

import cuetune
from cuetune.config import validate
from cuetune.data.examples import Example
from cuetune.engine.pipeline import build
from cuetune.errors import ConfigError
from cuetune.prompt.batch import collate

REVIEW = "review : {text} sentiment : {answer}"
QUESTION = "question : {text} sentiment : {answer}"
PLAIN = "{text} sentiment : {answer}"
LABELS = ["negative", "positive"]
TEXTS = ["the movie was great", "the food was awful and dull", "a very poor day", "lovely phone"]


def _mixture(tiny_dirs, toy_data, out, family="causal", **method):
    raw = toy_config(tiny_dirs[family], toy_data, out, prompt={"template": PLAIN},
                     method={"name": "mixture", **method})
    raw["train"].update(lr=0.05, max_steps=30)
    return raw


@pytest.mark.parametrize("family", ["causal", "gpt2", "masked"])
def test_the_prior_goes_to_the_prompt_that_unlocks_the_skill(tiny_dirs, toy_data, tmp_path, family):
    raw = _mixture(tiny_dirs, toy_data, tmp_path / "run", family, prompts=[QUESTION, PLAIN, REVIEW])
    raw["train"].update(lr=0.1, max_steps=60)  # hard prompts: only the prior trains
    manifest = cuetune.train(raw)
    prior = manifest.metrics["test"]["prior"]
    assert prior[0] < 0.15, prior  # the prompt that answers the opposite
    if family != "masked":  # the tiny BERT answers the sentiment with no trigger too (test_contract)
        assert prior[2] == max(prior) and prior[2] > 0.6, prior
        assert manifest.metrics["test"]["prior_entropy"] < math.log(3) - 0.2
    assert manifest.metrics["test"]["accuracy"] >= 0.9
    model = cuetune.load(tmp_path / "run")
    assert model.predict(TEXTS) == cuetune.load(tmp_path / "run").predict(TEXTS)
    assert [p["label"] for p in model.predict(TEXTS)] == ["positive", "negative", "negative", "positive"]


def _alone(pipe, template, examples, soft=None):
    """p(y | x, phi) from a pipeline of that one prompt (a soft run given `soft` as its prompt)."""
    raw = pipe.config.model_dump()
    raw["prompt"]["template"] = template
    raw["method"] = {"name": "soft" if soft is not None else "zero-shot"}
    alone = build(validate(raw), LABELS, loaded=pipe.loaded)
    if soft is not None:
        with torch.no_grad():
            alone.method.soft.prompt.copy_(soft)
    return alone.label_probs(alone.encoder.encode(examples))  # [N, L]


@pytest.mark.parametrize("objective", ["marginal", "expected"])
def test_both_objectives_equal_hand_computations(tiny_dirs, toy_data, tmp_path, objective):
    soft = "{soft:3} " + PLAIN
    raw = _mixture(tiny_dirs, toy_data, tmp_path / "run", prompts=[REVIEW, soft], objective=objective,
                   entropy=0.3)
    pipe = build(validate(raw), LABELS)
    with torch.no_grad():
        pipe.method.prior_logits.copy_(torch.tensor([0.4, -0.7]))
    examples = [Example(t, None, i % 2) for i, t in enumerate(TEXTS)]
    p = torch.stack([_alone(pipe, REVIEW, examples),
                     _alone(pipe, soft, examples, pipe.method.blocks["1"].prompt)], 1)  # [N, 2, L]
    prior = torch.tensor([0.4, -0.7]).softmax(0)  # [2]
    gold = torch.tensor([e.label for e in examples])
    p_gold = p[torch.arange(len(examples)), :, gold]  # [N, 2]
    if objective == "marginal":
        want = -(p_gold * prior).sum(1).log().mean()
    else:
        want = -(p_gold.log() * prior).sum(1).mean()
    want = want - 0.3 * -(prior * prior.log()).sum()  # the entropy guard
    batch = collate(pipe.encoder.encode(examples), pipe.loaded.tokenizer.pad_token_id)
    pipe.model.eval()
    got = pipe.objective.loss(pipe.model, batch, 0.0)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    mixed = pipe.label_probs(pipe.encoder.encode(examples))  # prediction: always the mixture
    torch.testing.assert_close(mixed, (p * prior[None, :, None]).sum(1), atol=1e-5, rtol=1e-5)


def test_the_expected_cost_bounds_the_marginal_likelihood(tiny_dirs, toy_data, tmp_path):
    """Jensen: E_phi[-log p] >= -log E_phi[p], with equality only when the prompts agree."""
    losses = {}
    for objective in ("marginal", "expected"):
        pipe = build(validate(_mixture(tiny_dirs, toy_data, tmp_path / objective, prompts=[REVIEW, QUESTION],
                                       objective=objective)), LABELS)
        batch = collate(pipe.encoder.encode([Example(t, None, i % 2) for i, t in enumerate(TEXTS)]), 0)
        losses[objective] = pipe.objective.loss(pipe.model.eval(), batch, 0.0).item()
    assert losses["expected"] > losses["marginal"] + 0.1, losses


def test_soft_copies_and_a_gate_train_save_and_load(tiny_dirs, toy_data, tmp_path):
    raw = _mixture(tiny_dirs, toy_data, tmp_path / "run", copies=3, num_tokens=4, prior="gate",
                   entropy=0.01)
    manifest = cuetune.train(raw)
    pipe = cuetune.load(tmp_path / "run").pipe
    blocks = [b.prompt for b in pipe.method.blocks.values()]
    assert len(blocks) == 3 and not torch.equal(blocks[0], blocks[1]), "each copy has its own prompt"
    assert pipe.method.gate.weight.abs().sum() > 0, "the gate trained"
    prior = manifest.metrics["test"]["prior"]
    assert len(prior) == 3 and sum(prior) == pytest.approx(1, abs=1e-4)
    assert manifest.metrics["test"]["accuracy"] >= 0.75
    assert cuetune.load(tmp_path / "run").predict(TEXTS) == cuetune.load(tmp_path / "run").predict(TEXTS)


@pytest.mark.parametrize(("method", "extra", "match"), [
    ({"prompts": [REVIEW]}, {}, "at least two prompts"),
    ({"copies": 2}, {}, "copies of a hard template are the same prompt"),
    ({"prompts": [REVIEW, "review : {text} sentiment :{answer}"]}, {}, "follow a space in one prompt"),
    ({"prompts": [REVIEW, "{text} {text_pair} {answer}"]}, {}, "same inputs"),
    ({"prompts": [REVIEW, "{text"]}, {}, r"method\.prompts\[1\]"),
    ({"prompts": [REVIEW, QUESTION], "prior": "uniform", "entropy": 0.1}, {}, "prior is uniform"),
    ({"prompts": [REVIEW, QUESTION]}, {"prompt": {"multi_token": "chain"}}, "chain"),
    ({"prompts": ["{soft:2} " + REVIEW], "copies": 2, "num_tokens": 4}, {},
     r"method\.num_tokens: has no effect"),
    ({"prompts": [REVIEW, QUESTION]}, {"prompt": {"demonstrations": {"select": "random"}}}, "demonstrations"),
    ({"prompts": [REVIEW, QUESTION], "objective": "expected"}, {"prompt": {"calibrate": True}},
     "expected-cost objective trains each prompt's own uncalibrated scores"),
])
def test_settings_that_cannot_work_are_refused(tiny_dirs, toy_data, tmp_path, method, extra, match):
    raw = _mixture(tiny_dirs, toy_data, tmp_path / "run", **method)
    for key, value in extra.items():
        raw[key].update(value)
    with pytest.raises(ConfigError, match=match):
        cuetune.train(raw)
    assert not (tmp_path / "run" / "adapter.safetensors").exists()


def test_each_prompts_rows_share_their_own_first_tokens(tiny_dirs, toy_data, tmp_path, monkeypatch):
    """Two soft prompts on one template: their rows start with the same token ids under
    different embeddings, so each group keeps its own shared keys (and memo); every component
    scores what its prompt scores alone."""
    from cuetune.families import fastpath

    soft = "{soft:3} " + REVIEW
    pipe = build(validate(_mixture(tiny_dirs, toy_data, tmp_path / "run", prompts=[soft], copies=2)), LABELS)
    calls = []
    real = fastpath.run_groups
    monkeypatch.setattr(fastpath, "run_groups", lambda m, i: calls.append(i.row_groups) or real(m, i))
    examples = [Example(t) for t in TEXTS]
    batch = collate(pipe.encoder.encode(examples), pipe.loaded.tokenizer.pad_token_id)
    with pipe.model.inference():  # with the memo of shared keys, as prediction runs
        pipe.model(batch)
        pipe.model(batch)  # the second time from the memo
    logp, prior = pipe.method.last
    assert calls and [int(n) for _, n, _ in calls[0]] == [6, 6]  # [BOS], 3 soft tokens, "review :"
    for m in range(2):
        alone = _alone(pipe, soft, examples, pipe.method.blocks[str(m)].prompt)
        torch.testing.assert_close(logp[:, m].exp(), alone, atol=1e-5, rtol=1e-5)


def test_an_inputs_rows_share_the_input_when_it_comes_first(tiny_dirs, toy_data, tmp_path, monkeypatch):
    """`{text} <prompt> {answer}`: the M rows of an input start with the same tokens, so the input
    runs once and the prompts after it; every component scores what its prompt scores alone."""
    from cuetune.families import fastpath

    prompts = [PLAIN, "{text} review : {answer}", "{text} it is {answer}"]
    pipe = build(validate(_mixture(tiny_dirs, toy_data, tmp_path / "run", prompts=prompts)), LABELS)
    calls = []
    real = fastpath.run_groups
    monkeypatch.setattr(fastpath, "run_groups", lambda m, i: calls.append(i.row_groups) or real(m, i))
    examples = [Example(t) for t in TEXTS]
    items = pipe.encoder.encode(examples)
    with pipe.model.inference():
        pipe.model(collate(items, pipe.loaded.tokenizer.pad_token_id))
    logp, _ = pipe.method.last
    groups = calls[0]
    assert [g[0].tolist() for g in groups] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    tok = pipe.loaded.tokenizer
    assert [g[1] for g in groups] == [1 + len(tok(t, add_special_tokens=False)["input_ids"]) for t in TEXTS]
    for m, template in enumerate(prompts):
        torch.testing.assert_close(logp[:, m].exp(), _alone(pipe, template, examples), atol=1e-5, rtol=1e-5)


def test_a_calibrated_mixture_trains_and_predicts_calibrated(tiny_dirs, toy_data, tmp_path):
    """Calibration divides the mixture's prediction by its content-free distribution, in the
    loss as at prediction (the content-free rows run through the same views and groups)."""
    raw = _mixture(tiny_dirs, toy_data, tmp_path / "run", prompts=["{soft:2} " + REVIEW], copies=2)
    raw["prompt"]["calibrate"] = True
    manifest = cuetune.train(raw)
    test = manifest.metrics["test"]
    assert set(test["content_free"]) == {"negative", "positive"} and test["accuracy"] >= 0.75


def _alone_with(pipe, template, words, calibrate, examples):
    """p(y | x, phi) of one prompt with its own words and calibration, as zero-shot."""
    raw = pipe.config.model_dump()
    raw["prompt"].update(template=template, verbalizer=words, calibrate=calibrate)
    raw["method"] = {"name": "zero-shot"}
    alone = build(validate(raw), LABELS, loaded=pipe.loaded)
    return alone.label_probs(alone.encoder.encode(examples))  # [N, L]


@pytest.mark.parametrize("family", ["causal", "masked"])
def test_prompts_with_their_own_words_and_calibration_equal_each_alone(tiny_dirs, toy_data, tmp_path,
                                                                      family):
    """A search's top prompts keep the words and calibration dev chose for each: the mixture's
    prediction is the prior-weighted mean of each prompt's own (calibrated) distribution, and
    hard prompts under a uniform prior train nothing, so the run only evaluates."""
    words = [{"negative": "bad", "positive": "good"}, None,
             {"negative": ["awful", "poor"], "positive": "great"}]
    entries = [{"template": REVIEW, "verbalizer": words[0], "calibrate": True}, QUESTION,
               {"template": "review :{text} sentiment :{answer}", "verbalizer": words[2]}]
    raw = _mixture(tiny_dirs, toy_data, tmp_path / "run", family, prompts=entries, prior="uniform")
    raw["prompt"]["verbalizer"] = {"negative": "negative", "positive": "positive"}
    pipe = build(validate(raw), LABELS)
    assert not pipe.method.trains
    examples = [Example(t, None, i % 2) for i, t in enumerate(TEXTS)]
    p = torch.stack([_alone_with(pipe, REVIEW, words[0], True, examples),
                     _alone_with(pipe, QUESTION, raw["prompt"]["verbalizer"], False, examples),
                     _alone_with(pipe, "review :{text} sentiment :{answer}", words[2], False, examples)], 1)
    mixed = pipe.label_probs(pipe.encoder.encode(examples))
    torch.testing.assert_close(mixed, p.mean(1), atol=1e-5, rtol=1e-5)
    manifest = cuetune.train(raw)  # evaluates only; saves and loads like any run
    assert manifest.training is None and "test" in manifest.metrics
    again = cuetune.load(tmp_path / "run").predict(TEXTS)
    assert [r["label"] for r in again] == [LABELS[i] for i in mixed.argmax(-1).tolist()]


@pytest.mark.parametrize("entry, extra, match", [
    ({"template": REVIEW, "verbalizer": {"negative": "bad"}}, {}, r"method\.prompts\[0\]\.verbalizer"),
    ({"template": REVIEW, "calibrate": True}, {"calibrate": True}, "use one of the two"),
    ({"template": REVIEW, "verbalizer": {"negative": "bad", "positive": "good"}}, {"multi_token": "max"},
     "per-prompt words"),
])
def test_per_prompt_words_that_cannot_work_are_refused(tiny_dirs, toy_data, tmp_path, entry, extra, match):
    raw = _mixture(tiny_dirs, toy_data, tmp_path / "run", prompts=[entry, QUESTION])
    raw["prompt"].update(extra)
    with pytest.raises(ConfigError, match=match):
        cuetune.train(raw)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
