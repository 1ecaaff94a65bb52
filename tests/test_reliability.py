"""Faults: kill -9 and resume, non-finite losses, unwritable or full disks.

Each test here is listed with its result in docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import toy_config

import cuetune
from cuetune.engine import forward as engine
from cuetune.engine.checkpoint import CHECKPOINT, load_checkpoint
from cuetune.errors import CuetuneError
from cuetune.runs import train as api

TIMING = ("examples_per_s", "elapsed_s")


def _cli(*args) -> list[str]:
    return [sys.executable, "-c", "from cuetune.cli import main; main()", *args]


def _rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _config(tiny_dirs, toy_data, out: Path, **train) -> dict:
    raw = toy_config(tiny_dirs["causal"], toy_data, out)
    raw["train"].update({"max_steps": 300, "checkpoint_every": 7, "eval_every": 25,
                         "lr": 0.05, "zero_shot_baseline": False, **train})
    return raw


@pytest.mark.slow  # a training process killed and resumed
def test_kill_9_then_resume_is_bit_identical(tiny_dirs, toy_data, tmp_path):
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    for name in ("ref", "killed"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(
            _config(tiny_dirs, toy_data, tmp_path / name)))
    subprocess.run(_cli("train", str(tmp_path / "ref.yaml")), check=True, env=env, capture_output=True)

    kill_after = random.Random().randint(20, 250)  # any step must do; printed if it fails
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(_cli("train", str(tmp_path / "killed.yaml")), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count("\n") >= kill_after:
            break
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, f"the run finished before the kill at step {kill_after}"
    assert not (run_dir / "cuetune.json").exists()
    ckpt = load_checkpoint(run_dir)
    assert ckpt is not None and ckpt.state["step"] <= kill_after + 7

    subprocess.run(_cli("train", "--resume", str(run_dir)), check=True, env=env, capture_output=True)
    ref, got = tmp_path / "ref", run_dir
    assert (got / "adapter.safetensors").read_bytes() == (ref / "adapter.safetensors").read_bytes(), \
        f"adapter differs after a kill at step {kill_after}"
    assert _rows(got) == _rows(ref), f"metrics differ after a kill at step {kill_after}"
    m_ref, m_got = (json.loads((d / "cuetune.json").read_text()) for d in (ref, got))
    assert m_got["metrics"] == m_ref["metrics"]
    assert m_got["training"]["resumed_from"] == ckpt.state["step"]
    assert not (got / CHECKPOINT).exists(), "a finished run keeps no checkpoint"


class NaNAt:
    """Make the model's scores NaN on the n-th training forward pass."""

    def __init__(self, monkeypatch, n: int):
        self.calls, self.n = 0, n
        original = engine.PromptModel.forward

        def forward(model, batch):
            out = original(model, batch)
            if model.training:
                self.calls += 1
                if self.calls == self.n:
                    return out * float("nan")
            return out

        monkeypatch.setattr(engine.PromptModel, "forward", forward)


def test_nan_stops_with_the_step_and_keeps_the_last_checkpoint(tiny_dirs, toy_data, tmp_path,
                                                               monkeypatch):
    raw = _config(tiny_dirs, toy_data, tmp_path / "run", max_steps=30, checkpoint_every=5)
    NaNAt(monkeypatch, 12)
    with pytest.raises(CuetuneError, match="non-finite loss or gradient at step 12"):
        cuetune.train(raw)
    assert not (tmp_path / "run" / "cuetune.json").exists()
    assert load_checkpoint(tmp_path / "run").state["step"] == 10
    monkeypatch.undo()  # the fault is gone: resuming finishes the run
    manifest = api.resume_run(tmp_path / "run")
    assert manifest.training.resumed_from == 10 and manifest.training.steps == 30


def test_nan_skip_policy_counts_and_finishes(tiny_dirs, toy_data, tmp_path, monkeypatch):
    raw = _config(tiny_dirs, toy_data, tmp_path / "run", max_steps=30, on_nonfinite="skip")
    NaNAt(monkeypatch, 12)
    manifest = cuetune.train(raw)
    assert manifest.training.skipped_steps == 1
    rows = _rows(tmp_path / "run")
    assert rows[11]["skipped"] is True and rows[11]["loss"] is None
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if r["loss"] is not None)


