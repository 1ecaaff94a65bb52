"""A user's own task (issue 42): the generic baselines every search scores, label names read as
label words, and the bench's own-task protocol, which runs a named task with no task cues,
no task baselines and no hand label words."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import toy_config
from test_bench import _toy_kshot

import cuetune
import cuetune.search as search
from cuetune.bench import grid, points
from cuetune.data import tasks
from cuetune.errors import ConfigError
from cuetune.search import combination, generic, prior
from cuetune.search.candidates import Candidate, Record
from cuetune.search.stage import best_of

TRIGGER = "review : {text} sentiment : {answer}"
"""The tiny models answer the sentiment after "review :" (conftest.pretrain)."""


@pytest.mark.parametrize("labels, words", [
    (["negative", "positive"], {"negative": ["negative"], "positive": ["positive"]}),
    (["entailment", "not_entailment"], {"entailment": ["entailment"], "not_entailment": ["not entailment"]}),
    (["very-bad", "Good"], {"very-bad": ["very bad"], "Good": ["good"]}),
    (["0", "1"], None),  # codes, not words
    (["POS", "NEG"], None),  # abbreviations
    (["good", "Good"], None),  # two labels would read the same
    (["label_1", "label_2"], None),
])
def test_label_names_are_words_only_where_they_read_as_words(labels, words):
    assert generic.names_as_words(labels) == words


def test_the_baselines_try_your_words_and_the_label_names():
    start = Candidate.from_prompt({"template": "{text} It was {answer}",
                                   "verbalizer": {"negative": "terrible", "positive": "great"}},
                                  ["negative", "positive"])
    got = generic.baselines(start, ["negative", "positive"], pair=False, chat=True,
                            input_cue="Review", answer_cue="Sentiment:")
    prompts = {name: c.prompt() for name, c in got.items()}
    assert prompts["generic Text/Label, your words"]["template"] == "Text: {text}\nLabel: {answer}"
    assert prompts["generic Text/Label, label names"]["verbalizer"] == {"negative": ["negative"],
                                                                        "positive": ["positive"]}
    assert prompts["generic your cues, your words"]["template"] == "Review: {text}\nSentiment: {answer}"
    assert prompts["your template, label names"]["template"] == "{text} It was {answer}"
    chat = prompts["generic chat instruction, label names"]
    assert chat["chat"] and "negative, positive" in chat["instruction"]
    assert chat["verbalizer"]["positive"] == ["positive", "Positive"]
    # codes as labels: only your words, no chat where the model has no chat template
    coded = Candidate.from_prompt({"template": "{text} {answer}", "verbalizer": {"0": "bad", "1": "good"}},
                                  ["0", "1"])
    names = set(generic.baselines(coded, ["0", "1"], pair=True, chat=False))
    assert names == {"generic Text/Label, your words", "generic Answer, your words"}
    assert "{text_pair}" in generic.baselines(coded, ["0", "1"], pair=True, chat=False)[
        "generic Answer, your words"].template


def test_a_search_scores_the_label_names_it_was_never_told_to_try(tmp_path, tiny_dirs, toy_data):
    """Your template with useless words: the generic baseline that reads the label names as
    words unlocks the skill before any searcher runs (today's search would score only yours)."""
    raw = toy_config(tiny_dirs["causal"], toy_data, tmp_path / "run", method={"name": "zero-shot"},
                     prompt={"template": TRIGGER, "verbalizer": {"negative": "movie", "positive": "day"}})
    raw["search"] = {"out": str(tmp_path / "search"), "searchers": [], "calibrate": "off"}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    summary = search.run(*search.load_config(path))
    records = [json.loads(x) for x in (tmp_path / "search" / "prompts.jsonl").read_text().splitlines()]
    mine = next(r for r in records if r["how"] == "your config's prompt")
    assert mine["dev"] < 0.75
    assert summary["best"]["dev"] >= 0.9
    assert summary["best"]["prompt"]["verbalizer"] == {"negative": ["negative"], "positive": ["positive"]}
    assert {r["how"] for r in records} >= {"your template, label names", "generic Text/Label, label names"}


def test_own_task_needs_a_named_task(tmp_path, tiny_dirs, toy_data):
    raw = toy_config(tiny_dirs["causal"], toy_data, tmp_path / "run", method={"name": "zero-shot"})
    raw["search"] = {"out": str(tmp_path / "search"), "own_task": True}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(ConfigError, match="search.own_task: only with search.task"):
        search.load_config(path)


def test_a_named_task_as_your_own_knows_only_its_label_names():
    prompt = generic.own_task_prompt(tasks.get("sst-2"))
    assert prompt == {"template": "Text: {text}\nLabel: {answer}",
                      "verbalizer": {"0": "negative", "1": "positive"}}
    assert generic.own_task_prompt(tasks.get("rte"))["verbalizer"] is None  # its labels are names
    assert "{text_pair}" in generic.own_task_prompt(tasks.get("rte"))["template"]
    assert tasks.get("trec").names["2"] == "abbreviation"
    for name, task in tasks.TASKS.items():  # every classification task can be run as your own
        if task.generate is None:
            labels = task.data["labels"]
            assert task.names is not None or generic.names_as_words(labels) is not None, name
            assert task.names is None or set(task.names) == set(labels), name


def test_the_bench_runs_a_named_task_as_your_own(tiny_dirs, tmp_path):
    """An `own_task` row: the plain prompt with the class names, and a search with no LM-BFF or
    hand baseline and no task cues; the same row without it keeps the task's prompt."""
    _toy_kshot(tmp_path / "data", [13])
    raw = {"model": {"name": str(tiny_dirs["causal"])}, "data_root": str(tmp_path / "data"),
           "tasks": ["sst-2"], "k": [16], "seeds": [13], "output_dir": str(tmp_path / "out"),
           "methods": {"own": {"method": {"name": "zero-shot"}, "own_task": True,
                               "search": {"searchers": ["pool"], "calibrate": "off",
                                          "pool": {"max_candidates": 4, "chat": False}}},
                       "lmbff": {"method": {"name": "zero-shot"}}}}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg, root = grid.load_bench(path)
    own, lmbff = sorted(grid.cells(cfg), key=lambda c: c.method != "own")
    def template(cell):
        return points.run_config(cfg, root, cell, {}, tmp_path / "r")["prompt"]["template"]

    assert template(own) == "Text: {text}\nLabel: {answer}" and template(lmbff) == "{text} It was {answer}"
    chosen, method = points.searched_prompt(cfg, root, own, tmp_path / "out")
    assert method is None  # no search.combine: the row's own method
    [folder] = (tmp_path / "out" / "search" / "sst-2").iterdir()
    how = [json.loads(x)["how"] for x in (folder / "prompts.jsonl").read_text().splitlines()]
    assert "lmbff" not in how and "generic Text/Label, your words" in how
    assert set(chosen["verbalizer"]) == {"0", "1"}
    text = (folder / "prompts.jsonl").read_text()
    assert "terrible" not in text  # no LM-BFF label words
    raw["methods"]["own"]["search"]["own_task"] = True
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="own_task: set by each bench cell"):
        grid.load_bench(path)


