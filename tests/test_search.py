"""Prompt search (`cuetune search`): each searcher finds the prompt that unlocks a tiny model's
planted skill (conftest.pretrain: after "review :" the model answers the sentiment, after
"question :" the opposite; without a trigger it is near chance) and beats a random prompt on
dev; token scoring with the input's cache equals the full forward; the text a token prompt
becomes scores as its tokens did; a resumed search equals an uninterrupted one; the test split
is never read."""

from __future__ import annotations

import json
import logging
import shutil
import sys

import pytest
import torch
import yaml
from conftest import toy_config, toy_vocab

import cuetune
import cuetune.search as search
from cuetune import cli
from cuetune.config import validate
from cuetune.data.splits import load_splits
from cuetune.engine import progress
from cuetune.errors import ConfigError
from cuetune.methods import REGISTRY
from cuetune.runs.config_file import load as load_config
from cuetune.search.candidates import Candidate
from cuetune.search.stage import Stage
from cuetune.search.tokens import TokenPrompts, search_vocab

PLAIN = "{text} sentiment : {answer}"
WRONG = "question : {text} sentiment : {answer}"
"""The trigger that makes the tiny models answer the opposite sentiment: dev near 0."""
WORDS = {"negative": "negative", "positive": "positive"}


def _config(tmp_path, model_dir, data, search_section, prompt=None, data_update=None):
    raw = toy_config(model_dir, data, tmp_path / "run", method={"name": "zero-shot"},
                     prompt=prompt or {"template": PLAIN})
    raw["data"].update(data_update or {})
    raw["search"] = {"out": str(tmp_path / "search"), **search_section}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _run(path, overrides=()):
    cfg, settings = search.load_config(path, list(overrides))
    return search.run(cfg, settings)


