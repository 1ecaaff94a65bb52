"""The training loop: AdamW on the method's parameters.

Objective: cross-entropy over the verbalizer's label scores at the answer position,
L = -sum_i log P(y_i | x_i, theta). Warmup and decay schedule, gradient accumulation, dev
evaluation every N steps, early stopping with patience, the best adapter kept. Seeds are fixed;
on CPU two runs with the same config give the same numbers. The loop never looks at which
method it trains: it only uses the method's hooks.

Under `accelerate launch` (or `torchrun`) with N processes, each step's global batch is split
between them and the gradients summed (`distributed`): the same global batch size, the same
schedule, one process's update up to summation order.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import set_seed
from transformers import get_scheduler

from cuetune import atomic
from cuetune.config import TrainConfig
from cuetune.engine import distributed
from cuetune.engine.batching import BatchOrder
from cuetune.engine.checkpoint import CHECKPOINT, Checkpoint, rng_state, save_checkpoint, set_rng_state
from cuetune.engine.pipeline import Pipeline
from cuetune.engine.progress import Ticker
from cuetune.errors import CuetuneError
from cuetune.metrics.classification import finite
from cuetune.prompt.batch import collate
from cuetune.prompt.encoder import Encoded

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PhaseUsed:
    """One phase as it ran: the learning rate used and the steps it had."""

    name: str
    lr: float
    steps: int


@dataclass
class TrainResult:
    steps: int
    best_step: int | None
    best_dev: dict | None
    stopped_early: bool
    seconds: float
    log: list[dict] = field(default_factory=list)
    skipped: int = 0
    phases: list[PhaseUsed] = field(default_factory=list)
    """Each phase's learning rate as used and its step budget."""


class MetricsLog:
    """Per-step metrics as JSONL, appended and flushed as training goes.

    `resume_at=step` keeps the rows up to that step (a checkpoint's) and drops the rest,
    including a last line a kill cut in half, then appends from there. `path=None` keeps the
    rows in memory only (a process other than the main one under `accelerate launch`)."""

    def __init__(self, path: Path | None, resume_at: int | None = None):
        self.path = path
        self.rows: list[dict] = []
        self._file = None
        if path is None:
            return
        if resume_at is not None and path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    break
                if row.get("step", 0) > resume_at:
                    break
                self.rows.append(row)
        atomic.write_jsonl(path, self.rows)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, row: dict) -> None:
        self.rows.append(row)
        if self._file is not None:
            self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def evaluate(pipe: Pipeline, items: list[Encoded], batch_size: int, final: bool = True) -> dict:
    """The task's metrics on encoded items; `final=False` is the cheaper check run while
    training (generation: the token loss only, no decoding)."""
    return pipe.objective.evaluate(pipe, items, batch_size, final)


def total_steps(cfg, n_train: int) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    per_epoch = math.ceil(n_train / (cfg.batch_size * cfg.grad_accum))
    return max(1, math.ceil(per_epoch * cfg.epochs))


@dataclass
class _Best:
    score: float = float("-inf")
    step: int | None = None
    dev: dict | None = None
    state: dict | None = None


def _phase_steps(phases, steps: int) -> list[int]:
    """Split the step budget by each phase's fraction; the last phase takes the remainder."""
    counts = [max(1, round(p.fraction * steps)) for p in phases[:-1]]
    return counts + [max(1, steps - sum(counts))]


