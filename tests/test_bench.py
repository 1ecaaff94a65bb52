"""`cuetune bench`: the grid runs, picks hyperparameters on dev, resumes, and reports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import toy_rows

from cuetune.bench import cells as bench_cells
from cuetune.bench import grid, points, results
from cuetune.config import AugmentConfig
from cuetune.data import tasks
from cuetune.data.augment import augment
from cuetune.data.examples import Example
from cuetune.errors import ConfigError
from cuetune.runs import artifacts
from cuetune.runs.config_file import load as load_config
from cuetune.runs.manifest import Manifest
from cuetune.runs.train import train as real_api_train
from cuetune.runs.tuned import load_run

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


class Interrupted(KeyboardInterrupt):
    """Stands in for Ctrl-C in the middle of the grid (a crash is recorded, see below)."""


def _toy_kshot(root: Path, seeds) -> Path:
    """The LM-BFF SST-2 layout (kshot/SST-2/16-<seed>/{train,dev,test}.tsv) with toy rows."""
    for seed in seeds:
        folder = root / "kshot" / "SST-2" / f"16-{seed}"
        folder.mkdir(parents=True)
        for split, n in (("train", 32), ("dev", 16), ("test", 24)):
            rows = toy_rows(n, seed * 7 + len(split))
            body = "".join(f"{r['text']}\t{int(r['label'] == 'positive')}\n" for r in rows)
            (folder / f"{split}.tsv").write_text("sentence\tlabel\n" + body)
    return root


def _bench_file(tmp_path, model_dir, out) -> Path:
    words = {"0": "negative", "1": "positive"}  # the toy vocabulary has no "terrible"/"great"
    cfg = {
        "name": "toy bench", "model": {"name": str(model_dir)}, "data_root": str(tmp_path / "data"),
        "tasks": ["sst-2"], "k": [16], "seeds": [13, 21], "output_dir": str(out),
        "train": {"batch_size": 8, "max_steps": 12, "eval_every": 6, "patience": None,
                  "warmup_ratio": 0.0},
        "methods": {
            "zero-shot": {"method": {"name": "zero-shot"}, "prompt": {"verbalizer": words}},
            "soft": {"method": {"name": "soft"},
                     "prompt": {"template": "{soft:4} {text} sentiment : {answer}", "verbalizer": words},
                     "grid": {"train.lr": [0.1, 1e-5]}},
        },
    }
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_bench_grid_resumes_and_reports(tiny_dirs, tmp_path, monkeypatch):
    _toy_kshot(tmp_path / "data", [13, 21])
    out = tmp_path / "out"
    path = _bench_file(tmp_path, tiny_dirs["causal"], out)
    cfg, root = grid.load_bench(path)
    assert len(grid.cells(cfg)) == 4

    monkeypatch.setattr(points, "FULL_WEIGHTS_MB", 0)  # every adapter counts as full weights
    calls, crashed = [], []
    real_train = real_api_train

    def crashing_train(raw, *a, **k):
        calls.append(raw["output_dir"])
        if len(calls) == 3 and not crashed:
            crashed.append(True)
            raise Interrupted  # the grid is interrupted during its third run
        return real_train(raw, *a, **k)

    monkeypatch.setattr(bench_cells, "train", crashing_train)
    with pytest.raises(Interrupted):
        bench_cells.run_bench(cfg, root, out)
    first = list(calls)
    calls.clear()
    rows = bench_cells.run_bench(cfg, root, out)
    assert not set(calls) & set(first[:2]), "finished runs were trained again"
    assert len(calls) == 6 - 2  # 1 zero-shot + 2 soft grid points per seed, two already done

    assert [(r["method"], r["seed"]) for r in rows] == [
        ("zero-shot", 13), ("zero-shot", 21), ("soft", 13), ("soft", 21)]
    for r in rows:
        assert r["test_size"] == 24 and r["train_examples"] == 32
        if r["method"] == "soft":
            assert r["grid_size"] == 2
            assert r["hyperparameters"] == {"train.lr": 0.1}, "dev must prefer the lr that learns"
            chosen = artifacts.read_manifest(r["run_dir"])
            other = artifacts.read_manifest(Path(r["run_dir"]).parent / "lr1e-05")
            assert "dev_best" in other.metrics and "test" not in other.metrics, (
                "only dev's pick is scored on test")
            assert chosen.metrics["test"]["n"] == 24 and chosen.test_seconds > 0
            for run in (r["run_dir"], Path(r["run_dir"]).parent / "lr1e-05"):  # after test, not before
                assert not (Path(run) / artifacts.ADAPTER).exists()
                assert artifacts.read_manifest(run).adapter_removed
    for name in ("results.csv", "results.json", "results.md", "report.html", "bars_k16.png"):
        assert (out / name).stat().st_size > 100, name
    md = (out / "results.md").read_text()
    assert "| soft |" in md and "| zero-shot |" in md
    assert f"Model: `{tiny_dirs['causal']}`" in md
    per_seed = md.split("## Per seed")[1]
    soft_row = next(line for line in per_seed.splitlines() if line.startswith("| soft |"))
    cols = [c.strip() for c in soft_row.strip("|").split("|")]
    soft = [r for r in rows if r["method"] == "soft"]
    assert cols[2] == " / ".join(f"{100 * r['test_score']:.1f}" for r in soft), soft_row  # 2 seeds
    assert cols[3] == "lr=0.1", soft_row  # dev's pick, the same on both seeds
    summary = json.loads((out / "results.json").read_text())["summary"]
    assert {s["method"] for s in summary} == {"zero-shot", "soft"}
    assert all(s["n"] == 2 for s in summary)
    assert "data:image/png;base64," in (out / "report.html").read_text()


@pytest.mark.slow  # a grid of trained cells
def test_cells_whose_run_folders_are_gone_are_read_back_from_results(tiny_dirs, tmp_path, monkeypatch):
    """Run folders deleted (or left on another machine), results.json kept: finished cells are
    read back instead of trained again, unless the settings they ran under have changed."""
    _toy_kshot(tmp_path / "data", [13, 21])
    out = tmp_path / "out"
    path = _bench_file(tmp_path, tiny_dirs["causal"], out)
    first = bench_cells.run_bench(*grid.load_bench(path), out)
    shutil.rmtree(out / "runs")
    (out / "results.md").unlink()  # the reports are rewritten even when every cell is read back
    calls, real_train = [], real_api_train

    def counting_train(raw, *a, **k):
        calls.append(raw["output_dir"])
        return real_train(raw, *a, **k)

    monkeypatch.setattr(bench_cells, "train", counting_train)
    assert bench_cells.run_bench(*grid.load_bench(path), out) == first and calls == []
    assert json.loads((out / "results.json").read_text())["cells"] == first
    assert "| soft |" in (out / "results.md").read_text()
    narrowed = bench_cells.run_bench(*grid.load_bench(path, ["seeds=[13]"]), out)
    assert calls == [] and [r["seed"] for r in narrowed] == [13, 13]
    kept = json.loads((out / "results.json").read_text())["cells"]
    assert sorted(map(str, kept)) == sorted(map(str, first)), "a narrowed grid keeps seed 21's rows"
    saved = json.loads((out / "results.json").read_text())
    for entry in saved["bench"]["methods"].values():  # written before a row had these keys
        entry.pop("ensemble"), entry.pop("distill")
    (out / "results.json").write_text(json.dumps(saved))
    assert bench_cells.run_bench(*grid.load_bench(path), out) == first and calls == []

    raw = yaml.safe_load(path.read_text())
    raw["methods"]["soft"]["grid"] = {"train.lr": [0.1]}  # the soft row's settings change
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    rows = bench_cells.run_bench(*grid.load_bench(path), out)
    assert len(calls) == 2 and all("/soft/" in c for c in calls), calls
    assert rows[:2] == first[:2] and [r["grid_size"] for r in rows[2:]] == [1, 1]

    cfg, _ = grid.load_bench(path, ["train.max_steps=6"])  # every cell's result would change
    assert results.recorded_rows(cfg, out) == {}
    saved = json.loads((out / "results.json").read_text())
    del saved["cells"][0]["seed"]  # a hand-edited row that names no cell
    for text in ('{"cells": [', json.dumps(saved)):
        (out / "results.json").write_text(text)
        with pytest.raises(ConfigError, match="results.json: not a results.json"):
            bench_cells.run_bench(*grid.load_bench(path), out)


@pytest.mark.slow  # a grid of trained cells
def test_an_interrupted_resume_keeps_read_back_rows_and_counts_only_cells_to_run(
        tiny_dirs, tmp_path, monkeypatch):
    """results.json is rewritten after every cell run; the read-back rows of cells not reached
    yet must stay in it (their run folders are gone, so a lost row is a cell to train again),
    and the ETA counts only the cells that will run."""
    _toy_kshot(tmp_path / "data", [13, 21])
    out = tmp_path / "out"
    path = _bench_file(tmp_path, tiny_dirs["causal"], out)
    first = bench_cells.run_bench(*grid.load_bench(path), out)
    shutil.rmtree(out / "runs")
    raw = yaml.safe_load(path.read_text())
    raw["methods"]["zero-shot"]["prompt"]["template"] = "{text} sentiment : {answer}"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))  # zero-shot reruns, soft is read back

    clock, calls, etas, real_train = [0.0], [], [], real_api_train
    monkeypatch.setattr(bench_cells, "time", SimpleNamespace(perf_counter=lambda: clock[0]))

    def thirty_seconds_then_interrupted(raw, *a, **k):
        calls.append(raw["output_dir"])
        if len(calls) == 2:
            raise Interrupted  # during the second zero-shot cell
        clock[0] += 30.0
        return real_train(raw, *a, **k)

    monkeypatch.setattr(bench_cells, "train", thirty_seconds_then_interrupted)
    with pytest.raises(Interrupted):
        bench_cells.run_bench(*grid.load_bench(path), out,
                        progress=lambda done, total, cell, eta: etas.append((done, eta)))
    assert etas == [(0, None), (1, 30.0)], "one cell of 30 s left to run, not three"
    saved = json.loads((out / "results.json").read_text())["cells"]
    assert [(r["method"], r["seed"]) for r in saved] == [("zero-shot", 13), ("soft", 13), ("soft", 21)]
    assert saved[1:] == first[2:]


def test_full_weights_are_flagged_in_the_manifest_before_the_file_goes(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    artifacts.write_manifest(run, Manifest(
        base_model={"name": "tiny", "fingerprint": "0", "family": "causal"}, method={"name": "full"},
        template="{text} {answer}", labels=["a", "b"], trainable_parameters=1, adapter_bytes=2048,
        adapter_sha256="0" * 64, config={}))
    (run / artifacts.ADAPTER).write_bytes(b"x" * 2048)
    monkeypatch.setattr(points, "FULL_WEIGHTS_MB", 0)
    real_unlink = Path.unlink

    def interrupted_unlink(self, *a, **k):  # an interrupt lands as the file is deleted
        raise Interrupted

    monkeypatch.setattr(Path, "unlink", interrupted_unlink)
    with pytest.raises(Interrupted):
        points.drop_full_weights(run)
    assert artifacts.read_manifest(run).adapter_removed, "manifest flagged first"
    monkeypatch.setattr(Path, "unlink", real_unlink)
    points.drop_full_weights(run)
    assert not (run / artifacts.ADAPTER).exists()
    assert artifacts.read_manifest(run).labels == ["a", "b"]


@pytest.mark.slow  # a grid of trained cells
def test_a_failing_cell_is_recorded_and_the_grid_goes_on(tiny_dirs, tmp_path, monkeypatch, capsys):
    from test_artifacts_cli import run_cli

    from cuetune.errors import ConfigError

    _toy_kshot(tmp_path / "data", [13, 21])
    out = tmp_path / "out"
    path = _bench_file(tmp_path, tiny_dirs["causal"], out)
    real_train = real_api_train

    def failing_train(raw, *a, **k):
        if "zero-shot/k16-s13" in raw["output_dir"]:
            raise ConfigError("data.max_length: too short for this cell")
        return real_train(raw, *a, **k)

    monkeypatch.setattr(bench_cells, "train", failing_train)
    code, _, err = run_cli(["bench", str(path)], capsys)
    assert code == 2 and "1 of 4 cells failed" in err, err
    assert "bench [1/4] sst-2/zero-shot/k16-s13" in err and "bench [4/4] sst-2/soft/k16-s21" in err, (
        "a log (no terminal) gets one line per cell")
    rows = json.loads((out / "results.json").read_text())["cells"]
    assert [r["error"] is not None for r in rows] == [True, False, False, False]
    assert rows[0]["error"] == "ConfigError: data.max_length: too short for this cell"
    assert all(r["test_score"] is not None for r in rows[1:]), "later cells did not run"
    md = (out / "results.md").read_text()
    assert "- sst-2/zero-shot/k16-s13: ConfigError: data.max_length" in md
    zero = next(line for line in md.split("## Per seed")[1].splitlines() if line.startswith("| zero-shot"))
    assert "| failed / " in zero and "[1 of 2 seeds]" in zero, zero
    assert "Failed cells" in (out / "report.html").read_text()
    bench_cells.run_bench(*grid.load_bench(path, ["seeds=[21]"]), out)  # a narrowed resume of other seeds
    kept = json.loads((out / "results.json").read_text())["cells"]
    assert [r["error"] is not None for r in kept if r["seed"] == 13] == [True, False], (
        "a failure outside the narrowed grid stays recorded, not shown as never run")

    monkeypatch.setattr(bench_cells, "train", real_train)  # the cause is fixed: the rerun retries the cell
    rows = bench_cells.run_bench(*grid.load_bench(path), out)
    assert all(r["error"] is None and r["test_score"] is not None for r in rows)
    assert "Failed cells" not in (out / "results.md").read_text()


def test_bench_config_errors_name_the_field(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump({"tasks": ["sst2"], "methods": {"soft": {"method": {"name": "soft"}}}}))
    with pytest.raises(Exception, match="did you mean 'sst-2'|sst-2"):
        grid.load_bench(path)
    path.write_text(yaml.safe_dump({"tasks": ["sst-2"], "methods": {"soft": {"methd": {}}}}))
    with pytest.raises(Exception, match="methods.soft"):
        grid.load_bench(path)


def test_a_narrowed_grid_keeps_its_references_and_a_misspelt_one_is_refused(tmp_path):
    """RESULTS tells users to narrow a shipped grid with --set tasks=[...]: a reference for a task
    left out is drawn nowhere, not refused (it was: 'references.mr: not one of the bench's
    tasks'); a reference that names no task at all is still refused."""
    shipped = Path(__file__).resolve().parents[1] / "benchmarks" / "mixture-cpu.yaml"
    cfg, _ = grid.load_bench(shipped, ["tasks=[sst-2]"])
    assert cfg.tasks == ["sst-2"] and set(cfg.references) == {"sst-2", "mr"}
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump({"tasks": ["sst-2"], "methods": {"soft": {"method": {"name": "soft"}}},
                                    "references": {"sst2": {"score": 92.7, "label": "LM-BFF"}}}))
    with pytest.raises(ConfigError, match="references.sst2: not a task; did you mean 'sst-2'"):
        grid.load_bench(path)


