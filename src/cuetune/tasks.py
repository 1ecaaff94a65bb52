"""Named benchmark tasks: where a task's files are, how to read them, and its prompt.

A task fills the `data` and `prompt` sections of a run config for one (K, seed) split, so
`cuetune bench` can name tasks instead of repeating file layouts. The readers cover the layouts
in `../shared/data/` (see its README): the LM-BFF k-shot splits (`kshot/<task>/16-<seed>/`),
full GLUE SST-2 (`sst2/`) and FewGLUE BoolQ and CB (`fewglue/`). Templates put the answer last
so causal models can read it, and use LM-BFF's label words (Gao et al. 2021, Table 1).

Where a folder holds one fixed split (FewGLUE, or K != 16 for the LM-BFF tasks), K examples
per class are sampled from its training file with the seed, and dev likewise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cuetune.errors import ConfigError, did_you_mean

LMBFF_SEEDS = (13, 21, 42, 87, 100)


@dataclass(frozen=True)
class Task:
    name: str
    folder: str
    """Under the data root; `{seed}` is filled in for per-seed split folders."""
    files: tuple[str, str, str]
    data: dict
    template: str
    verbalizer: dict[str, str]
    split_k: int | None = 16
    """The K of the per-seed folders; other K values are sampled from them."""
    fixed: bool = False
    """The folder's train/dev files are the few-shot split itself (FewGLUE); K is not used."""
    notes: str = ""

    def sections(self, root: str | Path, k: int, seed: int) -> dict:
        """`data` and `prompt` config sections for K examples per class with this seed."""
        per_seed = "{seed}" in self.folder
        folder = Path(root) / self.folder.format(seed=seed)
        if not folder.is_dir():
            raise ConfigError(f"task {self.name}: {folder} not found; set data_root to the folder "
                              "that holds the shared datasets (see ../shared/data/README.md)")
        train, dev, test = (str(folder / f) for f in self.files)
        data = {"train": train, "dev": dev, "test": test, **self.data,
                "clean": {"drop_test_overlap": False, "drop_duplicates": False}}
        if self.fixed:
            data.update(split_seed=seed)
        elif not per_seed or k != self.split_k:
            if per_seed and k > (self.split_k or 0):
                raise ConfigError(f"task {self.name}: K={k} is larger than its {self.split_k}-shot "
                                  f"split folders; use K <= {self.split_k}")
            data.update(k_shot=k, k_shot_dev=k, k_shot_seed=seed)
        prompt = {"template": self.template, "verbalizer": dict(self.verbalizer)}
        return {"data": data, "prompt": prompt}


def _lmbff(name: str, sub: str, ext: str, data: dict, template: str, verbalizer: dict) -> Task:
    files = tuple(f"{s}.{ext}" for s in ("train", "dev", "test"))
    return Task(name, f"kshot/{sub}/16-{{seed}}", files, data, template, verbalizer)


_SENTIMENT = "{text} It was {answer}"
_CSV = {"format": "csv", "columns": ["label", "text"]}

TASKS: dict[str, Task] = {t.name: t for t in [
    _lmbff("sst-2", "SST-2", "tsv", {"text_column": "sentence", "labels": ["0", "1"]},
           _SENTIMENT, {"0": "terrible", "1": "great"}),
    _lmbff("sst-5", "sst-5", "csv", {**_CSV, "labels": ["0", "1", "2", "3", "4"]}, _SENTIMENT,
           {"0": "terrible", "1": "bad", "2": "okay", "3": "good", "4": "great"}),
    _lmbff("mr", "mr", "csv", {**_CSV, "labels": ["0", "1"]}, _SENTIMENT,
           {"0": "terrible", "1": "great"}),
    _lmbff("trec", "trec", "csv", {**_CSV, "labels": ["0", "1", "2", "3", "4", "5"]},
           "{text} Answer type: {answer}",
           {"0": "Description", "1": "Entity", "2": "Expression", "3": "Human", "4": "Location",
            "5": "Number"}),
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
         {"0": "terrible", "1": "great"}, split_k=None,
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
]}


def get(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"task {name!r} is not known;{did_you_mean(name, TASKS) or ''} "
                          f"known: {', '.join(TASKS)}")
    return TASKS[name]
