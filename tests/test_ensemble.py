"""`cuetune ensemble`: finished runs of any methods on one split combine by weighted mean
log-probability; the folder loads, predicts and evaluates like a run; runs on another split,
and members changed since, are refused."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import toy_config, toy_rows, write_jsonl

import cuetune
from cuetune.data.examples import Example
from cuetune.errors import ArtifactError, ConfigError
from cuetune.runs import ensemble

TEXTS = ["the movie was great", "the food was awful and dull", "a very poor day", "lovely phone"]


@pytest.fixture(scope="module")
def runs(tiny_dirs, toy_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("ens")
    for name, method, lr in (("soft", {"name": "soft"}, 0.1), ("lora", {"name": "lora", "r": 4}, 0.02)):
        raw = toy_config(tiny_dirs["causal"], toy_data, root / name, method=method)
        raw["train"].update(lr=lr, max_steps=10)
        cuetune.train(raw)
    return root


def _probs(run, texts):
    model = cuetune.load(run)
    return model.pipe.label_probs(model.pipe.encoder.encode([Example(t) for t in texts]))


def test_members_combine_by_mean_log_probability(runs, tmp_path):
    metrics = ensemble.build([runs / "soft", runs / "lora"], tmp_path / "ens")
    model = cuetune.load(tmp_path / "ens")
    assert isinstance(model, ensemble.Ensemble) and set(metrics) == {"dev", "test"}
    want = (0.5 * _probs(runs / "soft", TEXTS).log() + 0.5 * _probs(runs / "lora", TEXTS).log()).softmax(-1)
    got = torch.tensor([[p["probs"][lab] for lab in model.labels] for p in model.predict(TEXTS)])
    torch.testing.assert_close(got, want, atol=2e-6, rtol=0)
    assert len({id(m.pipe.loaded) for m in model.members}) == 1, "members share one base model"
    spec = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert spec["metrics"]["test"] == json.loads((tmp_path / "ens" / "eval.json").read_text())["test"]


def test_dev_weighting_follows_dev_accuracy(runs, tmp_path):
    ensemble.build([runs / "soft", runs / "lora"], tmp_path / "ens", weighting="dev")
    spec = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    dev = [cuetune.load(runs / n).manifest.metrics["dev_best"]["accuracy"] for n in ("soft", "lora")]
    assert [m["weight"] for m in spec["members"]] == pytest.approx([d / sum(dev) for d in dev])


def test_another_split_and_a_changed_member_are_refused(runs, tiny_dirs, toy_data, tmp_path):
    other = {**toy_data, "test": write_jsonl(tmp_path / "test.jsonl", toy_rows(24, 9))}
    cuetune.train(toy_config(tiny_dirs["causal"], other, tmp_path / "other", method={"name": "zero-shot"}))
    with pytest.raises(ConfigError, match=r"data\.test is .* ensemble members must share the split"):
        ensemble.build([runs / "soft", tmp_path / "other"], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    ensemble.build([runs / "soft", runs / "lora"], tmp_path / "ens")
    spec = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    spec["members"][1]["adapter_sha256"] = "0" * 64
    (tmp_path / "ens" / "ensemble.json").write_text(json.dumps(spec))
    with pytest.raises(ArtifactError, match="retrained or changed since the ensemble was built"):
        cuetune.load(tmp_path / "ens")


def test_cli_builds_predicts_and_evaluates_an_ensemble(runs, toy_data, tmp_path, capsys):
    from test_artifacts_cli import run_cli

    members = [str(runs / "soft"), str(runs / "lora")]
    code, out, err = run_cli(["ensemble", *members, "--out", str(tmp_path / "e")], capsys)
    assert code == 0, err
    summary = json.loads(out)
    code, out, err = run_cli(["eval", str(tmp_path / "e"), "--data", str(toy_data["test"])], capsys)
    assert code == 0, err
    assert round(json.loads(out)["accuracy"], 4) == summary["test_accuracy"]
    code, _, err = run_cli(["eval", str(tmp_path / "e"), "--data", str(toy_data["test"]),
                            "--set", "strategy=beam"], capsys)
    assert code != 0 and "it classifies" in err and "strategy" in err
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(TEXTS) + "\n")
    code, out, err = run_cli(["predict", str(tmp_path / "e"), "--input", str(inp)], capsys)
    rows = [json.loads(x) for x in out.splitlines()]
    want = [p["label"] for p in cuetune.load(tmp_path / "e").predict(TEXTS)]
    assert code == 0 and [r["label"] for r in rows] == want
