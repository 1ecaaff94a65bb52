import json

import pytest

from cuetune.config import CleanConfig, DataConfig
from cuetune.data.cleaning import clean
from cuetune.data.examples import Example, to_examples
from cuetune.data.readers import read_rows
from cuetune.data.splits import k_shot, load_splits, split_off
from cuetune.errors import DataError


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_formats_read_the_same_rows(tmp_path):
    rows = [{"text": "a b", "label": "pos"}, {"text": "c, d", "label": "neg"}]
    files = [
        write(tmp_path / "x.jsonl", "".join(json.dumps(r) + "\n" for r in rows)),
        write(tmp_path / "x.json", json.dumps(rows)),
        write(tmp_path / "x.csv", 'text,label\na b,pos\n"c, d",neg\n'),
        write(tmp_path / "x.tsv", "text\tlabel\na b\tpos\nc, d\tneg\n"),
    ]
    for f in files:
        assert [r for _, r in read_rows(f)] == rows, f.name


def test_headerless_csv_with_columns(tmp_path):
    f = write(tmp_path / "k.csv", '1,"great, really"\n0,awful\n')
    rows = read_rows(f, columns=["label", "text"])
    ex = to_examples(rows, "text", None, "label", ["0", "1"], str(f))
    assert [(e.text, e.label) for e in ex] == [("great, really", 1), ("awful", 0)]


@pytest.mark.parametrize("content, fragment", [
    ('{"text": "a", "label": "pos"}\n{"text": "b", label}\n', "x.jsonl:2: malformed JSON"),
    ("", "file is empty"),
    ('["a"]\n', "x.jsonl:1: expected a JSON object"),
])
def test_jsonl_errors_name_the_line(tmp_path, content, fragment):
    f = write(tmp_path / "x.jsonl", content)
    with pytest.raises(DataError) as info:
        read_rows(f)
    assert fragment in str(info.value)


def test_missing_column_and_bad_label(tmp_path):
    f = write(tmp_path / "x.jsonl", '{"sentence": "a", "label": "pos"}\n')
    with pytest.raises(DataError, match=r"x.jsonl:1: missing column 'text'"):
        to_examples(read_rows(f), "text", None, "label", ["neg", "pos"], str(f))
    g = write(tmp_path / "y.jsonl", '{"text": "a", "label": "postive"}\n')
    with pytest.raises(DataError, match=r"y.jsonl:1: label 'postive' .* did you mean 'positive'"):
        to_examples(read_rows(g), "text", None, "label", ["negative", "positive"], str(g))


def test_integer_labels_index_the_label_list():
    rows = [("f:2", {"text": "a", "label": 1}), ("f:3", {"text": "b", "label": "0"})]
    assert [e.label for e in to_examples(rows, "text", None, "label", ["neg", "pos"], "f")] == [1, 0]
    with pytest.raises(DataError, match="f:2: label 3 is out of range"):
        to_examples([("f:2", {"text": "a", "label": 3})], "text", None, "label", ["n", "p"], "f")


def test_cleaning_counts():
    exs = [Example("  a   b ", label=0), Example("a b", label=0), Example("   ", label=1),
           Example("in test", label=1), Example("c", label=1)]
    out, report = clean(exs, CleanConfig(), "train", exclude={("in test", None)})
    assert [e.text for e in out] == ["a b", "c"]
    assert report == {"rows": 5, "kept": 2, "dropped_duplicate": 1, "dropped_empty": 1,
                      "dropped_in_test": 1}


def test_split_and_kshot_are_seeded_and_stratified():
    exs = [Example(f"t{i}", label=i % 2) for i in range(40)]
    rest, cut = split_off(exs, 0.25, seed=1)
    assert len(cut) == 10 and sum(e.label for e in cut) == 5
    assert split_off(exs, 0.25, seed=1) == (rest, cut)
    shots = k_shot(exs, 4, 13, "train", ["a", "b"])
    assert len(shots) == 8 and sum(e.label for e in shots) == 4
    assert shots == k_shot(exs, 4, 13, "train", ["a", "b"])
    with pytest.raises(DataError, match="class 'a' has 20 examples, fewer than k_shot=30"):
        k_shot(exs, 30, 13, "train", ["a", "b"])


def test_load_splits_end_to_end(tmp_path):
    rows = [{"text": f"text {i}", "label": ["neg", "pos"][i % 2]} for i in range(30)]
    train = write(tmp_path / "tr.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    test = write(tmp_path / "te.jsonl", json.dumps(rows[0]) + "\n")
    cfg = DataConfig(train=str(train), test=str(test), dev_fraction=0.2)
    s = load_splits(cfg)
    assert s.labels == ["neg", "pos"]
    assert s.report["train"]["dropped_in_test"] == 1
    assert len(s.dev) == 6 and len(s.train) == 23 and len(s.test) == 1


def test_training_on_one_class_is_refused_and_an_unjudged_run_is_warned(tiny_dirs, toy_data, tmp_path,
                                                                         caplog):
    from conftest import toy_config

    import cuetune

    one = write(tmp_path / "one.jsonl", "".join(json.dumps({"text": f"good day {i}", "label": "positive"})
                                                + "\n" for i in range(8)))
    raw = toy_config(tiny_dirs["causal"], {**toy_data, "train": one}, tmp_path / "run")
    with pytest.raises(DataError, match=rf"{one}: every training example has label 'positive'"):
        cuetune.train(raw)
    assert not (tmp_path / "run").exists()
    raw = toy_config(tiny_dirs["causal"], toy_data, tmp_path / "unjudged", train={"max_steps": 2})
    raw["data"].update(dev=None, test=None)
    with caplog.at_level("WARNING"):
        manifest = cuetune.train(raw)
    warned = [r for r in caplog.records if "nothing will score this run" in r.getMessage()]
    assert len(warned) == 1 and manifest.training.best_step is None