def test_task_for_other_k_samples_from_the_split(tmp_path):
    _toy_kshot(tmp_path, [13])
    data = tasks.get("sst-2").sections(tmp_path, 4, 13)["data"]
    assert data["k_shot"] == 4 and data["k_shot_seed"] == 13
    with pytest.raises(Exception, match="larger than"):
        tasks.get("sst-2").sections(tmp_path, 32, 13)


def test_augment_is_seeded_and_keeps_labels():
    exs = [Example("the movie was really very good", None, 1), Example("bad", "a pair here", 0)]
    cfg = AugmentConfig(kind="token_dropout", p=0.5, copies=2)
    once, again = augment(exs, cfg, 3), augment(exs, cfg, 3)
    assert once == again and len(once) == 6 and once[:2] == exs
    assert [e.label for e in once] == [1, 0, 1, 0, 1, 0]
    assert all(e.text.split() for e in once)
    swapped = augment(exs, AugmentConfig(kind="swap", p=0.3), 0)[2]
    assert sorted(swapped.text.split()) == sorted(exs[0].text.split())


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["sst-2", "sst-5", "mr", "trec", "rte", "qnli", "boolq", "cb",
                                  "sst-2-glue"])
def test_every_task_reads_its_shared_files(name):
    if not SHARED.is_dir():
        pytest.skip("../shared/data is absent")
    from cuetune.config import DataConfig
    from cuetune.data.splits import load_splits

    task = tasks.get(name)
    data = task.sections(SHARED, 16, 13)["data"]
    splits = load_splits(DataConfig(**data))
    assert len(splits.labels) == len(task.verbalizer)
    assert len(splits.test) > 50 and splits.train and splits.dev
    if not task.fixed:
        counts = [sum(e.label == i for e in splits.train) for i in range(len(splits.labels))]
        assert counts == [16] * len(splits.labels), counts
    if task.data.get("text_pair_column"):
        assert all(e.text_pair for e in splits.train)


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_bench_config_validates_every_run(path, tmp_path):
    from cuetune.config import validate

    cfg, root = grid.load_bench(path)
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    for cell in grid.cells(cfg):
        entry = cfg.methods[cell.method]
        if entry.ensemble is not None:  # its members are rows of their own
            continue
        if entry.distill is not None:  # the student's own keys; the rest is the teacher's
            assert (root / entry.distill.pool).is_file(), entry.distill.pool
        for point in grid.grid_points(entry):
            validate(points.run_config(cfg, root, cell, point, tmp_path / "run"))


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["e2e", "multi30k", "boolq-qa", "samsum"])
def test_every_generation_task_reads_its_shared_files(name, tmp_path, monkeypatch):
    if not SHARED.is_dir():
        pytest.skip("../shared/data is absent")
    from cuetune.config import DataConfig
    from cuetune.data.splits import load_splits

    monkeypatch.setenv("CUETUNE_CACHE", str(tmp_path))  # converted files go to the cache only
    task = tasks.get(name)
    data = task.sections(SHARED, 32, 13)["data"]
    splits = load_splits(DataConfig(**data))
    assert len(splits.train) == 32 and len(splits.dev) == 32 and splits.labels == []
    assert len(splits.test) == 200 and all(e.refs and e.target for e in splits.test)
    if name == "e2e":  # several references per meaning representation
        assert sum(len(e.refs) for e in splits.test) / len(splits.test) > 3
    if name == "boolq-qa":
        assert {e.target for e in splits.test} == {"yes", "no"} and all(e.text_pair for e in splits.test)
    if name == "samsum":  # turns stay on their own lines (whitespace is not collapsed)
        assert all("\n" in e.text for e in splits.test[:20]) and "\r" not in splits.test[0].text
    if task.convert is not None:
        assert (tmp_path / "tasks" / name / "train.jsonl").is_file()


