"""Named benchmark tasks: where a task's files are, how to read them, and its prompt.

A task fills the `data` and `prompt` sections of a run config for one (K, seed) split, so
`cuetune bench` can name tasks instead of repeating file layouts. The readers cover the layouts
in `../shared/data/` (see its README): the LM-BFF k-shot splits (`kshot/<task>/16-<seed>/`),
full GLUE SST-2 (`sst2/`) and FewGLUE BoolQ and CB (`fewglue/`). Templates put the answer last
so causal models can read it, and use LM-BFF's label words (Gao et al. 2021, Table 1).

Where a folder holds one fixed split (FewGLUE, or K != 16 for the LM-BFF tasks), K examples
per class are sampled from its training file with the seed, and dev likewise.

Generation tasks (`e2e`, `multi30k`, `boolq-qa`) have no classes: K is the number of training
examples (and of dev examples). Files the readers cannot take as they are (gzipped parallel
text, BoolQ's boolean labels as yes/no answers) are converted once to JSONL in the cuetune
cache, never into the repository. Their test sets are cut to `max_test` inputs, a CPU budget.
"""

from __future__ import annotations

import csv
import gzip
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cuetune import atomic
from cuetune.cache import cache_dir
from cuetune.errors import ConfigError, did_you_mean

LMBFF_SEEDS = (13, 21, 42, 87, 100)


@dataclass(frozen=True)
class Task:
    name: str
    folder: str
    """Under the data root; `{seed}` is filled in for per-seed split folders."""
    files: tuple[str, str | None, str]
    data: dict
    template: str
    verbalizer: dict[str, str]
    split_k: int | None = 16
    """The K of the per-seed folders; other K values are sampled from them."""
    fixed: bool = False
    """The folder's train/dev files are the few-shot split itself (FewGLUE); K is not used."""
    notes: str = ""
    metric: str = "accuracy"
    """The test metric the bench reports (generation: bleu, exact_match, ...)."""
    convert: Callable[[Path, Path], None] | None = None
    """Writes train/dev/test JSONL from the source folder into a cache folder."""
    generate: dict | None = None
    """Decoding settings (generation tasks)."""
    prompt_extra: dict | None = None
    """Further `prompt` keys (e.g. chain-rule scoring for label words of several tokens)."""
    names: dict[str, str] | None = None
    """label -> the class's name as the dataset documents it, what a user's own file would
    hold; the own-task protocol's only knowledge of the task (None: the labels are names)."""

    def sections(self, root: str | Path, k: int, seed: int) -> dict:
        """`data` and `prompt` config sections for K examples per class with this seed."""
        per_seed = "{seed}" in self.folder
        folder = Path(root) / self.folder.format(seed=seed)
        if not folder.is_dir():
            raise ConfigError(f"task {self.name}: {folder} not found; set data_root to the folder "
                              "that holds the shared datasets (see ../shared/data/README.md)")
        if self.convert is not None:
            folder = _converted(self, folder)
        train, dev, test = (str(folder / f) if f else None for f in self.files)
        data = {"train": train, "dev": dev, "test": test, **self.data,
                "clean": {**self.data.get("clean", {}), "drop_test_overlap": False, "drop_duplicates": False}}
        if self.fixed:
            data.update(split_seed=seed)
        elif not per_seed or k != self.split_k:
            if per_seed and k > (self.split_k or 0):
                raise ConfigError(f"task {self.name}: K={k} is larger than its {self.split_k}-shot "
                                  f"split folders; use K <= {self.split_k}")
            data.update(k_shot=k, k_shot_dev=k, k_shot_seed=seed)
        if dev is None:  # no dev file: a seeded tenth of the training file
            data.update(dev_fraction=0.1, split_seed=seed)
        prompt = {"template": self.template, "verbalizer": dict(self.verbalizer) or None,
                  **(self.prompt_extra or {})}
        if self.generate is not None:
            return {"data": data, "prompt": {"template": self.template}, "generate": dict(self.generate)}
        return {"data": data, "prompt": prompt}


