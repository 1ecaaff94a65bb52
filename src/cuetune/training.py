"""The training loop: AdamW on the method's parameters, built on Accelerate.

Objective: cross-entropy over the verbalizer's label scores at the answer position,
L = -sum_i log P(y_i | x_i, theta). Warmup and decay schedule, gradient accumulation, dev
evaluation every N steps, early stopping with patience, the best adapter kept. Seeds are fixed;
on CPU two runs with the same config give the same numbers. The loop never looks at which
method it trains: it only uses the method's hooks.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from transformers import get_scheduler

from cuetune.encoding import Encoded, collate
from cuetune.engine import Pipeline, predict_probs
from cuetune.errors import CuetuneError
from cuetune.evaluation import classification_metrics, finite


@dataclass
class TrainResult:
    steps: int
    best_step: int | None
    best_dev: dict | None
    stopped_early: bool
    seconds: float
    log: list[dict] = field(default_factory=list)


class MetricsLog:
    """Per-step metrics as JSONL, appended and flushed as training goes."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = []
        self._file = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, row: dict) -> None:
        self.rows.append(row)
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def evaluate(pipe: Pipeline, items: list[Encoded], batch_size: int) -> dict:
    probs = predict_probs(pipe.model, items, pipe.loaded.tokenizer.pad_token_id, batch_size)
    return classification_metrics(pipe.labels, [e.label for e in items], probs)


def total_steps(cfg, n_train: int) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    per_epoch = math.ceil(n_train / (cfg.batch_size * cfg.grad_accum))
    return max(1, math.ceil(per_epoch * cfg.epochs))


def _batches(loader: DataLoader):
    while True:  # epochs run into each other; the seeded generator reshuffles each pass
        yield from loader


@dataclass
class _Best:
    score: float = -1.0
    step: int | None = None
    dev: dict | None = None
    state: dict | None = None


def _phase_steps(phases, steps: int) -> list[int]:
    """Split the step budget by each phase's fraction; the last phase takes the remainder."""
    counts = [max(1, round(p.fraction * steps)) for p in phases[:-1]]
    return counts + [max(1, steps - sum(counts))]


def fit(pipe: Pipeline, train: list[Encoded], dev: list[Encoded], log: MetricsLog,
        progress=None) -> TrainResult:
    """Train the pipeline's method in place, phase by phase; the best adapter state (by the dev
    metric) is loaded at the end of each phase, so a later phase starts from it."""
    cfg = pipe.config.train
    method = pipe.method
    set_seed(cfg.seed)
    phases = method.phases()
    if not any(p.params for p in phases):
        raise CuetuneError(f"method.name={pipe.config.method.name}: no trainable parameters")
    pad_id = pipe.loaded.tokenizer.pad_token_id
    loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=True, drop_last=False,
                        generator=torch.Generator().manual_seed(cfg.seed),
                        collate_fn=lambda items: collate(items, pad_id))
    accelerator = Accelerator(cpu=pipe.model.token_ids.device.type == "cpu",
                              gradient_accumulation_steps=cfg.grad_accum)
    model, loader = accelerator.prepare(pipe.model, loader)
    batches = _batches(loader)
    all_params = method.trainable_parameters()
    best, step, stopped, seen, start = _Best(), 0, False, 0, time.perf_counter()
    counts = _phase_steps(phases, total_steps(cfg, len(train)))
    model.train()
    for phase, count in zip(phases, counts, strict=True):
        active = {id(p) for p in phase.params}
        for p in all_params:
            p.requires_grad_(id(p) in active)
        optimizer = torch.optim.AdamW(phase.params, lr=phase.lr or cfg.lr or method.default_lr,
                                      weight_decay=cfg.weight_decay)
        scheduler = get_scheduler(cfg.scheduler, optimizer, num_training_steps=count,
                                  num_warmup_steps=int(cfg.warmup_ratio * count))
        optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
        end, bad, stopped = step + count, 0, False
        while step < end and not stopped:
            step += 1
            loss, n = _train_step(model, batches, optimizer, scheduler, accelerator, phase.params, cfg)
            seen += n
            if not finite(loss):
                raise CuetuneError(f"training: loss became {loss} at step {step}; lower train.lr "
                                   "(the last good adapter is in the run directory)")
            elapsed = time.perf_counter() - start
            row = {"step": step, "phase": phase.name, "loss": round(loss, 6),
                   "lr": scheduler.get_last_lr()[0], "examples_per_s": round(seen / elapsed, 2),
                   "elapsed_s": round(elapsed, 2)}
            if dev and (step % cfg.eval_every == 0 or step == end):
                metrics = evaluate(pipe, dev, cfg.eval_batch_size)
                row.update({"dev_accuracy": metrics["accuracy"], "dev_macro_f1": metrics["macro_f1"],
                            "dev_nll": metrics["nll"]})
                if metrics[cfg.metric] > best.score:
                    best, bad = _Best(metrics[cfg.metric], step, metrics, method.adapter_state()), 0
                else:
                    bad += 1
                stopped = cfg.patience is not None and bad >= cfg.patience and step < end
            log.write(row)
            if progress:
                progress(step, sum(counts), row, best.score if best.step else None)
        if best.state is not None:
            method.load_adapter_state(best.state)
    for p in all_params:
        p.requires_grad_(True)
    model.eval()
    return TrainResult(step, best.step, best.dev, stopped, time.perf_counter() - start, log.rows)


def _train_step(model, batches, optimizer, scheduler, accelerator, params, cfg) -> tuple[float, int]:
    """One optimizer step over `grad_accum` batches; returns (mean loss, examples seen)."""
    loss_sum, seen = 0.0, 0
    for _ in range(cfg.grad_accum):
        batch = next(batches)
        with accelerator.accumulate(model):
            scores = model(batch)  # [B, L]
            loss = F.cross_entropy(scores, batch["labels"], label_smoothing=cfg.label_smoothing)
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.max_grad_norm:
                accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        loss_sum += loss.item() / cfg.grad_accum
        seen += batch["labels"].size(0)
    return loss_sum, seen
