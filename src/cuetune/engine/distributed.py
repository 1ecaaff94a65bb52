"""Several processes on one run (`accelerate launch`, `torchrun`): who writes, which rows each
process scores, and how gradients are summed.

Every process runs the same program (SPMD). The batch order is seeded, so each optimizer step
draws the same global batch (`train.batch_size` rows) everywhere; process r trains on the r-th
contiguous slice of it, its loss weighted by its share of the step's answer units (rows for
classification, answer tokens for generation), and the trainable parameters' gradients are
summed across processes. The update then equals one process's on the whole batch up to the
order of summation. No DistributedDataParallel wrapper: only the method's parameters are
trained, a phase may change which ones, and one flat all-reduce per step is all they need.

Evaluation hands the length-ordered batches out round-robin and gathers the results, so every
dev and test row is scored exactly once whatever N is. Only the main process writes files.

Alone (no process group), every function here is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from accelerate import PartialState


def launched() -> bool:
    """Started by a launcher that asks for more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init() -> None:
    """Join the process group the launcher set up (Accelerate's `PartialState` makes it: gloo on
    CPU, NCCL on CUDA); nothing when run alone."""
    if launched() and not dist.is_initialized():
        PartialState(cpu=not torch.cuda.is_available())


def world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world() > 1 else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world() > 1:
        dist.barrier()


def from_main(obj):
    """The main process's `obj`, on every process (what it wrote, so the others need not read
    files a node of their own may not see)."""
    if world() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def my_slice(items: Sequence) -> list:
    """This process's contiguous share of a global batch (sizes differ by at most one)."""
    n, w, r = len(items), world(), rank()
    return list(items[r * n // w:(r + 1) * n // w])


def my_turns(items: Sequence) -> list:
    """Every N-th item from this process's rank: evaluation batches, handed out round-robin."""
    return list(items[rank()::world()])


def gather(results: list) -> list:
    """Every process's `results` (picklable), concatenated in rank order, on every process."""
    if world() == 1:
        return results
    parts: list[list | None] = [None] * world()
    dist.all_gather_object(parts, results)
    return [x for part in parts for x in part]


def total(value: float) -> float:
    """The sum of a number over processes."""
    if world() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return float(t.item())


def _device() -> torch.device:
    """Where a collective's tensor must live: NCCL reduces only CUDA tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum the parameters' gradients over processes, in one flat all-reduce (a parameter without
    a gradient on some process counts as zero there)."""
    if world() == 1 or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])  # [sum of sizes]
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).to(p.dtype)
        offset += n
