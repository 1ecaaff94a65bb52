"""A bench grid beyond one process: shards for batch schedulers, and a Ray cluster.

- `--shard I/N` (Slurm arrays and the like): shard I runs every N-th cell, starting at the
  I-th, into its own complete bench folder `OUT/shards/I-of-N/` (resumable like any grid);
  `--merge` joins the shards' `results.json` rows into `OUT`'s reports. A shard folder made
  under other settings is refused, not merged.
- `--ray ADDRESS` (`local` starts a cluster on this machine): one Ray task per cell, each with
  its CPU (and GPU) request and its thread count pinned to it, rows collected by this process
  into the usual reports after every finished cell. Cells that share a prompt search (same
  task, K and seed) run in one task, one after another, so no two write the same search
  folder. Run folders are written by the workers under OUT: on a multi-node cluster OUT must be
  on storage every node sees (the rows still come back through Ray if it is not, and a rerun
  reads finished cells back from results.json).

Both keep the grid's resume contract: a rerun of the same command skips finished cells.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import astuple
from pathlib import Path

import torch

from cuetune.bench import report
from cuetune.bench.cells import run_bench, run_cell
from cuetune.bench.grid import BenchConfig, Cell, cells, linked
from cuetune.bench.points import failed_row
from cuetune.bench.results import Results, recorded_rows
from cuetune.errors import ConfigError, CuetuneError

SHARDS = "shards"


def parse_shard(text: str) -> tuple[int, int]:
    """"I/N" -> (I, N), 1 <= I <= N."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected I/N, e.g. 2/4 for the second of four shards") from None
    if not 1 <= i <= n:
        raise ConfigError(f"--shard {text}: I must be between 1 and N")
    return i, n


def shard_folder(out: Path, i: int, n: int) -> Path:
    return out / SHARDS / f"{i}-of-{n}"


def run_shard(cfg: BenchConfig, root: Path, out: Path, i: int, n: int, progress=None) -> list[dict]:
    """Run shard i of n (every n-th cell from the i-th) into its own folder; its rows."""
    mine = cells(cfg)[i - 1::n]
    if not mine:
        raise ConfigError(f"--shard {i}/{n}: the grid has only {len(cells(cfg))} cells, none for this shard")
    return run_bench(cfg, root, shard_folder(out, i, n), progress, only=mine)


def join(cfg: BenchConfig, out: Path) -> tuple[list[dict], list[str]]:
    """Join every shard's finished rows into `out`'s reports -> (rows in grid order, missing
    cell keys). Rows a shard wrote under other settings are refused with the shard's name."""
    folders = sorted(p.parent for p in (out / SHARDS).glob("*/results.json"))
    if not folders:
        raise CuetuneError(f"{out / SHARDS}: no shard results to merge; run `cuetune bench CONFIG "
                           "--shard I/N` for each shard first (with the same --out)")
    found: dict[str, dict] = {}
    for folder in folders:
        saved = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        rows = recorded_rows(cfg, folder, with_failed=True)
        if saved["cells"] and not rows:
            raise ConfigError(f"{folder}: written under other bench settings than {cfg.name!r}; "
                              "rerun that shard with this config, or move it aside")
        for key, row in rows.items():
            if key not in found or found[key].get("error"):  # a finished row beats a failed one
                found[key] = row
    todo = cells(cfg)
    rows = [found[c.key] for c in todo if c.key in found]
    report.write_all(cfg, rows, out)
    return rows, [c.key for c in todo if c.key not in found]


def _cell_task(raw_cfg: dict, folder: str, root: str, group: list[tuple], out: str,
               threads: int) -> list[dict]:
    """Runs in a Ray worker: the group's cells one after another, threads pinned."""
    torch.set_num_threads(threads)
    cfg = BenchConfig.model_validate(raw_cfg)
    cfg._folder = Path(folder)
    rows = []
    for values in group:
        cell, start = Cell(*values), time.perf_counter()
        try:
            rows.append(run_cell(cfg, Path(root), cell, Path(out)))
        except Exception as exc:  # recorded in the row, as the sequential grid does
            rows.append(failed_row(cfg, cell, exc, time.perf_counter() - start))
    return rows


def _groups(cfg: BenchConfig, todo: list[Cell]) -> list[list[Cell]]:
    """One group per cell, except cells that share a prompt search, or that an ensemble or a
    distilled row combines: one group per (task, K, seed), run in grid order on one worker."""
    groups: dict[object, list[Cell]] = {}
    for c in todo:
        together = cfg.methods[c.method].search is not None or linked(cfg.methods, c.method)
        key = (c.task, c.k, c.seed) if together else c.key
        groups.setdefault(key, []).append(c)
    return list(groups.values())


def run_ray(cfg: BenchConfig, root: Path, out: Path, address: str = "local", cpus: float = 1,
            gpus: float = 0, progress: Callable[[int, int, Cell | None], None] | None = None,
            init: dict | None = None) -> list[dict]:
    """Run (or resume) the grid as Ray tasks; write the reports after every finished cell.

    `address`: "local" starts a cluster here; anything else is passed to `ray.init` ("auto",
    "ray://head:10001"). `init`: more `ray.init` arguments (e.g. num_cpus for a local cluster)."""
    try:
        import ray
    except ImportError:
        raise CuetuneError("--ray needs Ray: pip install 'cuetune[ray]'") from None
    if cpus <= 0 or gpus < 0:
        raise ConfigError(f"--cpus-per-cell {cpus} / --gpus-per-cell {gpus}: need cpus > 0, gpus >= 0")
    todo = cells(cfg)
    results = Results(cfg, out, todo)  # the rest run, or are read back from their folders by a worker
    left = [c for c in todo if c.key not in results.kept]
    threads = max(1, int(cpus))
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false"}
    ray.init(address=None if address == "local" else address, ignore_reinit_error=True,
             runtime_env={"env_vars": env}, log_to_driver=False, **(init or {}))
    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(_cell_task)
    raw = cfg.model_dump(mode="json")
    pending = {task.remote(raw, str(cfg._folder), str(root), [astuple(c) for c in g], str(out), threads): g
               for g in _groups(cfg, left)}
    if progress:
        progress(len(results.rows), len(todo), None)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        group = pending.pop(ready[0])
        try:
            got = ray.get(ready[0])
        except ray.exceptions.RayError as exc:  # a worker died: its cells fail, the grid goes on
            got = [failed_row(cfg, c, exc, 0.0) for c in group]
        results.add(got)
        if progress:
            progress(len(results.rows), len(todo), group[-1])
    if not left:
        results.write()
    return results.ordered()