@pytest.mark.slow  # a grid of trained cells
def test_bench_runs_a_generation_task(tiny_dirs, tmp_path, monkeypatch):
    """A generation task goes through the same grid, dev selection and reports (toy task)."""
    rows = [{"text": r["text"], "target": r["text"].split()[0]} for r in toy_rows(40, 5)]
    folder = tmp_path / "data" / "copy"
    folder.mkdir(parents=True)
    for name, part in (("train.jsonl", rows[:24]), ("dev.jsonl", rows[24:32]), ("test.jsonl", rows[32:])):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in part))
    task = tasks.Task("copy-first", "copy", ("train.jsonl", "dev.jsonl", "test.jsonl"),
                      {"task": "generation"}, "{text} answer : {answer}", {}, split_k=None,
                      metric="exact_match", generate={"max_new_tokens": 3})
    monkeypatch.setitem(tasks.TASKS, task.name, task)
    spec = {"name": "gen", "model": {"name": str(tiny_dirs["causal"])}, "data_root": "data",
            "tasks": ["copy-first"], "k": [8], "seeds": [13],
            "train": {"max_steps": 6, "eval_every": 3, "batch_size": 4, "patience": None},
            "methods": {"zero-shot": {"method": {"name": "zero-shot"}},
                        "lora": {"method": {"name": "lora", "r": 4}, "grid": {"train.lr": [1e-4, 3e-3]}}},
            "output_dir": str(tmp_path / "out")}
    (tmp_path / "gen.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    cfg, root = grid.load_bench(tmp_path / "gen.yaml")
    out = bench_cells.run_bench(cfg, root, tmp_path / "out")
    assert [r["method"] for r in out] == ["zero-shot", "lora"]
    assert all(r["metric"] == "exact_match" and 0 <= r["test_score"] <= 1 for r in out)
    assert out[1]["grid_size"] == 2 and out[1]["dev_score"] > float("-inf")
    report = (tmp_path / "out" / "results.md").read_text()
    assert "copy-first (exact_match)" in report
    for r in out:  # every text metric is kept, on the 0-100 scale the run's eval.json has
        assert set(r["test_metrics"]) >= {"rouge_1", "rouge_2", "rouge_l", "bleu", "chrf"}
        assert r["test_metrics"]["exact_match"] == pytest.approx(100 * r["test_score"])
        assert "n" not in r["test_metrics"] and "truncated" not in r["test_metrics"]
    lora = out[1]["test_metrics"]
    line = next(x for x in report.splitlines() if x.startswith("| lora | 8 | 13 |"))
    assert line.split(" | ")[3:6] == [f"{lora[m]:.1f} (0.0)" for m in ("rouge_1", "rouge_2", "rouge_l")]


def test_a_method_entry_may_run_a_subset_of_the_seeds_and_k(tiny_dirs, tmp_path):
    """Zero-shot reads no training data: one seed gives its test score, and the reports do not
    call its single seed a half-finished cell."""
    from cuetune.bench import report

    out = tmp_path / "out"
    path = _bench_file(tmp_path, tiny_dirs["causal"], out)
    cfg, _ = grid.load_bench(path, ["methods.zero-shot.seeds=[21]"])
    assert [(c.method, c.seed) for c in grid.cells(cfg)] == [("zero-shot", 21), ("soft", 13), ("soft", 21)]
    for bad in ("[42]", "[]"):
        with pytest.raises(ConfigError, match=r"methods\.zero-shot\.seeds: .*subset of the grid's seeds"):
            grid.load_bench(path, [f"methods.zero-shot.seeds={bad}"])
    cfg, _ = grid.load_bench(path, ["methods.zero-shot.seeds=[21]", "seeds=[13]"])  # narrowed
    assert [(c.method, c.seed) for c in grid.cells(cfg)] == [("soft", 13)]
    cfg, _ = grid.load_bench(path, ["k=[16, 32]", "methods.zero-shot.k=[16]"])
    assert [(c.method, c.k) for c in grid.cells(cfg)].count(("zero-shot", 32)) == 0
    assert [(c.method, c.k) for c in grid.cells(cfg)].count(("soft", 32)) == 2
    with pytest.raises(ConfigError, match=r"methods\.zero-shot\.k: \[8\] must be a non-empty subset"):
        grid.load_bench(path, ["methods.zero-shot.k=[8]"])

    def row(method, seed, score):
        return {"task": "sst-2", "method": method, "k": 16, "seed": seed, "metric": "accuracy",
                "test_score": score, "test_macro_f1": None, "hyperparameters": {}, "wall_seconds": 10.0}

    rows = [row("zero-shot", 21, 0.5), row("soft", 13, 0.7)]
    own = {"zero-shot": [21], "soft": [13, 21]}
    lines = report.per_seed(rows, [13, 21], own).splitlines()
    assert "| zero-shot | 50.0 (0.0) [its 1 seed] | – / 50.0 | 10 |" in lines
    assert "| soft | 70.0 (0.0) [1 of 2 seeds] | 70.0 / – | 10 |" in lines
    table = report.markdown(rows, {"zero-shot": 1, "soft": 2})
    assert "| zero-shot | 50.0 (0.0) |" in table and "| soft | 70.0 (0.0) [1] |" in table
    fig = report.plot_bars(rows, 16, [13, 21], method_seeds=own)
    assert [t.get_text() for t in fig.axes[0].texts] == ["1 of 2"]  # soft only


def test_per_seed_table_shows_spread_choice_and_missing_seeds():
    from cuetune.bench import report

    def row(method, seed, score, hp):
        return {"task": "sst-2", "method": method, "k": 16, "seed": seed, "metric": "accuracy",
                "test_score": score, "test_macro_f1": None, "hyperparameters": hp, "wall_seconds": 10.0}

    rows = [row("prefix", 13, 0.80, {"train.lr": 0.01}), row("prefix", 21, 0.90, {"train.lr": 0.003}),
            row("zero-shot", 13, 0.5, {})]
    lines = report.per_seed(rows).splitlines()
    assert lines[0] == "**sst-2** (test accuracy %, K = 16; per seed 13 / 21)"
    assert "| prefix | 85.0 (5.0) | 80.0 / 90.0 | lr=0.01 / lr=0.003 | 10 |" in lines
    assert "| zero-shot | 50.0 (0.0) [1 of 2 seeds] | 50.0 / – | default / – | 10 |" in lines
    bench_seeds = report.per_seed(rows, seeds=[13, 21, 42]).splitlines()  # 42: no method finished
    assert bench_seeds[0].endswith("per seed 13 / 21 / 42)")
    assert "| prefix | 85.0 (5.0) [2 of 3 seeds] | 80.0 / 90.0 / – |" in bench_seeds[4]
    no_grid = report.per_seed([row("zero-shot", 13, 0.5, {})]).splitlines()
    assert no_grid[2] == "| method | mean (std) | per seed | mean wall s per cell |"


def test_bars_mark_methods_not_run_and_partial_seeds():
    from cuetune.bench import report

    def row(task, method, seed, score):
        return {"task": task, "method": method, "k": 16, "seed": seed, "test_score": score,
                "test_macro_f1": None, "wall_seconds": 1.0}

    rows = [row("sst-2", m, s, 0.8) for m in ("head", "full") for s in (13, 21)]
    rows += [row("mr", "head", 13, 0.6)]  # mr: head on one seed, full not run yet
    fig = report.plot_bars(rows, 16, seeds=[13, 21])
    sst2, mr = fig.axes
    assert [round(p.get_height()) for p in sst2.patches] == [80, 80]
    assert [t.get_text() for t in sst2.texts] == []
    assert [round(p.get_height()) for p in mr.patches] == [60]  # no bar at 0 for `full`
    assert sorted(t.get_text() for t in mr.texts) == ["1 of 2", "not run"]


def test_bars_show_each_seed_the_majority_class_and_a_reference():
    from cuetune.bench import report

    rows = [{"task": "sst-2", "method": m, "k": 16, "seed": seed, "test_score": score,
             "test_majority": 0.5, "test_macro_f1": None, "wall_seconds": 1.0}
            for m, seed, score in (("soft", 13, 0.7), ("soft", 21, 0.9), ("lora", 13, 0.8))]
    fig = report.plot_bars(rows, 16, seeds=[13, 21],
                           references={"sst-2": {"score": 92.7, "label": "LM-BFF RoBERTa-large"}})
    from matplotlib.collections import PathCollection

    [ax] = fig.axes
    seeds = [sorted(round(y) for _, y in c.get_offsets()) for c in ax.collections
             if isinstance(c, PathCollection)]  # the scatter points, not the error bars
    assert seeds == [[70, 90], [80]]
    lines = {round(line.get_ydata()[0], 1): line.get_label() for line in ax.get_lines()
             if not line.get_label().startswith("_")}  # labelled lines, not error-bar caps
    assert lines == {50.0: "majority class 50.0", 92.7: "LM-BFF RoBERTa-large 92.7"}


def test_fill_results_replaces_only_between_its_markers():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fill_results.py"
    spec = importlib.util.spec_from_file_location("fill_results", path)
    fill_results = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fill_results)
    doc = "intro\n<!-- t -->\nold\n<!-- /t -->\nafter <!-- u -->x<!-- /u -->\n"
    assert fill_results.fill(doc, "t", "new\n") == (
        "intro\n<!-- t -->\nnew\n<!-- /t -->\nafter <!-- u -->x<!-- /u -->\n")
    with pytest.raises(SystemExit, match="<!-- v -->"):
        fill_results.fill(doc, "v", "new")


