"""Continuous batching: generation rows of any adapters decoded together, one token per step.

A `Decoding` holds the running rows' key/value cache. New rows join between steps: their
prompts run as one mixed batch (`serve.mixed`), and their cache is padded on the left to the
running cache's width (or the running one to theirs) and stacked under it. A finished or
cancelled row leaves at once: its cache rows are dropped, and columns no remaining row uses are
trimmed. Every row keeps its own positions and mask, so it writes what it writes alone: the same
greedy text, and for sampling the same draws (row generator seeded with the request's seed, as
`generate` seeds row i with seed + i).

Each step runs the base model once for all rows; a LoRA row gets its adapter's update
(`patch_rows`), soft-prompt and prefix rows need nothing more (their prompt is in the cache).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from cuetune.config import GenerateConfig
from cuetune.engine.generation import Stops, filter_logits, penalize
from cuetune.families.family import kv_cache, select_cache, window_allows
from cuetune.serve.mixed import by_length, group_rows, prepare


@dataclass
class GenRow:
    """One request being written: its adapter's pipeline, prompt, settings and tokens so far."""

    pipe: object
    item: object  # Encoded prompt
    cfg: GenerateConfig
    stops: Stops
    tokens: list[int] = field(default_factory=list)
    done: bool = False
    generator: torch.Generator | None = None
    ticket: object = None  # the scheduler's handle (future, timings)

    def __post_init__(self):
        if self.cfg.strategy == "sample":
            self.generator = torch.Generator().manual_seed(self.cfg.seed)

    def choose(self, logits: torch.Tensor) -> int:
        """The next token from this row's logits [V]."""
        logits = penalize(logits[None], [self.tokens], self.cfg)[0]
        if self.generator is None:
            return int(logits.argmax())
        probs = filter_logits(logits[None].float(), self.cfg).softmax(-1).cpu()[0]
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def add(self, token: int) -> None:
        self.tokens.append(token)
        self.done = self.stops.ended(self.tokens) or len(self.tokens) >= self.cfg.max_new_tokens

    @property
    def finish_reason(self) -> str:
        """OpenAI's: "length" when max_new_tokens cut the text, else "stop"."""
        ended = self.stops.ended(self.tokens)
        return "stop" if ended or len(self.tokens) < self.cfg.max_new_tokens else "length"

    def text(self) -> str:
        return self.stops.finish(self.tokens)


class Decoding:
    """The running generation rows and their shared cache."""

    def __init__(self, base, family, pad_id: int):
        self.base, self.family, self.pad_id = base, family, pad_id
        self.rows: list[GenRow] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # [B, C]
        self.next_pos: torch.Tensor | None = None  # [B]

    def __len__(self) -> int:
        return len(self.rows)

    def join(self, new: list[GenRow]) -> list[GenRow]:
        """Run the new rows' prompts (mixed forwards, one per length group) and add them to the
        running batch; each gets its first token. Returns the rows that cannot join: on a
        sliding-window model, those that would take the batch past the window (it measures
        distance in columns, and the batch's left padding adds columns a row alone has not)."""
        refused = []
        for group in by_length([(r.pipe, r.item) for r in new]):
            rows = [new[i] for i in group]
            mixed = prepare([(r.pipe, r.item) for r in rows], self.pad_id)
            if not self._fits(mixed.mask.size(1), rows):
                refused += rows
                continue
            cache = kv_cache(None, mixed.prefix, len(rows))  # keeps every key; the mask decides
            out = mixed.run(self.base, cache)
            logits = self.family.token_logits(self.base, out.last_hidden_state[:, -1], None)  # [N, V]
            for row, row_logits in zip(rows, logits, strict=True):
                row.add(row.choose(row_logits))
            self._stack(cache, mixed.mask, mixed.positions[:, -1] + 1)
            self.rows += rows
        return refused

    def _fits(self, width: int, rows: list[GenRow]) -> bool:
        """Whether the batch stays inside a sliding window until its longest row could end."""
        running = self.mask.size(1) if self.mask is not None else 0
        left = max(r.cfg.max_new_tokens - len(r.tokens) for r in self.rows + rows)
        return window_allows(self.base.config, max(running, width) + left)

    def step(self) -> None:
        """One token for every running row that is not done."""
        device = self.mask.device
        feed = torch.tensor([r.tokens[-1] for r in self.rows], device=device)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], 1)
        with ExitStack() as stack:
            for pipe, idx in group_rows([r.pipe for r in self.rows], device):
                stack.enter_context(pipe.method.patch_rows(idx))
            out = self.base.base_model(input_ids=feed[:, None], attention_mask=self.mask,
                                       position_ids=self.next_pos[:, None], cache=self.cache,
                                       use_cache=True)
        self.next_pos = self.next_pos + 1
        logits = self.family.token_logits(self.base, out.last_hidden_state[:, -1], None)  # [B, V]
        for row, row_logits in zip(self.rows, logits, strict=True):
            if not row.done:
                row.add(row.choose(row_logits))

    def leave(self, rows: list[GenRow]) -> None:
        """Drop these rows (finished or cancelled) and the cache columns no one needs."""
        gone = {id(r) for r in rows}
        keep = [i for i, r in enumerate(self.rows) if id(r) not in gone]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache = self.mask = self.next_pos = None
            return
        index = torch.tensor(keep, device=self.mask.device)
        select_cache(self.cache, index)
        self.mask, self.next_pos = self.mask[index], self.next_pos[index]
        unused = int((self.mask.cumsum(1) == 0).all(0).sum())  # leading columns all rows mask
        if unused:
            self.mask = self.mask[:, unused:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]

    def _stack(self, cache: DynamicCache, mask: torch.Tensor, next_pos: torch.Tensor) -> None:
        """Put a new cache (rows of its own width) under the running one, left-padding the
        narrower of the two."""
        if self.cache is None:
            self.cache, self.mask, self.next_pos = cache, mask, next_pos
            return
        width = max(self.mask.size(1), mask.size(1))
        merged = DynamicCache()
        for i, (old, new) in enumerate(zip(self.cache.layers, cache.layers, strict=True)):
            keys = torch.cat([_left_pad(old.keys, width), _left_pad(new.keys, width)])
            values = torch.cat([_left_pad(old.values, width), _left_pad(new.values, width)])
            merged.update(keys, values, i)
        self.cache = merged
        self.mask = torch.cat([_left_pad(self.mask, width), _left_pad(mask, width)])
        self.next_pos = torch.cat([self.next_pos, next_pos])


def _left_pad(x: torch.Tensor, width: int) -> torch.Tensor:
    """Zero columns before x's columns (dim 2 for keys [B, kv, C, d], dim 1 for a mask [B, C])."""
    dim = 2 if x.dim() == 4 else 1
    missing = width - x.size(dim)
    if not missing:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim)
