"""In-context demonstrations fit data.max_length beside the input, or the run says why not."""

from __future__ import annotations

import random

import pytest
import yaml
from conftest import FILLER, NEG, POS, save_tiny, toy_config, toy_rows, write_jsonl

import cuetune
from cuetune import families
from cuetune.errors import ConfigError
from cuetune.families.pretrained import load_model
from cuetune.prompt.encoder import PromptEncoder
from cuetune.prompt.templates import parse

TEMPLATE = "{text} sentiment : {answer}"


def _rows(n: int, seed: int, long_every: int) -> list[dict]:
    """Toy rows; every `long_every`-th one padded to ~40 words of filler."""
    rng = random.Random(seed)
    rows = toy_rows(n, seed)
    for i, row in enumerate(rows):
        if i % long_every == 0:
            cue = rng.choice(POS if row["label"] == "positive" else NEG)
            row["text"] = " ".join(rng.choices(FILLER, k=40) + [cue])
    return rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("icl")
    data = {"train": write_jsonl(root / "train.jsonl", _rows(32, 1, long_every=3)),
            "dev": write_jsonl(root / "dev.jsonl", toy_rows(8, 2)),
            "test": write_jsonl(root / "test.jsonl", _rows(12, 3, long_every=4))}
    return save_tiny(root / "causal", "causal"), data


def _config(setup, out, max_length: int, **method) -> dict:
    model_dir, data = setup
    raw = toy_config(model_dir, data, out, method={"name": "in-context", "per_class": 2, **method})
    raw["prompt"]["template"] = TEMPLATE
    raw["data"]["max_length"] = max_length
    return raw


def test_demonstrations_leave_the_input_its_room(setup, tmp_path):
    cuetune.train(_config(setup, tmp_path / "run", max_length=60, fit_inputs=0.5))
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["method"]
    demos = saved["demonstrations"].split("\n")
    assert len(demos) == 4  # two per class, none dropped: short examples exist in both
    assert sum(d.endswith("positive") for d in demos) == 2
    tok = load_model(str(setup[0])).tokenizer
    lengths = sorted(len(tok(" " + r["text"], add_special_tokens=False)["input_ids"])
                     for r in _rows(32, 1, long_every=3))
    room = lengths[len(lengths) // 2 - 1]  # the median training input; a third are 41 tokens
    template = parse("\n".join(demos) + "\n" + TEMPLATE)
    fixed = PromptEncoder(template, tok, families.get("causal"), max_length=60).fixed_length
    assert fixed + room <= 60
    assert all(len(d.split()) < 20 for d in demos)  # the 40-word examples were passed over
    # the saved run reloads with the same prompt
    assert cuetune.load(tmp_path / "run").predict(["a good day"])


def test_too_short_max_length_names_the_fields(setup, tmp_path):
    with pytest.raises(ConfigError, match=r"data\.max_length=30.*method\.per_class"):
        cuetune.train(_config(setup, tmp_path / "run", max_length=30, fit_inputs=1.0))


def test_own_demonstrations_are_kept_as_given(setup, tmp_path):
    mine = "the day was good sentiment : positive"
    cuetune.train(_config(setup, tmp_path / "run", max_length=60, demonstrations=mine))
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["method"]
    assert saved["demonstrations"] == mine


def test_a_class_without_training_examples_gets_no_demonstration(setup, tmp_path):
    raw = _config(setup, tmp_path / "run", max_length=60, fit_inputs=0.5)
    raw["data"]["labels"] = ["negative", "positive", "neutral"]  # no neutral row anywhere
    raw["prompt"]["verbalizer"] = {"negative": "no", "positive": "yes", "neutral": "question"}
    cuetune.train(raw)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["method"]
    assert sorted(d.split()[-1] for d in saved["demonstrations"].split("\n")) == ["no", "no", "yes", "yes"]


def test_the_draw_and_its_order_follow_the_run_seed_unless_method_seed_fixes_it(setup, tmp_path):
    """With one training file for every seed, only the seed can vary the demonstrations; a
    draw fixed at method.seed=0 gave nearly every bench seed the same label order, and Gemma-3
    follows the first demonstration's label (docs/RESULTS.md, Chinese reviews)."""
    def demos(run_seed: int, **method) -> str:
        out = tmp_path / f"s{run_seed}-{method}"
        raw = _config(setup, out, max_length=60, fit_inputs=0.5, per_class=1, **method)
        raw["train"]["seed"] = run_seed
        cuetune.train(raw)
        return yaml.safe_load((out / "config.yaml").read_text())["method"]["demonstrations"]

    drawn = [demos(s) for s in range(6)]
    assert len(set(drawn)) > 1
    assert len({d.split("\n")[0].endswith("positive") for d in drawn}) == 2  # both labels lead somewhere
    assert demos(1, seed=7) == demos(2, seed=7)