def test_a_task_declared_in_the_bench_yaml_runs_like_a_named_one(tiny_dirs, toy_data, tmp_path):
    """`custom_tasks`: the user's own files (relative to the bench file), columns, labels,
    template, label words and metric; K per class is sampled per seed."""
    (tmp_path / "mine").mkdir()
    for split, src in toy_data.items():
        rows = [json.loads(x) for x in src.read_text().splitlines()]
        (tmp_path / "mine" / f"{split}.csv").write_text(
            "review,stars\n" + "".join(f"{r['text']},{'5' if r['label'] == 'positive' else '1'}\n"
                                       for r in rows))
    spec = {"train": "mine/train.csv", "dev": "mine/dev.csv", "test": "mine/test.csv",
            "data": {"text_column": "review", "label_column": "stars", "labels": ["1", "5"]},
            "template": "review : {text} sentiment : {answer}",
            "verbalizer": {"1": "negative", "5": "positive"}, "metric": "macro_f1"}
    raw = {"model": {"name": str(tiny_dirs["causal"])}, "tasks": ["stars"], "custom_tasks": {"stars": spec},
           "k": [4], "seeds": [13], "output_dir": str(tmp_path / "out"),
           "methods": {"zero-shot": {"method": {"name": "zero-shot"}}}}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg, root = grid.load_bench(path)
    [row] = bench_cells.run_bench(cfg, root, tmp_path / "out")
    assert row["error"] is None and row["metric"] == "macro_f1"
    assert row["train_examples"] == 8 and row["test_size"] == 24 and row["test_truncated"] == 0
    assert row["test_score"] >= 0.85  # the pretrained "review :" skill with the user's label words
    raw["custom_tasks"]["sst-2"] = spec
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="custom_tasks.sst-2: shadows the named task"):
        grid.load_bench(path)
    raw["custom_tasks"] = {"stars": {**spec, "tempalte": "x"}}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="tempalte"):
        grid.load_bench(path)