def _records(folder):
    return [json.loads(line) for line in (folder / "prompts.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind", ["causal", "masked", "seq2seq"])
def test_pool_finds_the_trigger_template(tmp_path, tiny_dirs, toy_data, kind):
    path = _config(tmp_path, tiny_dirs[kind], toy_data,
                   {"searchers": ["pool"], "calibrate": "off",
                    "pool": {"input_cues": ["question :", "review :"], "answer_cues": ["sentiment :"]}},
                   prompt={"template": WRONG, "verbalizer": WORDS})
    summary = _run(path)
    mine = next(r for r in _records(tmp_path / "search") if r["how"] == "your config's prompt")
    assert mine["dev"] < 0.3, "the start prompt reverses the answers"
    assert summary["best"]["dev"] >= 0.9
    assert "question :" not in summary["best"]["prompt"]["template"]
    if kind == "causal":  # without a trigger the tiny decoder is near chance
        assert "review :" in summary["best"]["prompt"]["template"]
    assert (tmp_path / "search" / "best.yaml").is_file() and (tmp_path / "search" / "search.png").is_file()


@pytest.mark.parametrize("kind", ["causal", "masked"])
def test_label_search_finds_words_for_the_skill(tmp_path, tiny_dirs, toy_data, kind):
    """With the trigger template but useless words, the label search finds words that read
    the model's answer; dev beats the given words by far."""
    # baselines off: the generic ones read the label names, which unlock the skill by themselves
    path = _config(tmp_path, tiny_dirs[kind], toy_data,
                   {"searchers": ["labels"], "calibrate": "off", "baselines": False},
                   prompt={"template": "review : {text} sentiment : {answer}",
                           "verbalizer": {"negative": "movie", "positive": "day"}})
    summary = _run(path)
    words = summary["best"]["prompt"]["verbalizer"]
    assert summary["best"]["dev"] >= 0.9 > summary["best_baseline"]["dev"] + 0.2
    assert words != {"negative": ["movie"], "positive": ["day"]}


def test_an_encoder_warning_is_printed_once_per_search(tmp_path, tiny_dirs, toy_data, caplog):
    """Dev sentences cut at data.max_length are cut under every candidate: the search says so
    once and counts the repeats, instead of one line per candidate."""
    path = _config(tmp_path, tiny_dirs["causal"], toy_data, {"searchers": ["pool"], "calibrate": "off"},
                   data_update={"max_length": 8})
    with caplog.at_level(logging.WARNING):
        summary = _run(path)
    cut = [r for r in caplog.records if "were truncated" in r.getMessage()]
    repeats = [r for r in caplog.records if "were not repeated" in r.getMessage()]
    assert len(cut) == 1 and len(repeats) == 1
    assert 5 <= int(repeats[0].getMessage().split()[0]) < summary["candidates"]  # 11 of 32 here
    assert logging.getLogger("cuetune.prompt.encoder").filters == []


@pytest.mark.parametrize("tail,starts", [("", True), (" the", True), (",", True), ("\n", True),
                                         ("ing", False), ("3", False), ("面", True), ("の", True),
                                         ("ไทย", True), ("é", False)])
def test_a_word_starts_after_a_space_punctuation_or_an_unspaced_script(tail, starts):
    """The label filter keeps a token when the model expects a new word after it. In Chinese,
    Japanese or Thai the next character starts one: without that every Chinese label word
    was dropped as a fragment (on Gemma 正面 read 0.19)."""
    from cuetune.search.labels import starts_word

    assert starts_word(tail) is starts


def test_label_search_warns_when_your_words_lie_past_vocab_top(tmp_path, tiny_dirs, toy_data):
    """On Gemma 正面 is id 120828 and the default cap 10,000: the search must say that it offers
    words from another part of the vocabulary than yours, and how to widen it."""
    path = _config(tmp_path, tiny_dirs["causal"], toy_data,
                   {"searchers": ["labels"], "calibrate": "off", "labels": {"vocab_top": 20}},
                   prompt={"template": "review : {text} sentiment : {answer}", "verbalizer": WORDS})
    warned = [w for w in _run(path)["warnings"] if "past search.labels.vocab_top=20" in w]
    assert len(warned) == 1 and f"vocab_top={len(toy_vocab())} (the whole" in warned[0]


@pytest.mark.parametrize("searcher,kind,position", [("rl", "causal", "before"), ("rl", "masked", "before"),
                                                     ("rl", "seq2seq", "before"),
                                                     ("gradient", "causal", "before")])
def test_token_searchers_unlock_the_skill(tmp_path, tiny_dirs, toy_data, searcher, kind, position):
    """RL and gradient search write two tokens before the input (after the reversing trigger);
    their dev-chosen prompt beats a random prompt (the `random` searcher with one sample)."""
    tokens = {"num_tokens": 2, "position": position, "vocab_top": 60, "batch_size": 16}
    section = {"searchers": [searcher, "random"], "calibrate": "off", "chain": False, "baselines": False,
               searcher: {**tokens, "steps": 30 if searcher == "rl" else 10, "samples": 8, "eval_every": 5},
               "random": {**tokens, "steps": 1, "samples": 1, "eval_every": 1}}
    # causal, seq2seq: the reversing trigger, undone by tokens after it; masked (right without
    # a trigger): the words reversed, which the reversing trigger "question :" puts right
    prompt = ({"template": WRONG, "verbalizer": WORDS} if kind != "masked" else
              {"template": PLAIN, "verbalizer": {"negative": "positive", "positive": "negative"}})
    path = _config(tmp_path, tiny_dirs[kind], toy_data, section, prompt=prompt)
    summary = _run(path)
    found = summary["stages"][f"1-{searcher}"]["best_dev"]
    assert found >= 0.9
    assert found > summary["best_baseline"]["dev"] + 0.2
    assert found > summary["stages"]["2-random"]["best_dev"]


def _token_prompts(tmp_path, model_dir, data, template, position):
    cfg = validate(toy_config(model_dir, data, tmp_path, method={"name": "zero-shot"},
                              prompt={"template": template}))
    splits = load_splits(cfg.data)
    from cuetune.engine.pipeline import load_for
    from cuetune.search.candidates import SearchLog
    from cuetune.search.scoring import Scorer
    from cuetune.search.settings import SearchSettings

    loaded = load_for(cfg.model)
    slog = SearchLog(tmp_path / "p.jsonl", splits.labels)
    scorer = Scorer(cfg, loaded, splits.labels, splits.dev, slog, (False,))
    stage = Stage("t", cfg, SearchSettings(), splits.labels, splits.train, scorer, slog, tmp_path, 0, loaded)
    best = Candidate.from_prompt(cfg.prompt.model_dump(), splits.labels)
    return TokenPrompts(stage, best, 3, position), splits, scorer


@pytest.mark.parametrize("kind", ["causal", "gemma3", "gpt2"])
def test_cached_token_scoring_equals_the_full_forward(tmp_path, tiny_dirs, toy_data, kind):
    prompts, splits, _ = _token_prompts(tmp_path, tiny_dirs[kind], toy_data,
                                        "review : {text} sentiment : {answer}", "after")
    assert prompts.cached
    vocab = search_vocab(prompts.tok, 60)
    ids = vocab[torch.randint(len(vocab), (5, 3), generator=torch.Generator().manual_seed(0))]
    items = prompts.encoder.encode(splits.dev[:7])
    cached = prompts.label_logprobs(ids, items)
    with torch.inference_mode():
        full = prompts.from_embeddings(prompts.embedding(ids), items)
    assert cached.shape == (5, 7, 2)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("position", ["after", "before"])
def test_a_token_prompt_scores_as_its_text(tmp_path, tiny_dirs, toy_data, position):
    """The candidate a searcher logs (text) gets the probabilities its tokens got."""
    prompts, splits, scorer = _token_prompts(tmp_path, tiny_dirs["causal"], toy_data,
                                             "review : {text} sentiment : {answer}", position)
    vocab = search_vocab(prompts.tok, 60)
    ids = vocab[torch.tensor([[3, 10, 20]])]
    from_tokens = prompts.label_logprobs(ids, prompts.encoder.encode(splits.dev)).exp()[0]
    cand = prompts.text(ids[0].tolist())
    from_text, _ = scorer.probs(cand, splits.dev)
    torch.testing.assert_close(from_tokens, from_text, atol=1e-5, rtol=1e-5)


def test_resumed_search_equals_an_uninterrupted_one(tmp_path, tiny_dirs, toy_data, monkeypatch):
    section = {"searchers": ["labels", "rl"], "labels": {"top_k": 4},
               "rl": {"steps": 12, "eval_every": 4, "num_tokens": 2, "vocab_top": 60, "samples": 4,
                      "batch_size": 8}}
    whole = _config(tmp_path / "a", tiny_dirs["causal"], toy_data, section)
    _run(whole)
    cut = _config(tmp_path / "b", tiny_dirs["causal"], toy_data, section)
    original = Stage.advance

    def crash(self, n=1):
        original(self, n)
        if self.name == "2-rl" and self.done == 9:
            raise KeyboardInterrupt

    monkeypatch.setattr(Stage, "advance", crash)
    with pytest.raises(KeyboardInterrupt):
        _run(cut)
    monkeypatch.setattr(Stage, "advance", original)
    _run(cut)

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert strip(_records(tmp_path / "b" / "search")) == strip(_records(tmp_path / "a" / "search"))


def test_search_never_reads_the_test_split(tmp_path, tiny_dirs, toy_data):
    data = {**toy_data, "test": tmp_path / "missing-test.jsonl"}
    path = _config(tmp_path, tiny_dirs["causal"], data, {"searchers": ["labels"], "labels": {"top_k": 3}})
    assert _run(path)["best"]["dev"] > 0


def test_best_yaml_trains_to_the_searched_dev_score(tmp_path, tiny_dirs, toy_data):
    import cuetune

    path = _config(tmp_path, tiny_dirs["causal"], toy_data, {"searchers": ["labels"], "labels": {"top_k": 4}})
    summary = _run(path)
    manifest = cuetune.train(_best_cfg(tmp_path))
    assert manifest.score("dev", "accuracy") == pytest.approx(summary["best"]["dev"], abs=1e-6)


def _best_cfg(tmp_path):
    from cuetune.runs.config_file import load

    return load(tmp_path / "search" / "best.yaml", [f"output_dir={tmp_path / 'best-run'}"])


def test_clear_errors(tmp_path, tiny_dirs, toy_data):
    path = _config(tmp_path, tiny_dirs["causal"], toy_data, {"searchers": ["labels", "rlprompt"]})
    with pytest.raises(ConfigError, match="search.searchers: 'rlprompt' is not a searcher"):
        search.load_config(path)
    path = _config(tmp_path, tiny_dirs["causal"], toy_data, {"labels": {"top_k": 0}})
    with pytest.raises(ConfigError, match="search.labels.top_k"):
        search.load_config(path)
    path = _config(tmp_path, tiny_dirs["causal"], toy_data, {"searchers": ["labels"]})
    _run(path, ["search.labels.top_k=2"])
    with pytest.raises(ConfigError, match="holds a different search"):
        _run(path, ["search.labels.top_k=3"])
    resumed = _run(path, ["search.labels.top_k=2", "search.rl.steps=7", "search.combine=2"])  # same search
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "search", moved)  # a copied folder resumes where it now is
    again = _run(path, ["search.labels.top_k=2", "search.combine=2", f"search.out={moved}"])
    assert again["scorings"] == resumed["scorings"]  # only the label stage's ranking pass, no candidate
    gen = _config(tmp_path / "g", tiny_dirs["causal"], toy_data, {},
                  prompt={"template": "{text} {answer}"}, data_update={"task": "generation"})
    with pytest.raises(ConfigError, match="generation"):
        search.load_config(gen)


