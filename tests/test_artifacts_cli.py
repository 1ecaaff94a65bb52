"""Artifacts (atomic, fingerprinted, checksummed) and the CLI's one-line errors."""

import io
import json
import sys

import pytest
from conftest import save_tiny, toy_config

import cuetune
from cuetune import cli
from cuetune.errors import ArtifactError, DataError
from cuetune.runs import artifacts


@pytest.fixture(scope="module")
def trained(tiny_dirs, toy_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    raw = toy_config(tiny_dirs["causal"], toy_data, out, train={"max_steps": 5})
    cuetune.train(raw)
    return out


def run_cli(args, capsys):
    old = sys.argv
    sys.argv = ["cuetune", *args]
    try:
        with pytest.raises(SystemExit) as info:
            cli.main()
            raise SystemExit(0)
    finally:
        sys.argv = old
    cap = capsys.readouterr()
    return info.value.code, cap.out, cap.err


def test_run_dir_contents(trained):
    names = {p.name for p in trained.iterdir()}
    assert {"adapter.safetensors", "cuetune.json", "metrics.jsonl", "config.yaml", "eval.json",
            "training_curves.png", "confusion_matrix.png"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    manifest = artifacts.read_manifest(trained)
    assert manifest.trainable_parameters == 4 * 32 and manifest.format_version == 2
    assert manifest.base_model.fingerprint and manifest.verbalizer["labels"]


def test_adapter_on_other_base_is_refused(trained, tmp_path):
    other = save_tiny(tmp_path / "other", "causal", seed=1)
    manifest = json.loads((trained / "cuetune.json").read_text())
    manifest["config"]["model"]["name"] = str(other)
    (trained.parent / "moved").mkdir()
    moved = trained.parent / "moved"
    for f in trained.iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    (moved / "cuetune.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="trained on base model .* load it on the same base"):
        cuetune.load(moved)


def test_tampered_adapter_is_refused(trained, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in trained.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    data = bytearray((copy / "adapter.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "adapter.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match the manifest"):
        cuetune.load(copy)


def test_cli_predict_and_eval(trained, toy_data, tmp_path, capsys):
    """`eval` on the run's own test file scores what training scored on it; `predict` writes
    one row per non-empty line, exactly what the Python API predicts."""
    code, out, _ = run_cli(["eval", str(trained), "--data", str(toy_data["test"])], capsys)
    scored = artifacts.read_manifest(trained).metrics["test"]
    assert code == 0
    assert {k: v for k, v in json.loads(out).items() if k in scored} == scored
    code, _, err = run_cli(["eval", str(trained), "--data", str(toy_data["test"]),
                            "--set", "num_beams=2"], capsys)
    assert code != 0 and "this run classifies" in err and "num_beams" in err
    inp = tmp_path / "in.txt"
    inp.write_text("the movie was great\n\nthe food was awful\n")
    dest = tmp_path / "pred.jsonl"
    code, _, _ = run_cli(["predict", str(trained), "--input", str(inp), "-o", str(dest)], capsys)
    rows = [json.loads(x) for x in dest.read_text().splitlines()]
    want = cuetune.load(trained).predict(["the movie was great", "the food was awful"])
    assert code == 0 and [{"label": r["label"], "probs": r["probs"]} for r in rows] == want
    assert all(abs(sum(r["probs"].values()) - 1) < 1e-5 for r in rows)


def test_lone_surrogates_in_any_input_get_a_one_line_error(trained, tmp_path, capsys, monkeypatch):
    """A JSON `\\udcff` escape in a file to predict on, undecodable bytes on standard input and a
    lone surrogate given in code: each refused with its place (it was a TypeError traceback)."""
    bad = tmp_path / "in.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "\\udcff"}\n')
    code, _, err = run_cli(["predict", str(trained), "--input", str(bad)], capsys)
    assert code == 2 and f"{bad}:2: column 'text': character 1 is U+DCFF" in err and "Traceback" not in err
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"fine\n\xed\xb3\xbf bad\n")))
    code, _, err = run_cli(["predict", str(trained), "--input", "-"], capsys)
    assert code == 2 and "<stdin>:2: not valid UTF-8" in err
    with pytest.raises(DataError, match="input 1: character 2 is U\\+DCFF"):
        cuetune.load(trained).predict(["fine", "a\udcff"])


@pytest.mark.parametrize("case, fragment", [
    ("malformed", "bad.jsonl:2: malformed JSON"),
    ("missing_column", "bad.jsonl:1: missing column 'text'"),
    ("empty", "bad.jsonl: file is empty"),
    ("bad_label", "bad.jsonl:2: label 'postive' is not in the label list"),
    ("bad_word", "prompt.verbalizer.positive[0]: 'zzzz' does not encode"),
    ("no_answer", "no {answer} slot"),
    ("no_text", "no {text} slot"),
    ("unknown_key", "train.lrr: unknown key; did you mean 'lr'"),
])
def test_bad_input_exits_nonzero_with_one_line(case, fragment, tiny_dirs, toy_data, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    good = '{"text": "good", "label": "positive"}\n'
    data = {"malformed": good + '{"text": oops}\n',
            "missing_column": '{"sentence": "x", "label": "positive"}\n', "empty": "",
            "bad_label": good + '{"text": "bad", "label": "postive"}\n'}
    bad.write_text(data.get(case, good))
    raw = toy_config(tiny_dirs["causal"], {**toy_data, "train": bad if case in data else toy_data["train"]},
                     tmp_path / "out")
    sets = [f"model.name={tiny_dirs['causal']}", f"data.train={raw['data']['train']}",
            f"data.dev={toy_data['dev']}", f"data.test={toy_data['test']}",
            "data.labels=[negative, positive]",
            f"output_dir={tmp_path / 'out'}", "train.max_steps=1", "train.progress=false"]
    template = {"no_answer": "{text}", "no_text": "Sentiment: {answer}"}.get(case, "{text} : {answer}")
    sets.append(f"prompt.template={template}")
    if case == "bad_word":
        sets.append("prompt.verbalizer={negative: bad, positive: zzzz}")
    if case == "unknown_key":
        sets.append("train.lrr=1")
    code, _, err = run_cli(["train", *sum((["--set", s] for s in sets), [])], capsys)
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert fragment in " ".join(err.split()), err
    assert not (tmp_path / "out" / "cuetune.json").exists()


@pytest.mark.slow  # a fresh interpreter imports everything
def test_python_dash_m_runs_the_cli():
    """Launchers that start a module (`accelerate launch -m cuetune train ...`) need this."""
    import subprocess

    done = subprocess.run([sys.executable, "-m", "cuetune", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert all(command in done.stdout for command in ("train", "merge", "export", "bench"))


@pytest.mark.filterwarnings("error::UserWarning")  # a glyph missing from the plot's font warns
def test_chinese_labels_print_and_save_readably(tiny_dirs, toy_data, tmp_path, capsys):
    """Labels named in Chinese: predict prints them as text, not \\u escapes, eval.json holds
    them as UTF-8, the confusion plot draws no empty boxes (a CJK font if one is installed,
    else the labels' numbers), and an error naming one shows it as written."""
    names = {"negative": "负面", "positive": "正面"}
    data = {}
    for split in ("train", "dev", "test"):
        rows = [json.loads(x) for x in toy_data[split].read_text().splitlines()]
        data[split] = tmp_path / f"{split}.jsonl"
        data[split].write_text("".join(json.dumps({"text": r["text"], "label": names[r["label"]]},
                                                  ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    cfg = toy_config(tiny_dirs["causal"], data, tmp_path / "run", method={"name": "zero-shot"},
                     prompt={"template": "review : {text} sentiment : {answer}",
                             "verbalizer": {"负面": "negative", "正面": "positive"}})
    cfg["data"]["labels"] = ["负面", "正面"]
    cuetune.train(cfg)
    assert "正面" in (tmp_path / "run" / "eval.json").read_text(encoding="utf-8")
    assert "正面" in (tmp_path / "run" / "config.yaml").read_text(encoding="utf-8")  # not \u6B63
    inp = tmp_path / "in.txt"
    inp.write_text("the food was superb\n", encoding="utf-8")
    code, out, _ = run_cli(["predict", str(tmp_path / "run"), "--input", str(inp)], capsys)
    assert code == 0 and "正面" in out and "\\u" not in out
    cfg["prompt"]["verbalizer"] = {"正向": "positive", "负面": "negative"}
    named = "prompt.verbalizer.正向: not a label.*'负面', '正面'"
    with pytest.raises(cuetune.errors.CuetuneError, match=named):
        cuetune.train(cfg)