@pytest.mark.slow  # a grid of trained cells
def test_a_method_entry_can_search_its_prompt_before_training(tiny_dirs, toy_data, tmp_path):
    """`search:` in a method entry: the cell's prompt is the one the search chose on its dev
    split (here the task's own prompt reverses the tiny model's answers; the pool finds the
    trigger that does not), and two methods with the same search share it."""
    spec = {"train": str(toy_data["train"]), "dev": str(toy_data["dev"]), "test": str(toy_data["test"]),
            "data": {"labels": ["negative", "positive"]},
            "template": "question : {text} sentiment : {answer}",
            "verbalizer": {"negative": "negative", "positive": "positive"}}
    search = {"searchers": ["pool"], "calibrate": "off",
              "pool": {"input_cues": ["review :"], "answer_cues": ["sentiment :"], "max_candidates": 6}}
    raw = {"model": {"name": str(tiny_dirs["causal"])}, "tasks": ["toy"], "custom_tasks": {"toy": spec},
           "k": [8], "seeds": [13], "output_dir": str(tmp_path / "out"),
           "methods": {"hand": {"method": {"name": "zero-shot"}},
                       "searched": {"method": {"name": "zero-shot"}, "search": search},
                       "searched-too": {"method": {"name": "in-context"}, "search": search}}}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg, root = grid.load_bench(path)
    rows = {r["method"]: r for r in bench_cells.run_bench(cfg, root, tmp_path / "out")}
    assert rows["hand"]["test_score"] < 0.3
    assert rows["searched"]["test_score"] >= 0.9
    assert len(list((tmp_path / "out" / "search" / "toy").iterdir())) == 1, "one search, shared"
    searched = yaml.safe_load((Path(rows["searched"]["run_dir"]) / "config.yaml").read_text())
    assert "question :" not in searched["prompt"]["template"]
    raw["methods"]["searched"]["search"] = {**search, "seed": 3}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="methods.searched.search.seed: set by each bench cell"):
        grid.load_bench(path)