def test_demonstrations_are_searched_and_best_yaml_trains_with_them(tmp_path, tiny_dirs, toy_data):
    import cuetune

    path = _config(tmp_path, tiny_dirs["causal"], toy_data,
                   {"searchers": ["demos"], "calibrate": "off",
                    "demos": {"options": [{"select": "random", "per_class": 1}]}},
                   prompt={"template": "review : {text} sentiment : {answer}", "verbalizer": WORDS})
    _run(path)
    rows = _records(tmp_path / "search")
    assert rows[-1]["stage"] == "1-demos"
    assert rows[-1]["prompt"]["demonstrations"] == {"select": "random", "per_class": 1}
    best = yaml.safe_load((tmp_path / "search" / "best.yaml").read_text())
    best["prompt"]["demonstrations"] = rows[-1]["prompt"]["demonstrations"]
    best["output_dir"] = str(tmp_path / "best-run")
    manifest = cuetune.train(best)
    assert manifest.score("dev", "accuracy") == pytest.approx(rows[-1]["dev"], abs=1e-6)
    bad = _config(tmp_path / "bad", tiny_dirs["causal"], toy_data,
                  {"searchers": ["demos"], "demos": {"options": [{"select": "nearest"}]}})
    with pytest.raises(ConfigError, match=r"search.demos.options\[0\].select"):
        _run(bad)


