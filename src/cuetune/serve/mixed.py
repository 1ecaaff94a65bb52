"""Rows of several adapters in one forward over one frozen base model.

A tuned prompt is kilobytes; the base under it is hundreds of megabytes. So a server keeps one
base and runs the rows of many adapters in the same batch (the S-LoRA / Punica idea, here for
every method that leaves the base frozen). Each row carries its adapter's pipeline; the batch is
padded on the left and then, per adapter group, through that method's own hooks:

- `prepare_inputs` fills the group's soft prompt rows (soft, p-tuning, LoRA with a `{soft}`
  block) and may return prefix keys and values (prefix tuning), which become that row's own
  first cache columns; a row with a shorter prefix, or none, sees those columns masked;
- `patch_rows` applies the group's weight change (LoRA's low-rank update) to its rows only.

The base model's layers run once for the whole batch. Positions come from each row's own mask
(tokens after a P-token prefix start at P, as in training), so a row computes what it computes
alone. Classification reads each row's label scores through its own method's `scores`;
generation continues in a `Decoding` (continuous batching: `serve.decoding`).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import torch

from cuetune.engine.inference import predict_probs
from cuetune.families.family import kv_cache, pick, window_allows
from cuetune.families.fastpath import length_groups
from cuetune.families.inputs import ModelInputs
from cuetune.prompt.batch import collate
from cuetune.prompt.encoder import Encoded


def can_mix(pipe) -> bool:
    """Whether a pipeline's rows can share a forward with other adapters' rows: a family that
    mixes rows, one row and one answer position per input (chain-rule scoring runs its own
    teacher-forced rows; a mixture of prompts one row per prompt) and a
    weight change restricted to rows (full fine-tuning's copy of every weight cannot be)."""
    chain = pipe.verbalizer is not None and pipe.model.chain
    rows = torch.zeros(0, dtype=torch.long)
    return (pipe.loaded.family.mixes_rows and not chain and pipe.encoder.views == 1
            and pipe.method.patch_rows(rows) is not None)


@dataclass
class Mixed:
    """A left-padded batch of rows from several adapters, ready for the base model."""

    embeds: torch.Tensor  # [B, T, H]
    mask: torch.Tensor  # [B, P + T]: prefix columns, then token columns
    positions: torch.Tensor  # [B, T]
    prefix: list[tuple[torch.Tensor, torch.Tensor]] | None  # per layer [B, kv, P, d]
    answer: torch.Tensor  # [B]: the answer column among the T token columns
    groups: list[tuple[object, torch.Tensor]]  # (pipeline, its rows [R])

    def run(self, base, cache=None):
        """The base model's output for the whole batch, each group's weight change on its rows."""
        with ExitStack() as stack:
            for pipe, idx in self.groups:
                stack.enter_context(pipe.method.patch_rows(idx))
            return base.base_model(inputs_embeds=self.embeds, attention_mask=self.mask,
                                   position_ids=self.positions, cache=cache, use_cache=cache is not None)


def group_rows(pipes: list, device) -> list[tuple[object, torch.Tensor]]:
    """(pipeline, row indices) per distinct pipeline, in order of first appearance."""
    rows: dict[int, tuple[object, list[int]]] = {}
    for i, pipe in enumerate(pipes):
        rows.setdefault(id(pipe), (pipe, []))[1].append(i)
    return [(pipe, torch.tensor(idx, device=device)) for pipe, idx in rows.values()]


def prepare(rows: list[tuple[object, Encoded]], pad_id: int) -> Mixed:
    """Pad `rows` (pipeline, encoded prompt) on the left and apply each group's input hook."""
    base = rows[0][0].loaded.model
    device = base.device
    batch = {k: v.to(device) for k, v in collate([e for _, e in rows], pad_id, "left").items()}
    batch.pop("labels", None)
    embeds = base.get_input_embeddings()(batch["input_ids"])  # [B, T, H]
    groups = group_rows([p for p, _ in rows], device)
    prefixes: list = [None] * len(rows)
    for pipe, idx in groups:
        sub = {k: v[idx] for k, v in batch.items()}
        inputs = ModelInputs(embeds[idx], sub["attention_mask"], sub["answer_pos"], sub["input_ids"])
        out = pipe.method.prepare_inputs(inputs, sub)
        embeds = embeds.index_copy(0, idx, out.inputs_embeds.to(embeds.dtype))
        if out.prefix is not None:
            for j, row in enumerate(idx.tolist()):  # per layer [1 or R, kv, P, d] -> [kv, P, d]
                prefixes[row] = [(k[min(j, len(k) - 1)], v[min(j, len(v) - 1)]) for k, v in out.prefix]
    prefix, prefix_mask = pad_prefixes(prefixes, batch["attention_mask"])
    tokens = batch["attention_mask"]
    width = prefix_mask.sum(1, keepdim=True)  # [B, 1]: each row's own prefix length
    positions = width + (tokens.cumsum(1) - 1).clamp(min=0)  # [B, T]
    return Mixed(embeds, torch.cat([prefix_mask, tokens], 1), positions, prefix,
                 batch["answer_pos"], groups)


def pad_prefixes(prefixes: list, tokens: torch.Tensor):
    """Per-row prefix keys and values (per layer [kv, P_i, d], or None) -> per layer
    [B, kv, P, d] with each row's prefix in its last P_i columns, and the prefix mask [B, P]."""
    rows = tokens.size(0)
    longest = max((p[0][0].size(1) for p in prefixes if p is not None), default=0)
    mask = tokens.new_zeros(rows, longest)
    if not longest:
        return None, mask
    like = next(p for p in prefixes if p is not None)
    out = []
    for layer, (k0, v0) in enumerate(like):
        keys = k0.new_zeros(rows, k0.size(0), longest, k0.size(2))
        values = v0.new_zeros(rows, v0.size(0), longest, v0.size(2))
        for r, p in enumerate(prefixes):
            if p is not None:
                n = p[layer][0].size(1)
                keys[r, :, longest - n:], values[r, :, longest - n:] = p[layer]
                mask[r, longest - n:] = 1
        out.append((keys, values))
    return out, mask


def by_length(rows: list[tuple[object, Encoded]]) -> list[list[int]]:
    """Row indices in groups of similar length, whatever their adapters (the fast path's
    partition: a group costs its longest row times its rows, plus a fixed cost per forward).
    Adapters differ in prompt length (a 20-token soft prompt, a bare LoRA template), so one
    padded forward over all of them would mostly compute padding."""
    groups = length_groups([len(e.input_ids) for _, e in rows])
    return [list(range(len(rows)))] if groups == [None] else [g.tolist() for g in groups]


def mixed_probs(rows: list[tuple[object, Encoded]], pad_id: int,
                content_free: dict[int, torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Label probabilities [L_i] for each row (pipeline, encoded input): rows of all adapters
    share forwards, one per length group; calibrated with `content_free[id(pipe)]` where the
    run calibrates."""
    result: list = [None] * len(rows)
    for group in by_length(rows):
        for i, probs in zip(group, _probs([rows[i] for i in group], pad_id, content_free or {}),
                            strict=True):
            result[i] = probs
    return result


def _probs(rows: list[tuple[object, Encoded]], pad_id: int, content_free: dict) -> list[torch.Tensor]:
    mixed = prepare(rows, pad_id)
    base = rows[0][0].loaded.model
    if not window_allows(base.config, mixed.mask.size(1)):
        return apart_probs(rows, pad_id, content_free)
    cache = None
    if mixed.prefix is not None:
        cache = kv_cache(base.config, mixed.prefix, mixed.embeds.size(0))
    out = mixed.run(base, cache)
    hidden = pick(out.last_hidden_state, mixed.answer)  # [B, H]
    result: list = [None] * len(rows)
    for pipe, idx in mixed.groups:
        probs = pipe.method.scores(hidden[idx], pipe.model).float().softmax(-1)  # [R, L]
        probs = pipe.calibrated(probs, content_free.get(id(pipe)))
        for j, row in enumerate(idx.tolist()):
            result[row] = probs[j].cpu()
    return result


def apart_probs(rows: list[tuple[object, Encoded]], pad_id: int, content_free: dict,
                batch_size: int = 32) -> list[torch.Tensor]:
    """Each adapter's rows through its own inference path, batched per adapter: for runs that
    cannot mix (`can_mix`), and for batches past a sliding window (a sliding-window layer
    measures distance in columns, and left padding between a row's prefix keys and its tokens
    would stretch it past the window where training saw them inside it)."""
    result: list = [None] * len(rows)
    for pipe, idx in group_rows([p for p, _ in rows], "cpu"):
        items = [rows[i][1] for i in idx.tolist()]
        probs = pipe.calibrated(predict_probs(pipe.model, items, pad_id, batch_size),
                                content_free.get(id(pipe)))
        for i, p in zip(idx.tolist(), probs, strict=True):
            result[i] = p
    return result