def test_a_bench_search_on_a_named_task_weighs_its_frozen_hand_baselines(tiny_dirs, tmp_path, monkeypatch):
    """A named task's search in a bench cell sees the task (its frozen hand baselines and cue
    phrases), as `cuetune search` with `search.task` does; the cell used to pass none, so the
    "best hand prompt" row picked among the config's own prompt only."""
    from cuetune.search import runner as search

    _toy_kshot(tmp_path / "data", [13])
    raw = yaml.safe_load(_bench_file(tmp_path, tiny_dirs["causal"], tmp_path / "out").read_text())
    raw.update(seeds=[13], methods={"hand": {"method": {"name": "zero-shot"}, "search": {"searchers": []},
                                             "prompt": {"verbalizer": {"0": "negative", "1": "positive"}}}})
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg, root = grid.load_bench(path)
    seen = []
    monkeypatch.setattr(points, "run_search",
                        lambda _, s: seen.append(s) or {"best": {"prompt": {}}, "combined": None})
    points.searched_prompt(cfg, root, grid.Cell("sst-2", "hand", 16, 13), tmp_path / "out")
    assert seen[0].task == "sst-2" and search.task_hints("sst-2")["baselines"]


def test_chinese_split_is_fixed_stratified_and_drops_empty_reviews(tmp_path):
    """The converter on a small CSV sorted by label, as the real files are: a seeded,
    label-stratified split, the same every time, without the empty review."""
    rows = [("1", f"好评{i}") for i in range(60)] + [("1", "")] + [("0", f"差评{i}") for i in range(40)]
    (tmp_path / "r.csv").write_text("label,review\n" + "".join(f"{lab},{txt}\n" for lab, txt in rows),
                                    encoding="utf-8")
    convert = tasks._chinese("r.csv", test=20, dev=10)
    first, again = convert(tmp_path), convert(tmp_path)
    assert first == again
    sizes = {k: len(v) for k, v in first.items()}
    assert sizes == {"test.jsonl": 20, "dev.jsonl": 10, "train.jsonl": 70}
    assert sum(r["label"] == "1" for r in first["test.jsonl"]) == 12  # 60 of 100: 12 of 20
    texts = [r["text"] for split in first.values() for r in split]
    assert len(texts) == len(set(texts)) == 100 and "" not in texts


