"""The bench grid beyond one process: shards joined by --merge, and cells as Ray tasks. Both
must give the rows the sequential grid gives (threads pinned alike), and stay resumable."""

from __future__ import annotations

import json

import pytest
import torch
from test_bench import _bench_file, _toy_kshot
from typer.testing import CliRunner

from cuetune.bench import cells as bench_cells
from cuetune.bench import grid as bench_grid
from cuetune.bench import shards as bench_dist
from cuetune.cli import app
from cuetune.errors import ConfigError, CuetuneError

VARYING = ("wall_seconds", "run_dir")  # where and how long; everything else must match

pytestmark = pytest.mark.slow  # whole grids, sharded and on a Ray cluster


def _same(rows):
    return [{k: v for k, v in r.items() if k not in VARYING} for r in rows]


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # what each shard / Ray worker is pinned to
    yield
    torch.set_num_threads(before)


@pytest.fixture
def grid(tiny_dirs, tmp_path, one_thread):
    """The toy grid (zero-shot and a 2-point soft grid, 2 seeds) run sequentially."""
    _toy_kshot(tmp_path / "data", [13, 21])
    path = _bench_file(tmp_path, tiny_dirs["causal"], tmp_path / "seq")
    cfg, root = bench_grid.load_bench(path)
    return path, cfg, root, bench_cells.run_bench(cfg, root, tmp_path / "seq")


def test_shards_merge_into_the_sequential_rows(grid, tmp_path, monkeypatch):
    path, cfg, root, sequential = grid
    out = tmp_path / "sharded"
    first = bench_dist.run_shard(cfg, root, out, 1, 3)
    assert [(r["method"], r["seed"]) for r in first] == [("zero-shot", 13), ("soft", 21)]
    assert (out / "shards" / "1-of-3" / "results.md").is_file()
    rows, missing = bench_dist.join(cfg, out)
    assert len(rows) == 2 and len(missing) == 2
    bench_dist.run_shard(cfg, root, out, 2, 3)
    bench_dist.run_shard(cfg, root, out, 3, 3)
    calls = []
    monkeypatch.setattr(bench_cells, "train", lambda *a, **k: calls.append(a))
    bench_dist.run_shard(cfg, root, out, 3, 3)  # a rerun resumes: nothing trains again
    assert calls == []
    rows, missing = bench_dist.join(cfg, out)
    assert missing == [] and _same(rows) == _same(sequential)
    merged = json.loads((out / "results.json").read_text())
    assert _same(merged["cells"]) == _same(sequential)

    other, _ = bench_grid.load_bench(path, ["train.max_steps=3"])
    with pytest.raises(ConfigError, match="other bench settings"):
        bench_dist.join(other, out)
    with pytest.raises(CuetuneError, match="no shard results"):
        bench_dist.join(cfg, tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="none for this shard"):
        bench_dist.run_shard(cfg, root, out, 5, 5)


@pytest.mark.parametrize("text", ["2", "0/3", "4/3", "a/b"])
def test_bad_shard_is_refused(text):
    with pytest.raises(ConfigError, match="--shard"):
        bench_dist.parse_shard(text)


def test_run_modes_are_exclusive(tmp_path, tiny_dirs):
    path = _bench_file(tmp_path, tiny_dirs["causal"], tmp_path / "out")
    result = CliRunner().invoke(app, ["bench", str(path), "--join", "--shard", "1/2"])
    assert result.exit_code != 0 and "pick one" in result.output
    result = CliRunner().invoke(app, ["bench", str(path), "--cpus-per-cell", "2"])
    assert result.exit_code != 0 and "--ray only" in result.output


def test_ray_cells_give_the_sequential_rows(grid, tmp_path):
    ray = pytest.importorskip("ray")
    _, cfg, root, sequential = grid
    out = tmp_path / "ray"
    seen = []
    try:
        rows = bench_dist.run_ray(cfg, root, out, "local", cpus=1,
                                  init={"num_cpus": 2, "include_dashboard": False},
                                  progress=lambda done, total, cell: seen.append((done, total)))
        assert _same(rows) == _same(sequential)
        assert _same(json.loads((out / "results.json").read_text())["cells"]) == _same(sequential)
        assert seen[0] == (0, 4) and seen[-1] == (4, 4)
        again = bench_dist.run_ray(cfg, root, out, "local", cpus=1)  # resumes: every cell read back
        assert _same(again) == _same(sequential)
    finally:
        ray.shutdown()