def test_the_prior_keeps_real_words_that_lean_toward_their_class():
    keep = prior.build(["0", "1"], {"0": ["negative"], "1": ["positive"]}, "auto", 3.0, True,
                       ["a plain english sentence"], related_top=0.05).keeps
    assert keep(1, "great") and keep(0, "terrible") and keep(0, "worse")
    assert not keep(0, "great") and not keep(1, "terrible")
    assert not keep(0, "voltage") and not keep(0, "improvement")  # issue 42's chance fits
    assert not keep(0, "Michigan") and not keep(1, "Spanish")  # passed nearer-than-the-other alone
    assert not keep(1, "stars") and not keep(0, "Since")
    loose = prior.build(["0", "1"], {"0": ["negative"], "1": ["positive"]}, "auto", 3.0, True,
                        ["a plain english sentence"]).keeps
    assert loose(0, "Since") and loose(1, "stars")  # what the absolute bar adds
    assert not keep(1, "behav") and not keep(0, "lect")  # fragments: not words of the language
    codes = prior.build(["0", "1"], {"0": ["0"], "1": ["1"]}, "auto", 3.0, True, ["text"])
    assert codes.anchors is None and codes.keeps(0, "great")  # nothing to relate the words to
    chinese = prior.build(["0", "1"], {"0": ["差"], "1": ["好"]}, "auto", 3.0, False, ["这家酒店很好"])
    assert chinese.language is None  # no English list for Chinese inputs


def test_found_words_replace_yours_only_past_the_noise():
    start = Candidate.from_prompt({"template": TRIGGER}, ["negative", "positive"])
    found = start.with_words({"negative": ["bad"], "positive": ["good"]})

    def rec(cand, dev, **extra):
        return Record("1-labels", "x", cand, dev, {}, extra=extra)

    mine = rec(start, 0.75)
    near = rec(found, 0.80, needs=0.75 + (0.75 * 0.25 / 32) ** 0.5, start_dev=0.75)
    assert best_of([mine, near]) is mine  # +5 points on 32 sentences: inside one standard error
    far = rec(found, 0.875, needs=near.extra["needs"], start_dev=0.75)
    assert best_of([mine, far]) is far


def test_a_search_reports_what_the_found_words_had_to_beat(tmp_path, tiny_dirs, toy_data):
    raw = toy_config(tiny_dirs["causal"], toy_data, tmp_path / "run", method={"name": "zero-shot"},
                     prompt={"template": TRIGGER, "verbalizer": {"negative": "movie", "positive": "day"}})
    raw["search"] = {"out": str(tmp_path / "search"), "searchers": ["labels"], "calibrate": "off",
                     "baselines": False}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    summary = search.run(*search.load_config(path))
    [report] = summary["label_words"]
    assert report["start_dev"] < 0.75 and report["replaced"] and report["gain"] > 0.2
    assert report["needed"] > report["start_dev"]
    assert summary["best"]["dev"] == report["best_found_dev"] >= 0.9