def test_samsum_keeps_one_turn_a_line_and_drops_empty_dialogues(tmp_path):
    lines = [{"id": "1", "dialogue": "Amanda: Hi\r\nJerry: Hello  \r\n", "summary": "They greet. "},
             {"id": "2", "dialogue": "", "summary": "Nothing."}]
    for name in ("train.json", "validation.json", "test.json"):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    out = tasks._samsum(tmp_path)
    assert out["train.jsonl"] == [{"text": "Amanda: Hi\nJerry: Hello", "target": "They greet."}]



def test_a_run_config_names_a_task_and_keeps_its_own_keys(tmp_path, monkeypatch):
    """`task:` in a run config fills the split, prompt and decoding a bench cell would get; the
    config's own keys win, and the split seed is the training seed unless one is set."""
    monkeypatch.setenv("CUETUNE_CACHE", str(tmp_path / "cache"))
    rows = [{"id": str(i), "dialogue": f"A: hi {i}\r\nB: yo", "summary": f"They greet {i}."}
            for i in range(12)]
    (tmp_path / "data" / "samsum").mkdir(parents=True)
    for name in ("train.json", "validation.json", "test.json"):
        (tmp_path / "data" / "samsum" / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "cfg" / "samsum.yaml"
    path.parent.mkdir()
    path.write_text("task: {name: samsum, k: 8, seed: 21, data_root: ../data}\n"
                    'prompt: {template: "Chat:\\n{text}\\nGist: {answer}"}\nmethod: {name: lora}\n')
    cfg = load_config(path)
    assert cfg.data.task == "generation" and cfg.data.k_shot == 8 and cfg.data.k_shot_seed == 21
    assert cfg.data.train == str(tmp_path / "cache" / "tasks" / "samsum" / "train.jsonl")
    assert cfg.prompt.template == "Chat:\n{text}\nGist: {answer}" and cfg.generate.stop == ["\n"]
    assert cfg.train.seed == 21 and cfg.data.max_length == 512
    assert load_config(path, ["train.seed=5", "task.k=4"]).train.seed == 5
    with pytest.raises(ConfigError, match="samsum.yaml: task.name: Field required; e.g. task: {name"):
        load_config(path, ["task={k: 4}"])
    with pytest.raises(ConfigError, match="samsum.yaml: task 'samsun' is not known; did you mean"):
        load_config(path, ["task.name=samsun"])
    with pytest.raises(ConfigError, match="samsum.yaml: task samsum: .*nowhere/samsum not found"):
        load_config(path, ["task.data_root=../nowhere"])


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["chnsenticorp", "waimai"])
def test_chinese_tasks_read_their_shared_files(name, tmp_path, monkeypatch):
    if not SHARED.is_dir():
        pytest.skip("../shared/data is absent")
    from cuetune.config import DataConfig
    from cuetune.data.splits import load_splits

    monkeypatch.setenv("CUETUNE_CACHE", str(tmp_path))
    task = tasks.get(name)
    sections = task.sections(SHARED, 16, 13)
    assert sections["prompt"]["multi_token"] == "chain"
    splits = load_splits(DataConfig(**sections["data"]))
    assert [sum(e.label == i for e in splits.train) for i in (0, 1)] == [16, 16]
    assert len(splits.test) == 1000 and len(splits.dev) == 32
    stamp = (tmp_path / "tasks" / name / "test.jsonl").stat().st_mtime_ns
    task.sections(SHARED, 16, 21)
    assert (tmp_path / "tasks" / name / "test.jsonl").stat().st_mtime_ns == stamp, "written once"
    test_texts = {e.text for e in splits.test}
    train_file = (tmp_path / "tasks" / name / "train.jsonl").read_text(encoding="utf-8")
    assert not any(json.loads(line)["text"] in test_texts for line in train_file.splitlines())