def test_two_phase_method_resumes_identically(tiny_dirs, toy_data, tmp_path, monkeypatch):
    """Two-stage training interrupted in its first phase ends like an uninterrupted run."""
    def raw(out):
        r = _config(tiny_dirs, toy_data, out, max_steps=30, checkpoint_every=4, eval_every=5)
        r["method"] = {"name": "two-stage", "soft_lr": 0.1, "tune_lr": 0.02}
        r["train"].pop("lr", None)  # two-stage's rates are its own (train.lr is refused)
        return r

    ref = cuetune.train(raw(tmp_path / "ref"))
    NaNAt(monkeypatch, 11)  # a crash stand-in: the run stops after the step-8 checkpoint
    with pytest.raises(CuetuneError, match="at step 11"):
        cuetune.train(raw(tmp_path / "cut"))
    monkeypatch.undo()
    got = api.resume_run(tmp_path / "cut")
    assert got.metrics == ref.metrics
    assert _rows(tmp_path / "cut") == _rows(tmp_path / "ref")
    assert ((tmp_path / "cut" / "adapter.safetensors").read_bytes()
            == (tmp_path / "ref" / "adapter.safetensors").read_bytes())


def test_unwritable_output_dir_fails_before_training(tiny_dirs, toy_data, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(CuetuneError, match="not writable"):
        cuetune.train(_config(tiny_dirs, toy_data, blocker / "run"))


def test_full_disk_is_refused_before_training(tiny_dirs, toy_data, tmp_path, monkeypatch):
    monkeypatch.setattr(api.shutil, "disk_usage", lambda _: type("U", (), {"free": 1000})())
    with pytest.raises(CuetuneError, match="MB free"):
        cuetune.train(_config(tiny_dirs, toy_data, tmp_path / "run"))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_disk_full_mid_write_leaves_no_finished_run(tiny_dirs, toy_data, tmp_path, monkeypatch):
    import errno

    from cuetune import atomic

    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith("adapter.safetensors"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(CuetuneError, match="No space left on device"):
        cuetune.train(_config(tiny_dirs, toy_data, tmp_path / "run", max_steps=10))
    run_dir = tmp_path / "run"
    assert not (run_dir / "cuetune.json").exists()
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_only_safetensors_and_json_are_written_or_read(tiny_dirs, toy_data, tmp_path):
    raw = _config(tiny_dirs, toy_data, tmp_path / "run", max_steps=10, checkpoint_every=3)
    cuetune.train(raw)
    allowed = {".safetensors", ".json", ".jsonl", ".yaml", ".png"}
    assert {p.suffix for p in (tmp_path / "run").iterdir()} <= allowed
    src = Path(cuetune.__file__).parent
    for path in src.rglob("*.py"):
        text = path.read_text()
        assert "torch.load(" not in text and "import pickle" not in text, path


MARKER_CODE = """
import os
from pathlib import Path

from transformers import LlamaConfig, LlamaForCausalLM

Path(os.environ["CUETUNE_TEST_MARKER"]).write_text("the model's own code ran")


class MarkerConfig(LlamaConfig):
    model_type = "markerllama"


class MarkerForCausalLM(LlamaForCausalLM):
    config_class = MarkerConfig
"""


def test_remote_code_is_off_unless_asked(tiny_dirs, toy_data, tmp_path, monkeypatch, capsys):
    """A model folder that ships its own Python code: `cuetune train` refuses it, naming the
    flag, and its code never runs; with --trust-remote-code it runs and trains."""
    from test_artifacts_cli import run_cli

    model = tmp_path / "custom"
    shutil.copytree(tiny_dirs["causal"], model)
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(model_type="markerllama", architectures=["MarkerForCausalLM"],
               auto_map={"AutoConfig": "marker.MarkerConfig",
                         "AutoModelForCausalLM": "marker.MarkerForCausalLM"})
    (model / "config.json").write_text(json.dumps(cfg))
    (model / "marker.py").write_text(MARKER_CODE)
    marker = tmp_path / "ran"
    monkeypatch.setenv("CUETUNE_TEST_MARKER", str(marker))
    raw = toy_config(model, toy_data, tmp_path / "run", train={"max_steps": 2})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    code, _, err = run_cli(["train", str(tmp_path / "run.yaml")], capsys)
    assert code != 0 and "--trust-remote-code" in err, err
    assert not marker.exists(), "the model's code ran without being trusted"
    code, out, err = run_cli(["train", str(tmp_path / "run.yaml"), "--trust-remote-code"], capsys)
    assert code == 0, err
    assert marker.read_text() == "the model's own code ran"
