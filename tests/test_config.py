from pathlib import Path

import pytest
import yaml

from cuetune import config
from cuetune.bench import grid, points
from cuetune.errors import ConfigError
from cuetune.methods import check_settings
from cuetune.methods.soft import SoftConfig
from cuetune.runs.config_file import load as load_config

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "examples").glob("*.yaml"))


def test_default_config_loads():
    cfg = load_config(None)
    assert cfg.model.name == "smollm2-135m"
    assert isinstance(cfg.method, SoftConfig)
    assert Path(cfg.data.train).is_file()


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_loads(path, tmp_path):
    """Run configs: their data files exist and no key is one the method would ignore. Bench
    configs: every cell's run config validates the same way; search configs: their run config."""
    raw = yaml.safe_load(path.read_text())
    if "search" in raw:  # a search config: a run config plus its search section
        from cuetune import search

        root = path.parent / raw["search"].get("data_root", "")
        if raw["search"].get("task") and not root.is_dir():
            pytest.skip(f"{root} is absent")
        runs = [search.load_config(path)[0]]
    elif "tasks" in raw:
        bench_cfg, root = grid.load_bench(path)
        raws = [points.run_config(bench_cfg, root, cell, point, tmp_path / "run")
                for cell in grid.cells(bench_cfg)
                for point in grid.grid_points(bench_cfg.methods[cell.method])]
        runs = [config.validate(raw) for raw in raws]
    else:
        task = raw.get("task") or {}
        if task and not (path.parent / task.get("data_root", "../shared/data")).is_dir():
            pytest.skip(f"{task.get('data_root')} is absent")
        runs = [load_config(path)]
    shared = (Path(__file__).resolve().parents[2] / "shared" / "data")
    for cfg in runs:
        check_settings(cfg.method, cfg.prompt.template, cfg.train)
        for split in ("train", "dev", "test"):
            name = getattr(cfg.data, split)
            if name and shared in Path(name).resolve().parents and not shared.is_dir():
                pytest.skip(f"{path.name} reads {shared}, which is absent")
            assert name is None or Path(name).is_file(), f"{path.name}: data.{split} {name} missing"


def test_packaged_generation_config_loads_with_its_data():
    cfg = load_config("pkg:data2text.yaml")
    assert cfg.data.task == "generation" and cfg.generate.stop == ["\n"]
    for split in ("train", "dev", "test"):
        assert Path(getattr(cfg.data, split)).is_file()
    with pytest.raises(ConfigError, match="no such packaged config"):
        load_config("pkg:nope.yaml")


def test_overrides_are_typed():
    cfg = load_config(None, ["train.lr=0.01", "method.num_tokens=7", "train.patience=null",
                             "data.labels=[neg, pos]"])
    assert cfg.train.lr == 0.01 and cfg.method.num_tokens == 7 and cfg.train.patience is None
    assert cfg.data.labels == ["neg", "pos"]


@pytest.mark.parametrize("override, fragment", [
    ("train.lrr=0.1", "train.lrr: unknown key; did you mean 'lr'"),
    ("trian.lr=0.1", "did you mean 'train'"),
    ("method.num_tokns=3", "did you mean 'num_tokens'"),
    ("method.name=sofft", "did you mean 'soft'"),
    ("train.batch_size=0", "train.batch_size"),
    ("noequals", "expected key=value"),
])
def test_bad_keys_name_the_field(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert fragment in str(info.value)


def test_yaml_error_names_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: x\n train: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: invalid YAML"):
        load_config(bad)


def test_paths_resolve_relative_to_config(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "t.jsonl").write_text("{}\n")
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("data:\n  train: d/t.jsonl\n")
    assert load_config(cfg_file).data.train == str(tmp_path / "d" / "t.jsonl")


def test_string_overrides_are_kept_as_typed():
    cfg = load_config(None, ["prompt.template={text} It was {answer}.", "prompt.instruction=null",
                             "prompt.verbalizer={negative: bad, positive: good}"])
    assert cfg.prompt.template == "{text} It was {answer}."
    assert cfg.prompt.instruction is None
    assert cfg.prompt.verbalizer == {"negative": "bad", "positive": "good"}