@pytest.mark.slow  # a grid of trained cells
def test_ensemble_and_distilled_rows_sit_in_the_table(tiny_dirs, tmp_path):
    """An ensemble row combines other rows' runs of its cell; a distilled row trains a student
    from a teacher row on a pool; members and teachers run first whatever the order, and a
    rerun reads every row back."""
    from cuetune.runs import ensemble

    _toy_kshot(tmp_path / "data", [13])
    pool = tmp_path / "data" / "pool.tsv"
    pool.write_text("sentence\tlabel\n" + "".join(f"{r['text']}\t0\n" for r in toy_rows(40, 5)))
    out = tmp_path / "out"
    path = _bench_file(tmp_path, tiny_dirs["causal"], out)
    raw = yaml.safe_load(path.read_text())
    raw["seeds"] = [13]
    raw["methods"]["soft"].pop("grid")
    raw["methods"]["soft"]["train"] = {"lr": 0.1}
    raw["methods"] = {"student": {"method": {"name": "soft"}, "train": {"lr": 0.1},
                                  "distill": {"teacher": "ens", "pool": "pool.tsv", "size": 24}},
                      "ens": {"ensemble": {"members": ["zero-shot", "soft"]}}, **raw["methods"]}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg, root = grid.load_bench(path)
    rows = {r["method"]: r for r in bench_cells.run_bench(cfg, root, out)}
    assert all(r["error"] is None for r in rows.values()), rows
    ens = ensemble.load_ensemble(rows["ens"]["run_dir"])
    want = [Path(rows[m]["run_dir"]).resolve() for m in ("zero-shot", "soft")]
    assert [m.run_dir for m in ens.members] == want
    test = ens.read(tmp_path / "data/kshot/SST-2/16-13/test.tsv")
    assert rows["ens"]["test_score"] == ens.score(test)["accuracy"]
    student = load_run(rows["student"]["run_dir"])
    assert student.manifest.metrics["distillation"]["teacher"] == str(Path(rows["ens"]["run_dir"]).resolve())
    assert rows["student"]["train_examples"] == 24  # the pool's size, in the table
    assert "student" in (out / "results.md").read_text()
    again = {r["method"]: r for r in bench_cells.run_bench(cfg, root, out)}
    assert {m: r["test_score"] for m, r in again.items()} == {m: r["test_score"] for m, r in rows.items()}


@pytest.mark.parametrize(("methods", "match"), [
    ({"e": {"ensemble": {"members": ["soft", "nope"]}}}, "'nope' is not another row"),
    ({"e": {"ensemble": {"members": ["soft", "zero-shot"]}, "train": {"lr": 1}}},
     r"e\.train: a combined row"),
    ({"d": {"distill": {"teacher": "soft", "pool": "p.tsv"}}}, r"d\.method: missing"),
    ({"e": {"ensemble": {"members": ["soft", "zero-shot"]}},
      "f": {"ensemble": {"members": ["soft", "e"]}}}, "is itself combined"),
])
def test_combined_rows_that_cannot_run_are_refused(tiny_dirs, tmp_path, methods, match):
    path = _bench_file(tmp_path, tiny_dirs["causal"], tmp_path / "out")
    raw = yaml.safe_load(path.read_text())
    raw["methods"].update(methods)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError, match=match):
        grid.load_bench(path)