def test_calibrated_candidates_score_as_a_calibrated_run(tmp_path, tiny_dirs, toy_data):
    """The search's calibrated variant of a candidate is what `prompt.calibrate: true` gives."""
    path = _config(tmp_path, tiny_dirs["masked"], toy_data, {"searchers": [], "calibrate": "both"},
                   prompt={"template": WRONG, "verbalizer": WORDS})
    _run(path)
    rows = {r["prompt"]["calibrate"]: r for r in _records(tmp_path / "search")}
    from cuetune.runs.train import train

    for on in (False, True):
        cfg = toy_config(tiny_dirs["masked"], toy_data, tmp_path / f"run-{on}", method={"name": "zero-shot"},
                         prompt={"template": WRONG, "verbalizer": WORDS, "calibrate": on})
        assert train(cfg).score("dev", "accuracy") == pytest.approx(rows[on]["dev"], abs=1e-6)


def test_sentence_pairs_are_searched(tmp_path, tiny_dirs, toy_data):
    """A pair task: the pool writes pair patterns and the label search reads both slots."""
    import json as _json

    pairs = {}
    for split, src in toy_data.items():
        rows = [_json.loads(x) for x in src.read_text().splitlines()]
        pairs[split] = tmp_path / f"{split}-pairs.jsonl"
        lines = [{"text": r["text"], "pair": "the day", "label": r["label"]} for r in rows]
        pairs[split].write_text("".join(_json.dumps(r) + "\n" for r in lines))
    path = _config(tmp_path, tiny_dirs["causal"], pairs,
                   {"searchers": ["labels", "pool"], "labels": {"top_k": 4}, "pool": {"max_candidates": 8}},
                   prompt={"template": "review : {text} {text_pair} sentiment : {answer}",
                           "verbalizer": WORDS},
                   data_update={"text_pair_column": "pair"})
    summary = _run(path)
    templates = [r["prompt"]["template"] for r in _records(tmp_path / "search") if r["stage"] == "2-pool"]
    assert templates and all("{text_pair}" in t for t in templates)
    assert summary["best"]["dev"] >= 0.9