def _combining_search(tmp_path, tiny_dirs, toy_data, method, combine=3, out="search"):
    raw = toy_config(tiny_dirs["causal"], toy_data, tmp_path / "run", method=method,
                     prompt={"template": TRIGGER, "verbalizer": {"negative": "movie", "positive": "day"}})
    raw["search"] = {"out": str(tmp_path / out), "searchers": ["pool"], "combine": combine,
                     "pool": {"max_candidates": 6, "chat": False, "templates": [
                         "review : {text} sentiment :{answer}", "review : {text} , sentiment : {answer}"]}}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_the_best_few_prompts_combine_and_train_as_printed(tmp_path, tiny_dirs, toy_data):
    """search.combine: best.yaml holds the top prompts with distinct templates, each with its
    own words and calibration, as a uniform mixture that only evaluates (zero-shot); its dev
    score is the one the search reported; single.yaml keeps the single best; the soft method
    trains a soft prompt per member under a learned prior."""
    path = _combining_search(tmp_path, tiny_dirs, toy_data, {"name": "zero-shot"})
    summary = search.run(*search.load_config(path))
    combined = summary["combined"]
    members = [m["prompt"] for m in combined["members"]]
    assert len(members) == 3 and len({m["template"] for m in members}) == 3
    assert members[0] == summary["best"]["prompt"]
    best = yaml.safe_load((tmp_path / "search" / "best.yaml").read_text())
    assert best["method"]["name"] == "mixture" and best["method"]["prior"] == "uniform"
    assert [e["verbalizer"] for e in best["method"]["prompts"]] == [m["verbalizer"] for m in members]
    assert [e["calibrate"] for e in best["method"]["prompts"]] == [m["calibrate"] for m in members]
    single = yaml.safe_load((tmp_path / "search" / "single.yaml").read_text())
    assert single["prompt"]["template"] == summary["best"]["prompt"]["template"]
    assert single.get("method", {}).get("name") == "zero-shot"
    best["output_dir"] = str(tmp_path / "combined")
    manifest = cuetune.train(best)
    assert manifest.training is None
    assert manifest.metrics["dev"]["accuracy"] == pytest.approx(combined["dev"]["accuracy"], abs=1e-6)
    # combine is an output setting: the same folder resumes with another value, scoring nothing
    again = search.run(*search.load_config(_combining_search(tmp_path, tiny_dirs, toy_data,
                                                             {"name": "zero-shot"}, combine=1)))
    assert again["combined"] is None and again["scorings"] == 0
    assert yaml.safe_load((tmp_path / "search" / "best.yaml").read_text())["method"] == {"name": "zero-shot"}
    # the soft method: a soft prompt per member, under a learned prior
    soft = _combining_search(tmp_path, tiny_dirs, toy_data, {"name": "soft", "num_tokens": 2}, 2,
                             "soft-search")
    search.run(*search.load_config(soft))
    best = yaml.safe_load((tmp_path / "soft-search" / "best.yaml").read_text())
    assert best["method"]["name"] == "mixture" and best["method"]["num_tokens"] == 2
    assert "prior" not in best["method"] and len(best["method"]["prompts"]) == 2
    best["output_dir"] = str(tmp_path / "soft")
    best["train"]["max_steps"] = 4
    manifest = cuetune.train(best)
    assert manifest.training.steps == 4 and len(manifest.metrics["test"]["prior"]) == 2


def test_a_combination_the_method_cannot_train_is_refused(tmp_path, tiny_dirs, toy_data):
    path = _combining_search(tmp_path, tiny_dirs, toy_data, {"name": "prefix"})
    with pytest.raises(ConfigError, match="search.combine: .*method prefix has no form of"):
        search.load_config(path)
    raw = {"model": {"name": "x"}, "data_root": str(tmp_path), "tasks": ["sst-2"], "k": [16], "seeds": [13],
           "methods": {"lora": {"method": {"name": "lora"}, "search": {"combine": 2}}}}
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"methods\.lora\.search\.combine: .*method lora"):
        grid.load_bench(tmp_path / "bench.yaml")


def test_members_are_distinct_templates_within_the_noise_of_the_best():
    labels = ["negative", "positive"]

    def rec(template, dev, calibrate=False):
        cand = Candidate.from_prompt({"template": template, "calibrate": calibrate}, labels)
        return Record("1-pool", "x", cand, dev, {})

    records = [rec("{text} It was {answer}", 0.84), rec("Text: {text} {answer}", 0.81),
               rec("{text} It was {answer}", 0.81, True), rec("Input: {text} {answer}", 0.70),
               rec("{soft:4} Sentence: {text} {answer}", 0.78), rec("{text} It was {answer}", 0.9,
                                                                       calibrate=True)]
    records[-1].extra.update(needs=0.95)  # found words that did not clear their bar: not a member
    got = combination.members(records, 3, 32)  # one standard error at 0.84 on 32: 0.065
    assert [r.dev for r in got] == [0.84, 0.81, 0.78]
    assert combination.members(records, 3, 400) == [records[0]]  # 400 sentences: 0.81 is too far
    assert combination.noise(1.0, 12) == pytest.approx((11 / 12 / 12 / 12) ** 0.5)
