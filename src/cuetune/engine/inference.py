"""The one batched inference loop: label probabilities, answer-token loss and generation all
run through `run_batches`.

It puts the prompt model in eval mode under `inference_mode` with the method applied, keeps the
prompt's shared keys and values across batches, orders inputs by length so each batch pads
little, and gives results back in the inputs' own order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cuetune.engine import distributed
from cuetune.engine.batching import batches_by_length
from cuetune.engine.forward import PromptModel
from cuetune.engine.progress import Ticker
from cuetune.prompt.batch import collate
from cuetune.prompt.encoder import Encoded

log = logging.getLogger(__name__)


def run_batches(model: PromptModel, items: list[Encoded], pad_id: int, batch_size: int,
                step: Callable[[dict[str, torch.Tensor], list[int]], object],
                side: str = "right") -> list[tuple[list[int], object]]:
    """`step(batch, indices)` over length-ordered batches of `items` -> [(indices, result)].

    `side="left"` pads on the left (decoding appends on the right). Under several processes
    each runs every N-th batch and all get every result back (`distributed`): each item is
    scored once, by one process."""
    out, done = [], 0
    ticker = Ticker(log, "inputs scored", len(items))
    with model.inference():
        for idx, chunk in distributed.my_turns(list(batches_by_length(items, batch_size))):
            batch = {k: v.to(model.device) for k, v in collate(chunk, pad_id, side).items()}
            out.append((idx, step(batch, idx)))
            done += len(idx) * distributed.world()
            ticker.tick(min(done, len(items)))
    return distributed.gather(out)


def predict_probs(model: PromptModel, items: list[Encoded], pad_id: int,
                  batch_size: int = 32) -> torch.Tensor:
    """Label probabilities [N, L] for encoded items, in their original order."""
    out = torch.empty(len(items), len(model.verbalizer.labels))
    for idx, probs in run_batches(model, items, pad_id, batch_size,
                                  lambda batch, _: model(batch).softmax(-1).float().cpu()):
        out[idx] = probs
    return out


def token_nll(model: PromptModel, items: list[Encoded], pad_id: int, batch_size: int) -> float:
    """Mean negative log-likelihood per answer token under teacher forcing."""

    def summed(batch, _):
        target = batch["target"][batch["target"] != -100]  # [N]
        return F.cross_entropy(model.target_logits(batch), target, reduction="sum").item(), target.numel()

    sums = [r for _, r in run_batches(model, [e for e in items if e.target], pad_id, batch_size, summed)]
    return sum(s for s, _ in sums) / max(sum(n for _, n in sums), 1)