def test_kfold_selection_scores_on_held_out_folds(tmp_path, tiny_dirs, toy_data):
    """k-fold over train+dev: a fixed prompt's score is its mean over the stratified folds
    (equal folds here, so its accuracy on all 88 examples); label words are learned on all the
    data and, for scoring each fold, without it; a rerun resumes with nothing scored twice."""
    from cuetune.engine.pipeline import build

    section = {"searchers": ["labels", "pool"], "selection": "kfold", "folds": 4, "calibrate": "off",
               "labels": {"top_k": 4, "assignments": 3, "words": {"negative": ["poor"]}},
               "pool": {"max_candidates": 3}}
    prompt = {"template": "review : {text} sentiment : {answer}", "verbalizer": {"negative": "bad",
                                                                                 "positive": "good"}}
    path = _config(tmp_path, tiny_dirs["causal"], toy_data, section, prompt=prompt)
    summary = _run(path)
    assert summary["selection"] == "4-fold over train+dev" and summary["dev_examples"] == 88
    rows = _records(tmp_path / "search")
    base = next(r for r in rows if r["how"] == "your config's prompt")
    cfg = validate(toy_config(tiny_dirs["causal"], toy_data, tmp_path / "r", method={"name": "zero-shot"},
                              prompt=prompt))
    splits = load_splits(cfg.data)
    pipe = build(cfg, splits.labels)
    every = splits.train + splits.dev
    predicted = pipe.label_probs(pipe.encoder.encode(every)).argmax(-1).tolist()
    pooled = sum(p == e.label for p, e in zip(predicted, every, strict=True)) / len(every)
    assert base["dev"] == pytest.approx(pooled, abs=1e-6)
    learned = [r for r in rows if r["stage"] == "1-labels" and r["how"] != "your label words"]
    assert learned and all(len(r["fold_words"]) == 4 for r in learned)
    best_words = max(rows[:len([r for r in rows if r["stage"] != "2-pool"])], key=lambda r: r["dev"])
    pooled_rows = [r for r in rows if r["stage"] == "2-pool"]
    assert pooled_rows and all(r.get("fold_words") == best_words.get("fold_words") for r in pooled_rows)
    assert "fold_std" in learned[0]["metrics"]
    before = len(rows)
    _run(path)
    assert len(_records(tmp_path / "search")) == before


def test_kfold_refuses_token_searchers_and_folds_needs_kfold(tmp_path, tiny_dirs, toy_data):
    path = _config(tmp_path, tiny_dirs["causal"], toy_data, {"searchers": ["rl"], "selection": "kfold"})
    with pytest.raises(ConfigError, match="kfold would run 'rl' once per fold"):
        search.load_config(path)
    path = _config(tmp_path, tiny_dirs["causal"], toy_data, {"searchers": ["labels"], "folds": 5})
    with pytest.raises(ConfigError, match="search.folds: only used with selection: kfold"):
        search.load_config(path)


def test_the_search_command_prints_the_best_prompt_and_how_to_train_it(tmp_path, tiny_dirs, toy_data, capsys):
    from test_artifacts_cli import run_cli

    path = _config(tmp_path, tiny_dirs["causal"], toy_data, {"searchers": ["labels"], "labels": {"top_k": 3}},
                   prompt={"template": WRONG, "verbalizer": WORDS})
    code, out, _ = run_cli(["search", str(path), "--out", str(tmp_path / "cli-search")], capsys)
    assert code == 0
    assert f"cuetune train {tmp_path / 'cli-search' / 'best.yaml'}" in out
    summary = json.loads((tmp_path / "cli-search" / "summary.json").read_text())
    assert f'"best_dev": {summary["best"]["dev"]}' in out.replace("\n", " ").replace("  ", " ")
    code, _, err = run_cli(["search", str(path), "--set", "search.searchers=[nope]"], capsys)
    assert code == 2 and "'nope' is not a searcher" in err


def test_token_search_needs_the_text_slot_spelled_out():
    from cuetune.search.tokens import split_template

    assert split_template("review : {text} sentiment : {answer}", "after") == ("review : {text}",
                                                                               " sentiment : {answer}")
    assert split_template("review : {text} {answer}", "before") == ("review : ", "{text} {answer}")
    with pytest.raises(ConfigError, match="write it as {text}"):
        split_template("review : {text_a} {answer}", "before")


