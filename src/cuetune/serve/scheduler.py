"""The worker that owns the model: a bounded queue in, mixed batches and decoding steps out.

One thread runs every forward (LoRA's row hooks are module state, and a forward must not see
another's), and also adapter loads, so a load never runs beside a forward. HTTP handlers put
jobs in the queue and wait on their futures.

A round of the loop: take what is waiting (classification rows are given `wait_ms` to gather
when nothing is decoding; while decoding, nothing waits), run the classification rows as mixed
batches of at most `max_batch` rows, let waiting generation rows join the running batch (up to
`max_running` rows), and take one decoding step. A cancelled job (its client went away) is
dropped at the next step. `mix=False` runs one adapter per batch instead (the comparison the
serving benchmark makes); adapters that cannot mix (`mixed.can_mix`) and beam search always
run per adapter, through the run's own inference path.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future, InvalidStateError
from contextlib import suppress
from dataclasses import dataclass, field

import torch

from cuetune.engine.generation import generate_ids
from cuetune.serve.decoding import Decoding, GenRow
from cuetune.serve.mixed import apart_probs, mixed_probs


class QueueFull(Exception):
    """The bounded queue is full (HTTP 429)."""


@dataclass
class Job:
    kind: str  # "classify", "generate" or "call"
    adapter: object = None
    item: object = None  # Encoded prompt
    row: GenRow | None = None
    fn: object = None  # "call": run on the worker thread
    future: Future = field(default_factory=Future)
    queued: float = field(default_factory=time.perf_counter)


class Scheduler:
    def __init__(self, registry, *, max_queue: int = 256, max_batch: int = 32, max_running: int = 32,
                 wait_ms: float = 5.0, mix: bool = True, metrics=None):
        self.registry, self.metrics = registry, metrics
        self.max_queue, self.max_batch, self.max_running = max_queue, max_batch, max_running
        self.wait, self.mix = wait_ms / 1000, mix
        self.queue: deque[Job] = deque()
        self.cond = threading.Condition()
        self.decoding: Decoding | None = None
        self.waiting_gen: list[Job] = []
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="cuetune-serve", daemon=True)

    def start(self) -> Scheduler:
        self.thread.start()
        return self

    def stop(self) -> None:
        """Finish every queued and running job, then end the worker."""
        with self.cond:
            self.stopping = True
            self.cond.notify()
        self.thread.join()

    def depth(self) -> int:
        return len(self.queue) + len(self.waiting_gen)

    def submit(self, jobs: list[Job]) -> list[Future]:
        """Queue jobs together (all or none); QueueFull when they do not fit."""
        with self.cond:
            if self.stopping:
                raise QueueFull("the server is shutting down")
            if self.depth() + len(jobs) > self.max_queue:
                raise QueueFull(f"the queue holds {self.max_queue} rows and is full")
            self.queue.extend(jobs)
            self.cond.notify()
        return [j.future for j in jobs]

    def call(self, fn) -> Future:
        """Run fn() on the worker thread, between batches (adapter loads)."""
        job = Job("call", fn=fn)
        with self.cond:
            self.queue.append(job)
            self.cond.notify()
        return job.future

    # --- the worker thread ---

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            try:
                with torch.inference_mode():
                    self._round(jobs)
            except Exception as exc:  # a fault in one round fails its jobs, not the server
                for job in jobs + [r.ticket for r in (self.decoding.rows if self.decoding else [])]:
                    _fail(job, exc)
                self.decoding = None

    def _take(self) -> list[Job] | None:
        with self.cond:
            while not self.queue and not self._busy():
                if self.stopping:
                    return None
                self.cond.wait()
            if not self._busy() and self.wait:
                deadline = time.perf_counter() + self.wait
                while len(self.queue) < self.max_batch and (left := deadline - time.perf_counter()) > 0:
                    self.cond.wait(left)
            jobs = list(self.queue)
            self.queue.clear()
            if self.metrics:
                self.metrics.queue_depth.set(len(self.waiting_gen))
            return jobs

    def _busy(self) -> bool:
        return bool(self.decoding and len(self.decoding)) or bool(self.waiting_gen)

    def _round(self, jobs: list[Job]) -> None:
        for job in jobs:
            if job.kind == "call":
                _run_call(job)
        live = [j for j in jobs if j.kind != "call" and not j.future.cancelled()]
        rows = [j for j in live if j.kind == "classify"]
        for start in range(0, len(rows), self.max_batch):
            self._classify(rows[start:start + self.max_batch])
        self.waiting_gen += [j for j in live if j.kind == "generate"]
        self._generate()

    def _classify(self, jobs: list[Job]) -> None:
        mixable = [j for j in jobs if j.adapter.mixable]
        batches = [mixable] if self.mix else list(_by_adapter(mixable).values())
        apart = [j for j in jobs if not j.adapter.mixable]  # the run's own path (chain-rule scoring)
        for batch, score in [(b, mixed_probs) for b in batches] + [(apart, apart_probs)]:
            if not batch:
                continue
            pad = batch[0].adapter.pipe.loaded.tokenizer.pad_token_id
            free = {id(j.adapter.pipe): j.adapter.content_free for j in batch}
            probs = score([(j.adapter.pipe, j.item) for j in batch], pad, free)
            self._observe("classify", len(batch), len(_by_adapter(batch)))
            for job, p in zip(batch, probs, strict=True):
                _done(job, p)

    def _generate(self) -> None:
        for job in self.waiting_gen:
            if job.future.cancelled():
                self._cancelled(job)
        self.waiting_gen = [j for j in self.waiting_gen if not j.future.cancelled()]
        apart = [j for j in self.waiting_gen if not j.adapter.mixable or j.row.cfg.strategy == "beam"]
        self.waiting_gen = [j for j in self.waiting_gen if j not in apart]
        self._generate_apart(apart)
        if self.decoding is None:
            base = self.registry.base
            self.decoding = Decoding(base.model, base.family, base.tokenizer.pad_token_id)
        dec = self.decoding
        room = self.max_running - len(dec)
        joining, self.waiting_gen = self.waiting_gen[:room], self.waiting_gen[room:]
        if joining and not self.mix:  # one adapter per batch: only the running one's rows join
            only = dec.rows[0].ticket.adapter if len(dec) else joining[0].adapter
            self.waiting_gen = [j for j in joining if j.adapter is not only] + self.waiting_gen
            joining = [j for j in joining if j.adapter is only]
        if joining:
            for job in joining:
                job.row.ticket = job
            refused = dec.join([j.row for j in joining])  # past a sliding window: apart
            self._generate_apart([r.ticket for r in refused])
        self._finish(dec)
        if len(dec):
            dec.step()
            self._observe("decode", len(dec), len({id(r.pipe) for r in dec.rows}))
            self._finish(dec)

    def _generate_apart(self, jobs: list[Job]) -> None:
        """Rows decoded by the run's own `generate`, batched per adapter and settings (beam
        search, models that cannot mix, rows past a sliding window). Sampled rows go one at a
        time: `generate` seeds row i with seed + i, and a request's draws must not depend on
        its neighbours."""
        groups: dict = {}
        for i, job in enumerate(jobs):
            cfg = job.row.cfg
            key = (id(job.adapter), cfg.model_dump_json(), i if cfg.strategy == "sample" else -1)
            groups.setdefault(key, []).append(job)
        for group in groups.values():
            first = group[0].row
            seqs = generate_ids(first.pipe.model, first.pipe.loaded.tokenizer, [j.item for j in group],
                                first.cfg, first.stops)
            for job, seq in zip(group, seqs, strict=True):
                job.row.tokens = seq
                _done(job, job.row)
            self._observe("generate", len(group))

    def _finish(self, dec: Decoding) -> None:
        gone = [r for r in dec.rows if r.done or r.ticket.future.cancelled()]
        if gone:
            dec.leave(gone)
        for row in gone:
            if row.ticket.future.cancelled():
                self._cancelled(row.ticket)
            _done(row.ticket, row)

    def _cancelled(self, job: Job) -> None:
        if self.metrics:
            self.metrics.cancelled.labels(job.adapter.name).inc()

    def _observe(self, kind: str, rows: int, adapters: int = 1) -> None:
        if self.metrics:
            self.metrics.batch_rows.labels(kind).observe(rows)
            self.metrics.batch_adapters.labels(kind).observe(adapters)


def _by_adapter(jobs: list[Job]) -> dict[int, list[Job]]:
    groups: dict[int, list[Job]] = {}
    for job in jobs:
        groups.setdefault(id(job.adapter), []).append(job)
    return groups


def _run_call(job: Job) -> None:
    try:
        _done(job, job.fn())
    except Exception as exc:  # handed to the caller, who reports it
        _fail(job, exc)


def _done(job: Job, result) -> None:
    with suppress(InvalidStateError):  # cancelled meanwhile: its client has gone
        job.future.set_result(result)


def _fail(job: Job, exc: Exception) -> None:
    with suppress(InvalidStateError):
        job.future.set_exception(exc)
