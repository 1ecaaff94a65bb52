"""Run by tests/test_distributed.py, alone or under `accelerate launch`/`torchrun`.

    python dist_worker.py grads CONFIG.json OUT.pt   first step's gradients + who scored which row
    python dist_worker.py crash CONFIG.json          train, die right after the first checkpoint

A test helper, not library code: it reaches into the training loop to read what one step did.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from cuetune.config import validate
from cuetune.data.splits import load_splits
from cuetune.engine import distributed
from cuetune.engine import fit as training
from cuetune.engine.inference import run_batches
from cuetune.engine.pipeline import build, load_for
from cuetune.prompt.batch import collate
from cuetune.runs import train as api


class Recorder:
    """An optimizer that keeps the gradients it is handed and changes nothing."""

    def __init__(self, params):
        self.params, self.grads = params, None

    def step(self):
        self.grads = [p.grad.detach().clone() for p in self.params]

    def zero_grad(self):
        for p in self.params:
            p.grad = None


class NoSchedule:
    def step(self):
        pass


def grads(config: str, out: str) -> None:
    distributed.init()
    cfg = validate(json.loads(Path(config).read_text(encoding="utf-8")))
    splits = load_splits(cfg.data)
    pipe = build(cfg, splits.labels, load_for(cfg.model))
    train = pipe.encoder.encode(splits.train)
    params = pipe.method.trainable_parameters()
    first = train[:cfg.train.batch_size]  # the global batch of step one, in a fixed order

    def next_batch():
        items = distributed.my_slice(first)
        return collate(items, pipe.loaded.tokenizer.pad_token_id) if items else None

    pipe.model.train()
    recorder = Recorder(params)
    loss, seen, ok = training._train_step(pipe.model, next_batch, recorder, NoSchedule(), params,
                                          cfg.train, pipe.objective)
    test = pipe.encoder.encode(splits.test)
    who = [(rank, i) for idx, rank in run_batches(  # each batch says which process ran it
        pipe.model, test, pipe.loaded.tokenizer.pad_token_id, 5, lambda b, idx: distributed.rank())
        for i in idx]
    probs = pipe.label_probs(test, 5)
    if distributed.is_main():
        torch.save({"loss": loss, "seen": seen, "ok": ok, "grads": recorder.grads, "who": who,
                    "probs": probs, "n_test": len(test)}, out)


def crash(config: str) -> None:
    real = training.save_checkpoint

    def save_then_die(*args, **kwargs):
        real(*args, **kwargs)
        os._exit(3)  # killed right after the checkpoint landed: the others are stopped by the launcher

    training.save_checkpoint = save_then_die
    api.train(json.loads(Path(config).read_text(encoding="utf-8")))


if __name__ == "__main__":
    torch.set_num_threads(1)
    {"grads": grads, "crash": crash}[sys.argv[1]](*sys.argv[2:])
