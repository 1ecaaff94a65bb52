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


def fit(pipe: Pipeline, train: list[Encoded], dev: list[Encoded], log: MetricsLog,
        progress=None) -> TrainResult:
    """Train the pipeline's method in place; the best adapter state is loaded at the end."""
    cfg = pipe.config.train
    method = pipe.method
    set_seed(cfg.seed)
    params = method.trainable_parameters()
    if not params:
        raise CuetuneError(f"method.name={pipe.config.method.name}: no trainable parameters")
    lr = cfg.lr or method.default_lr
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    steps = total_steps(cfg, len(train))
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=int(cfg.warmup_ratio * steps),
                              num_training_steps=steps)
    pad_id = pipe.loaded.tokenizer.pad_token_id
    loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=True, drop_last=False,
                        generator=torch.Generator().manual_seed(cfg.seed),
                        collate_fn=lambda items: collate(items, pad_id))
    accelerator = Accelerator(cpu=pipe.model.token_ids.device.type == "cpu",
                              gradient_accumulation_steps=cfg.grad_accum)
    model, optimizer, loader, scheduler = accelerator.prepare(pipe.model, optimizer, loader, scheduler)
    batches = _batches(loader)
    best_score, best_step, best_dev, best_state, bad = -1.0, None, None, None, 0
    start, seen, stopped = time.perf_counter(), 0, False
    model.train()
    step = 0
    for step in range(1, steps + 1):
        loss_sum = 0.0
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
        if not finite(loss_sum):
            raise CuetuneError(f"training: loss became {loss_sum} at step {step}; lower train.lr "
                               "(the last good adapter is in the run directory)")
        elapsed = time.perf_counter() - start
        row = {"step": step, "loss": round(loss_sum, 6), "lr": scheduler.get_last_lr()[0],
               "examples_per_s": round(seen / elapsed, 2), "elapsed_s": round(elapsed, 2)}
        if dev and (step % cfg.eval_every == 0 or step == steps):
            metrics = evaluate(pipe, dev, cfg.eval_batch_size)
            row.update({"dev_accuracy": metrics["accuracy"], "dev_macro_f1": metrics["macro_f1"],
                        "dev_nll": metrics["nll"]})
            score = metrics[cfg.metric]
            if score > best_score:
                best_score, best_step, best_dev, bad = score, step, metrics, 0
                best_state = method.adapter_state()
            else:
                bad += 1
            stopped = cfg.patience is not None and bad >= cfg.patience and step < steps
        log.write(row)
        if progress:
            progress(step, steps, row, best_score if best_step else None)
        if stopped:
            break
    if best_state is not None:
        method.load_adapter_state(best_state)
    model.eval()
    return TrainResult(step, best_step, best_dev, stopped, time.perf_counter() - start, log.rows)