@pytest.mark.slow  # a search, then training runs
def test_search_and_train_print_progress_lines_when_no_terminal_shows_a_bar(
        tmp_path, tiny_dirs, toy_data, capsys, monkeypatch):
    """In a log file `cuetune search` said nothing for minutes: a line per stage now, and long
    loops (here: every loop, with the interval at 0) a line every few seconds."""
    monkeypatch.setattr(progress, "EVERY", 0.0)
    path = _config(tmp_path, tiny_dirs["causal"], toy_data, {"searchers": ["labels"], "calibrate": "off"})
    monkeypatch.setattr(sys, "argv", ["cuetune", "search", str(path)])
    with pytest.raises(SystemExit) as done:
        cli.main()
        raise SystemExit(0)
    err = capsys.readouterr().err
    assert done.value.code == 0, err
    assert "search baseline: done, best dev" in err and "search 1-labels: " in err, err
    assert "search 1-labels: done" in err and "inputs scored: " in err
    run = tmp_path / "search" / "best.yaml"
    monkeypatch.setattr(sys, "argv", ["cuetune", "train", str(run), "--set", "train.max_steps=4", "--set",
                                      f"output_dir={tmp_path / 'trained'}", "--set", "method.name=soft"])
    with pytest.raises(SystemExit):
        cli.main()
        raise SystemExit(0)
    assert "training steps: 4 of 4" in capsys.readouterr().err


EXTRA = {"mixture": ["method.copies=2", "method.num_tokens=4"]}
"""What a method needs beyond its name to run at all (a mixture of one prompt is refused)."""


@pytest.mark.slow  # a search, then training runs
def test_best_yaml_trains_as_printed_and_with_every_method(tmp_path, tiny_dirs, toy_data):
    """The search's hand-off: `cuetune train best.yaml` and `--set method.name=X` for every
    method. best.yaml used to dump every default key, which the moot-key check then refused
    (`method.projection_hidden: has no effect with method prefix`), and another method name
    met prefix's keys (`method.num_tokens: unknown key` for zero-shot)."""
    raw = toy_config(tiny_dirs["causal"], toy_data, tmp_path / "run",
                     method={"name": "prefix", "num_tokens": 4}, prompt={"template": PLAIN})
    raw["train"] = {"max_steps": 2, "eval_every": 1, "batch_size": 8, "progress": False}
    raw["search"] = {"out": str(tmp_path / "search"), "searchers": ["labels"], "calibrate": "off"}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    _run(path)
    best = tmp_path / "search" / "best.yaml"
    printed = best.read_text(encoding="utf-8").splitlines()[1]
    assert printed == f"# Train it: cuetune train {best}"
    assert cuetune.train(load_config(best, [f"output_dir={tmp_path / 'as-printed'}"])).metrics["test"]
    for name in REGISTRY:
        sets = [f"method.name={name}", f"output_dir={tmp_path / name}", *EXTRA.get(name, [])]
        assert cuetune.train(load_config(best, sets)).metrics["test"]["n"] > 0, name


@pytest.mark.slow  # a search, then a training run per method
def test_a_combined_best_yaml_trains_as_printed_and_with_every_method(tmp_path, tiny_dirs, toy_data):
    """search.combine's best.yaml (a mixture of the top prompts, each with its own words) trains
    as printed, and `--set method.name=X` drops the mixture's keys X lacks, naming them, and
    trains X on the top prompt."""
    raw = toy_config(tiny_dirs["causal"], toy_data, tmp_path / "run",
                     method={"name": "soft", "num_tokens": 4},
                     prompt={"template": "review : {text} sentiment : {answer}"})
    raw["train"] = {"max_steps": 2, "eval_every": 1, "batch_size": 8, "progress": False}
    variants = ["review : {text} sentiment :{answer}", "review : {text} , sentiment : {answer}"]
    raw["search"] = {"out": str(tmp_path / "search"), "searchers": ["pool"], "combine": 3,
                     "pool": {"templates": variants, "max_candidates": 4, "chat": False}}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    summary = _run(path)
    assert summary["combined"]["chosen"], summary["combined"]
    best = tmp_path / "search" / "best.yaml"
    assert f"# Train it: cuetune train {best}" in best.read_text(encoding="utf-8").splitlines()
    manifest = cuetune.train(load_config(best, [f"output_dir={tmp_path / 'as-printed'}"]))
    assert manifest.method_name == "mixture" and manifest.metrics["test"]["n"] > 0
    for name in REGISTRY:
        sets = [f"method.name={name}", f"output_dir={tmp_path / name}", *EXTRA.get(name, [])]
        assert cuetune.train(load_config(best, sets)).metrics["test"]["n"] > 0, name