def fit(pipe: Pipeline, train: list[Encoded], dev: list[Encoded], cfg: TrainConfig, log: MetricsLog,
        progress=None, run_dir: Path | None = None, resume: Checkpoint | None = None) -> TrainResult:
    """Train the pipeline's method in place, phase by phase; the best adapter state (by the dev
    metric) is loaded at the end of each phase, so a later phase starts from it.

    With `run_dir`, a checkpoint is written every `train.checkpoint_every` steps; `resume`
    continues from one and gives the same result as a run that was never interrupted.
    """
    method = pipe.method
    set_seed(cfg.seed)
    phases = method.phases()
    if not any(p.params for p in phases):
        raise CuetuneError(f"method.name={method.config.name}: no trainable parameters")
    pad_id = pipe.loaded.tokenizer.pad_token_id
    if cfg.batch_size < distributed.world():
        raise CuetuneError(f"train.batch_size={cfg.batch_size} is smaller than the "
                           f"{distributed.world()} processes: each needs at least one row of every "
                           "batch; raise it or launch fewer processes")
    model = pipe.model
    device = model.token_ids.device
    state = {"step": 0, "phase": 0, "order": [0, 0], "bad": 0, "seen": 0, "skipped": 0}
    best = _Best()
    if resume is not None:
        state = dict(resume.state)
        method.load_adapter_state(resume.adapter)
        best = _Best(state["best_score"], state["best_step"], state["best_dev"], resume.best)
    lengths = [len(e.input_ids) for e in train] if cfg.group_by_length else None
    order = BatchOrder(len(train), cfg.batch_size, cfg.seed, *state["order"], lengths=lengths)
    all_params = method.trainable_parameters()
    counts = _phase_steps(phases, total_steps(cfg, len(train)))
    rates = [phase.lr or cfg.lr or method.default_lr for phase in phases]
    stopped, start, ran = False, time.perf_counter(), state["step"]
    ticker = Ticker(logger, "training steps", sum(counts))
    model.train()
    for index, (phase, count) in enumerate(zip(phases, counts, strict=True)):
        if index < state["phase"]:
            continue
        active = {id(p) for p in phase.params}
        for p in all_params:
            p.requires_grad_(id(p) in active)
        optimizer = torch.optim.AdamW(phase.params, lr=rates[index], weight_decay=cfg.weight_decay)
        end = sum(counts[:index + 1])
        scheduler = get_scheduler(cfg.scheduler, optimizer, num_training_steps=count,
                                  num_warmup_steps=int(cfg.warmup_ratio * count))
        if resume is not None and index == resume.state["phase"]:
            optimizer.load_state_dict(resume.optimizer)
            scheduler.load_state_dict(resume.scheduler)
            set_rng_state(resume.rng)
        else:
            state["bad"] = 0
        stopped = False
        while state["step"] < end and not stopped:
            state["step"] += 1
            step = state["step"]

            def next_batch():  # None: this process's slice of a short last batch is empty
                items = distributed.my_slice([train[i] for i in order.next()])
                return {k: v.to(device) for k, v in collate(items, pad_id).items()} if items else None

            loss, n, ok = _train_step(model, next_batch, optimizer, scheduler,
                                      phase.params, cfg, pipe.objective)
            state["seen"] += n
            if not ok and cfg.on_nonfinite == "stop":
                raise CuetuneError(
                    f"training: non-finite loss or gradient at step {step}; stopped. Lower "
                    "train.lr, or set train.on_nonfinite=skip to skip such updates; "
                    + (f"the last good checkpoint is in {run_dir} (resume with --resume)"
                       if run_dir and (run_dir / CHECKPOINT).exists() else "no checkpoint was written yet"))
            state["skipped"] += not ok
            elapsed = time.perf_counter() - start
            row = {"step": step, "phase": phase.name, "loss": round(loss, 6) if ok else None,
                   "lr": scheduler.get_last_lr()[0], "examples_per_s": round(state["seen"] / elapsed, 2),
                   "elapsed_s": round(elapsed, 2)}
            if not ok:
                row["skipped"] = True
            if dev and (step % cfg.eval_every == 0 or step == end):
                metrics = evaluate(pipe, dev, cfg.eval_batch_size, final=False)
                row.update({f"dev_{k}": metrics[k] for k in pipe.objective.dev_keys})
                score = pipe.objective.score(metrics, cfg.metric)
                if score > best.score:
                    best, state["bad"] = _Best(score, step, metrics, method.adapter_state()), 0
                else:
                    state["bad"] += 1
                stopped = cfg.patience is not None and state["bad"] >= cfg.patience and step < end
            log.write(row)
            ticker.tick(step, _progress_text(row, pipe.objective.dev_keys, best.score if best.step else None))
            if progress:
                progress(step, sum(counts), row, best.score if best.step else None)
            ran = step
            if stopped:
                state["step"] = end  # the rest of this phase is skipped, also after a resume
            if run_dir is not None and distributed.is_main() and cfg.checkpoint_every and (
                    step % cfg.checkpoint_every == 0 or stopped):
                state.update(order=order.position, best_score=best.score, best_step=best.step,
                             best_dev=best.dev)
                save_checkpoint(run_dir, Checkpoint(dict(state), method.adapter_state(), best.state,
                                                    optimizer.state_dict(), scheduler.state_dict(),
                                                    rng_state()))
        if best.state is not None:
            method.load_adapter_state(best.state)
        state["phase"] = index + 1
    for p in all_params:
        p.requires_grad_(True)
    model.eval()
    used = [PhaseUsed(p.name, lr, n) for p, lr, n in zip(phases, rates, counts, strict=True)]
    return TrainResult(ran, best.step, best.dev, stopped, time.perf_counter() - start,
                       log.rows, state["skipped"], used)


def _progress_text(row: dict, dev_keys: tuple[str, ...], best: float | None) -> str:
    """A step's row as a progress line's detail: loss, the dev metric when scored, speed."""
    loss = "skipped" if row["loss"] is None else f"loss {row['loss']:.4f}"
    dev = "".join(f", dev {k} {row[f'dev_{k}']:.4f}" for k in dev_keys[:1] if f"dev_{k}" in row)
    best_text = "" if best is None else f", best dev {best:.4f}"
    return f"{loss}{dev}{best_text}, {row['examples_per_s']} ex/s"


def _train_step(model, next_batch, optimizer, scheduler, params,
                cfg, objective) -> tuple[float, int, bool]:
    """One optimizer step over `grad_accum` batches -> (mean loss, examples, finite?).

    Each batch's loss is the mean over its answer units; under N processes a process's slice
    counts by its share of the units, and the gradients are summed (`distributed`). A
    non-finite loss or gradient norm means no update: gradients are dropped, the optimizer and
    the schedule do not move."""
    loss_sum, seen = 0.0, 0
    for _ in range(cfg.grad_accum):
        batch = next_batch()
        units = objective.units(batch) if batch is not None else 0
        share = units / distributed.total(units) if distributed.world() > 1 else 1.0
        if batch is None:
            continue
        loss = objective.loss(model, batch, cfg.label_smoothing)
        (loss * share / cfg.grad_accum if share != 1.0 else loss / cfg.grad_accum).backward()
        loss_sum += loss.item() * share / cfg.grad_accum
        seen += len(batch["labels"]) if "labels" in batch else batch["input_ids"].size(0)  # inputs, not rows
    loss_sum, seen = distributed.total(loss_sum), int(distributed.total(seen))
    distributed.sum_gradients(params)
    norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
    ok = finite(loss_sum) and finite(float(norm))
    if ok:
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad()
    return loss_sum, seen, ok
