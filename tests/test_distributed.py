"""Several processes on CPU (gloo), launched the way users launch them (`accelerate launch`).

The same global batch on 1 and 2 processes gives the same first-step gradients (within 1e-6:
only the order of summation differs); a 10-step run's losses stay within 1e-4 of each other
(Adam turns rounding differences into drift, docs/PERFORMANCE.md); every test row is scored
once; only the main process writes; an interrupted 2-process run resumes to the same result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import toy_config

from cuetune.engine.checkpoint import CHECKPOINT
from cuetune.runs import artifacts

WORKER = Path(__file__).with_name("dist_worker.py")
pytestmark = [pytest.mark.slow,  # several processes, each loading its model
              pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")]


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(WORKER.parent), *sys.path])}
    env.pop("WORLD_SIZE", None)
    return env


def _launch(n: int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`args` under `accelerate launch` with n processes (n=1: plain python, no process group)."""
    if n == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), *args]
    run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    if check and run.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}")
    return run


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp_path, tiny_dirs, toy_data, name: str, **sections) -> Path:
    cfg = toy_config(tiny_dirs["causal"], toy_data, tmp_path / name, **sections)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize("method", ["soft", "lora", "prompt-ft"])
def test_first_step_gradients_and_scoring_match_one_process(tiny_dirs, toy_data, tmp_path, method):
    # batch 7: the slices are 3 and 4 rows, so the weighting by share is exercised
    path = _config(tmp_path, tiny_dirs, toy_data, method, method={"name": method},
                   train={"batch_size": 7})
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    _launch(1, str(WORKER), "grads", str(path), str(one))
    _launch(2, str(WORKER), "grads", str(path), str(two))
    a, b = torch.load(one), torch.load(two)
    assert a["seen"] == b["seen"] == 7 and a["ok"] and b["ok"]
    assert abs(a["loss"] - b["loss"]) < 1e-6
    assert len(a["grads"]) == len(b["grads"]) > 0
    assert any(g.abs().max() > 0 for g in a["grads"])  # (LoRA's A starts with none: B is zero)
    for ga, gb in zip(a["grads"], b["grads"], strict=True):
        torch.testing.assert_close(gb, ga, atol=1e-6, rtol=0)
    n = b["n_test"]
    assert sorted(i for _, i in b["who"]) == list(range(n)), "each test row scored exactly once"
    assert {r for r, _ in b["who"]} == {0, 1}, "both processes scored rows"
    torch.testing.assert_close(b["probs"], a["probs"], atol=1e-6, rtol=0)


def test_accelerate_launch_trains_writes_once_and_resumes(tiny_dirs, toy_data, tmp_path):
    train = {"max_steps": 10, "eval_every": 5, "checkpoint_every": 4, "batch_size": 8}
    single = _config(tmp_path, tiny_dirs, toy_data, "single", train=train)
    double = _config(tmp_path, tiny_dirs, toy_data, "double", train=train)
    _launch(1, "-m", "cuetune", "train", str(single))
    run = _launch(2, "-m", "cuetune", "train", str(double))
    assert run.stdout.count('"run_dir"') == 1, "only the main process prints"

    def losses(run_dir):
        return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]

    one, two = losses(tmp_path / "single"), losses(tmp_path / "double")
    assert len(one) == len(two) == 10  # one writer: no duplicated rows
    assert max(abs(x - y) for x, y in zip(one, two, strict=True)) < 1e-4
    m1, m2 = artifacts.read_manifest(tmp_path / "single"), artifacts.read_manifest(tmp_path / "double")
    assert m2.metrics["test"]["n"] == m1.metrics["test"]["n"] == 24
    assert not (tmp_path / "double" / CHECKPOINT).exists()

    crashed = _config(tmp_path, tiny_dirs, toy_data, "crashed", train=train)
    died = _launch(2, str(WORKER), "crash", str(crashed), check=False)
    assert died.returncode != 0 and (tmp_path / "crashed" / CHECKPOINT).exists()
    assert not (tmp_path / "crashed" / artifacts.MANIFEST).exists()
    _launch(2, "-m", "cuetune", "train", "--resume", str(tmp_path / "crashed"))
    assert losses(tmp_path / "crashed") == two, "the resumed 2-process run equals the uninterrupted one"
    resumed = artifacts.read_manifest(tmp_path / "crashed")
    assert resumed.training.resumed_from == 4
    assert resumed.metrics["test"] == m2.metrics["test"]