def _converted(task: Task, source: Path) -> Path:
    """The task's converted files, written once (atomically) into the cache."""
    dest = cache_dir() / "tasks" / task.name
    if not all((dest / f).is_file() for f in task.files if f):
        dest.mkdir(parents=True, exist_ok=True)
        for name, rows in task.convert(source).items():
            atomic.write_text(dest / name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return dest


def _multi30k(folder: Path) -> dict[str, list[dict]]:
    def lines(name: str) -> list[str]:
        with gzip.open(folder / name, "rt", encoding="utf-8") as f:
            return [line.strip() for line in f]

    def pairs(split: str) -> list[dict]:
        en, de = lines(f"{split}.en.gz"), lines(f"{split}.de.gz")
        return [{"text": a, "target": b} for a, b in zip(en, de, strict=True)]

    return {"train.jsonl": pairs("train"), "dev.jsonl": pairs("val"),
            "test.jsonl": pairs("test_2016_flickr")}


def _boolq_qa(folder: Path) -> dict[str, list[dict]]:
    def rows(name: str) -> list[dict]:
        text = (folder / name).read_text(encoding="utf-8")
        return [{"passage": r["passage"], "question": r["question"],
                 "target": "yes" if r["label"] else "no"}
                for r in map(json.loads, filter(str.strip, text.splitlines()))]

    return {"train.jsonl": rows("train.jsonl"), "dev.jsonl": rows("dev32.jsonl"),
            "test.jsonl": rows("val.jsonl")}


def _samsum(folder: Path) -> dict[str, list[dict]]:
    """SAMSum's JSON lines -> {text: dialogue (one turn a line), target: summary}; the one
    empty training dialogue is dropped."""
    def rows(name: str) -> list[dict]:
        lines = (folder / name).read_text(encoding="utf-8").splitlines()
        out = [{"text": "\n".join(t.strip() for t in r["dialogue"].splitlines() if t.strip()),
                "target": r["summary"].strip()} for r in map(json.loads, filter(str.strip, lines))]
        return [r for r in out if r["text"] and r["target"]]

    return {"train.jsonl": rows("train.json"), "dev.jsonl": rows("validation.json"),
            "test.jsonl": rows("test.json")}


CHINESE_SPLIT_SEED = 2026
"""The one seed of the Chinese review splits (no official ones exist)."""


def _chinese(name: str, test: int = 1000, dev: int = 500) -> Callable[[Path], dict[str, list[dict]]]:
    """A review CSV (`label,review`, sorted by label) -> a fixed, seeded, label-stratified
    split: `test` reviews for test, `dev` for the dev pool K-shot dev sets are drawn from, the
    rest for training; empty reviews dropped."""
    def convert(folder: Path) -> dict[str, list[dict]]:
        with open(folder / name, encoding="utf-8", newline="") as f:
            rows = [{"text": r["review"].strip(), "label": r["label"].strip()} for r in csv.DictReader(f)]
        rows = [r for r in rows if r["text"]]
        rng = random.Random(CHINESE_SPLIT_SEED)
        out: dict[str, list[dict]] = {"train.jsonl": [], "dev.jsonl": [], "test.jsonl": []}
        for label in sorted({r["label"] for r in rows}):
            group = [r for r in rows if r["label"] == label]
            rng.shuffle(group)
            n_test, n_dev = round(len(group) * test / len(rows)), round(len(group) * dev / len(rows))
            out["test.jsonl"] += group[:n_test]
            out["dev.jsonl"] += group[n_test:n_test + n_dev]
            out["train.jsonl"] += group[n_test + n_dev:]
        for split in out.values():
            rng.shuffle(split)
        return out

    return convert


_GEN = {"task": "generation", "max_length": 320, "max_test": 200}
_CHINESE = {"labels": ["0", "1"], "max_length": 256}
_ZH_TEMPLATE = "评论：{text}\n情感：{answer}"
_ZH_WORDS = {"0": "负面", "1": "正面"}
_CHAIN = {"multi_token": "chain"}
"""Chinese label words are several tokens on English-centric tokenizers, with shared pieces:
only the chain rule scores them as words (docs/prompts.md)."""


def _lmbff(name: str, sub: str, ext: str, data: dict, template: str, verbalizer: dict,
           names: dict | None = None) -> Task:
    files = tuple(f"{s}.{ext}" for s in ("train", "dev", "test"))
    return Task(name, f"kshot/{sub}/16-{{seed}}", files, data, template, verbalizer, names=names)


_SENTIMENT = "{text} It was {answer}"
_POLARITY = {"0": "negative", "1": "positive"}
_CSV = {"format": "csv", "columns": ["label", "text"]}

TASKS: dict[str, Task] = {t.name: t for t in [
    _lmbff("sst-2", "SST-2", "tsv", {"text_column": "sentence", "labels": ["0", "1"]},
           _SENTIMENT, {"0": "terrible", "1": "great"}, _POLARITY),
    _lmbff("sst-5", "sst-5", "csv", {**_CSV, "labels": ["0", "1", "2", "3", "4"]}, _SENTIMENT,
           {"0": "terrible", "1": "bad", "2": "okay", "3": "good", "4": "great"},
           {"0": "very negative", "1": "negative", "2": "neutral", "3": "positive", "4": "very positive"}),
    _lmbff("mr", "mr", "csv", {**_CSV, "labels": ["0", "1"]}, _SENTIMENT,
           {"0": "terrible", "1": "great"}, _POLARITY),
    _lmbff("trec", "trec", "csv", {**_CSV, "labels": ["0", "1", "2", "3", "4", "5"]},
           "{text} Answer type: {answer}",
           {"0": "Description", "1": "Entity", "2": "Expression", "3": "Human", "4": "Location",
            "5": "Number"},
           {"0": "description", "1": "entity", "2": "abbreviation", "3": "human", "4": "location",
            "5": "number"}),
    _lmbff("rte", "RTE", "tsv", {"text_column": "sentence1", "text_pair_column": "sentence2",
                                 "labels": ["entailment", "not_entailment"]},
           "{text} Question: {text_pair} Yes or No? Answer: {answer}",
           {"entailment": "Yes", "not_entailment": "No"}),
    _lmbff("qnli", "QNLI", "tsv", {"text_column": "sentence", "text_pair_column": "question",
                                   "labels": ["entailment", "not_entailment"]},
           "{text} Question: {text_pair} Yes or No? Answer: {answer}",
           {"entailment": "Yes", "not_entailment": "No"}),
    Task("sst-2-glue", "sst2", ("train.tsv", "dev.tsv", "test.tsv"),
         {"text_column": "sentence", "labels": ["0", "1"]}, _SENTIMENT,
         {"0": "terrible", "1": "great"}, split_k=None, names=_POLARITY,
         notes="GLUE SST-2; test = the labelled GLUE dev set"),
    Task("boolq", "fewglue/BoolQ", ("train.jsonl", "dev32.jsonl", "val.jsonl"),
         {"text_column": "passage", "text_pair_column": "question", "labels": ["false", "true"]},
         "{text} Question: {text_pair}? Answer: {answer}", {"false": "No", "true": "Yes"},
         split_k=None, fixed=True, notes="FewGLUE: 32 train, 32 dev; test = SuperGLUE validation"),
    Task("cb", "fewglue/CB", ("train.jsonl", "dev32.jsonl", "val.jsonl"),
         {"text_column": "premise", "text_pair_column": "hypothesis",
          "labels": ["entailment", "contradiction", "neutral"]},
         "{text} Question: {text_pair}? Yes, No or Maybe? Answer: {answer}",
         {"entailment": "Yes", "contradiction": "No", "neutral": "Maybe"}, split_k=None, fixed=True,
         notes="FewGLUE: 32 train, 32 dev; test = SuperGLUE validation"),
    Task("e2e", "e2e", ("devset.csv", None, "testset_w_refs.csv"),
         {**_GEN, "format": "csv", "text_column": "mr", "target_column": "ref",
          "max_target_length": 64},
         "Facts: {text}\nDescription: {answer}", {}, split_k=None, metric="bleu",
         generate={"max_new_tokens": 64, "stop": ["\n"]},
         notes="E2E NLG: train on devset (a tenth split off as dev), test on the test set's "
               "first 200 meaning representations, all references"),
    Task("multi30k", "multi30k", ("train.jsonl", "dev.jsonl", "test.jsonl"),
         {**_GEN, "max_target_length": 64}, "English: {text}\nGerman: {answer}", {}, split_k=None,
         metric="bleu", convert=_multi30k, generate={"max_new_tokens": 64, "stop": ["\n"]},
         notes="Multi30k en-de (image captions); test = test_2016_flickr, first 200"),
    Task("boolq-qa", "fewglue/BoolQ", ("train.jsonl", "dev.jsonl", "test.jsonl"),
         {**_GEN, "text_column": "passage", "text_pair_column": "question", "max_target_length": 4},
         "{text}\nQuestion: {text_pair}?\nAnswer (yes or no): {answer}", {}, split_k=None,
         metric="exact_match", convert=_boolq_qa, generate={"max_new_tokens": 3, "stop": ["\n"]},
         notes="BoolQ as question answering: the model writes yes or no; exact match"),
    Task("samsum", "samsum", ("train.jsonl", "dev.jsonl", "test.jsonl"),
         {**_GEN, "max_length": 512, "max_target_length": 64, "clean": {"collapse_whitespace": False}},
         "Dialogue:\n{text}\nSummary: {answer}", {}, split_k=None, metric="rouge_1", convert=_samsum,
         generate={"max_new_tokens": 64, "stop": ["\n"]},
         notes="SAMSum dialogue summarization (official splits); test = the first 200 test dialogues; "
               "ROUGE-1/2/L; the summary ends at the first line break, so a continued dialogue "
               "turn is never part of it"),
    Task("chnsenticorp", "chinese", ("train.jsonl", "dev.jsonl", "test.jsonl"), dict(_CHINESE),
         _ZH_TEMPLATE, dict(_ZH_WORDS), split_k=None, convert=_chinese("ChnSentiCorp_htl_all.csv"),
         prompt_extra=dict(_CHAIN), names=_POLARITY,
         notes="ChnSentiCorp hotel reviews; a fixed seeded stratified split (test 1,000, dev pool "
               "500); K per class sampled per seed"),
    Task("waimai", "chinese", ("train.jsonl", "dev.jsonl", "test.jsonl"), dict(_CHINESE),
         _ZH_TEMPLATE, dict(_ZH_WORDS), split_k=None, convert=_chinese("waimai_10k.csv"),
         prompt_extra=dict(_CHAIN), names=_POLARITY,
         notes="waimai_10k food-delivery reviews; a fixed seeded stratified split (test 1,000, dev "
               "pool 500); K per class sampled per seed"),
]}


def get(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"task {name!r} is not known;{did_you_mean(name, TASKS) or ''} "
                          f"known: {', '.join(TASKS)}")
    return TASKS[name]


class TaskSpec(BaseModel):
    """A task declared in a bench config (`custom_tasks:`), beside the named ones above, so users
    benchmark their own data without editing this module. File paths are relative to the bench
    config's folder; `data` takes any `data.*` run-config key (format, columns, text_column,
    text_pair_column, label_column, labels, task, ...), validated as a run config is."""

    model_config = ConfigDict(extra="forbid")

    train: str
    dev: str | None = None
    """None: a seeded tenth of the training file is the dev split."""
    test: str
    data: dict = Field(default_factory=dict)
    template: str
    verbalizer: dict[str, str] | None = None
    """label -> word; None for generation tasks (and for labels that are words already)."""
    metric: str = "accuracy"
    """The test metric the bench reports (generation: bleu, chrf, rouge_l, exact_match, ...)."""
    k_shot: bool = True
    """Sample K examples per class (generation: K examples) per seed from the files; false: the
    files are the few-shot split already and K only labels the results."""
    generate: dict | None = None

    def to_task(self, name: str, folder: Path) -> Task:
        generation = self.data.get("task") == "generation"
        generate = {} if generation and self.generate is None else self.generate
        return Task(name, str(folder.resolve()), (self.train, self.dev, self.test), dict(self.data),
                    self.template, dict(self.verbalizer or {}), split_k=None, fixed=not self.k_shot,
                    metric=self.metric, generate=generate, notes="declared in the bench config")


class TaskRef(BaseModel):
    """A named task in a run config (`task: {name: samsum, k: 64, seed: 13}`), so `cuetune
    train` runs the exact split and prompt a bench cell runs without copying cache paths."""

    model_config = ConfigDict(extra="forbid")

    name: str
    k: int = Field(16, ge=1)
    """Examples per class (generation: examples) sampled for training, and likewise for dev."""
    seed: int = 13
    """The split seed; also `train.seed` unless the config sets one (as a bench cell does)."""
    data_root: str = "../shared/data"
    """The shared datasets' folder, relative to the config file."""


def fill_task(raw: dict, base_dir: Path | None, source: str) -> dict:
    """A raw run config with its `task:` section turned into `data`, `prompt` and `generate`
    sections; keys the config sets itself win (e.g. an English `prompt.template`)."""
    if "task" not in raw:
        return raw
    raw = dict(raw)
    spec = raw.pop("task")
    try:
        ref = TaskRef.model_validate(spec if isinstance(spec, dict) else {"name": spec})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(["task", *map(str, err["loc"])])
        raise ConfigError(f"{source}: {where}: {err['msg']}; e.g. task: {{name: samsum, k: 64, "
                          "seed: 13, data_root: ../shared/data}") from None
    root = Path(ref.data_root)
    root = root if root.is_absolute() or base_dir is None else base_dir / root
    try:
        sections = get(ref.name).sections(root, ref.k, ref.seed)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    for key, filled in sections.items():
        mine = raw.get(key) or {}
        if not isinstance(mine, dict):
            raise ConfigError(f"{source}: {key}: expected a mapping of keys")
        raw[key] = {**filled, **mine}
    raw["train"] = {"seed": ref.seed, **(raw.get("train") or {})}
    return raw
