"""The causal fast path: exact shortcuts that skip work a decoder's forward would repeat.

- **Shared prompt**: the first S tokens of every row (special tokens, soft prompt, template
  words before the input) are the same in all rows, and causal attention never looks ahead, so
  they run once with batch size 1 and their keys and values are broadcast to the batch. With a
  `memo` (inference) they run once per `reuse_shared` block, across batches.
- **Packing**: a batch with much padding runs as one unpadded sequence [1, N, H] under a
  block-diagonal causal mask.
- **Length groups**: otherwise rows of similar length run together, each group padded only to
  its own longest row.

Each is exact: every row computes what it would alone (tests/test_fast_path.py).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from cuetune.families.family import kv_cache, pick, prefix_len, window_allows
from cuetune.families.inputs import ModelInputs

PACK_WASTE = 0.15
"""Pack a batch into one unpadded sequence when padding would be more than this share."""

GROUP_OVERHEAD_TOKENS = 16
"""What one more forward pass costs, in padded tokens (kernel launches, small matmuls)."""


def run(model, inputs: ModelInputs) -> torch.Tensor:
    """Hidden states at the answer [B, H] (or [B, A, H]) through the fast path."""
    if inputs.row_groups:
        return run_groups(model, inputs)
    answer = inputs.answer_pos
    first = answer.reshape(answer.size(0), -1)[:, 0]  # [B]: the (first) answer position
    prefix, embeds, mask, past, shared = share_prompt(model, inputs, first, 0)
    answer = answer - shared
    if should_pack(mask, model.config, past):
        return packed(model, embeds, mask, answer, prefix, past)
    right = bool(mask[:, 0].all())  # no row starts with padding
    groups = length_groups(mask.sum(1).tolist())
    hidden = [rows(model, embeds, mask, answer, prefix, past, idx, right) for idx in groups]
    if len(groups) == 1:
        return hidden[0]
    return in_batch_order(hidden, groups)  # [B, H]


def run_groups(model, inputs: ModelInputs) -> torch.Tensor:
    """`inputs.row_groups`: [(rows [R], shared length, memo key)], groups of rows that share
    their own first tokens (a mixture: each prompt's rows, or each input's rows). Each group runs
    through the fast path with its own shared start, and its own memo under `memo key` (rows of
    two soft prompts have the same ids under different embeddings), or none when the key is None."""
    memo, hidden, order = inputs.memo, [], []
    for idx, shared, key in inputs.row_groups:
        own = None if memo is None or key is None else memo.setdefault(("row group", key), {})
        hidden.append(run(model, inputs.rows(idx, shared, own)))
        order.append(idx)
    return in_batch_order(hidden, order)  # [B, H]


def in_batch_order(parts: list[torch.Tensor], groups: list[torch.Tensor]) -> torch.Tensor:
    """Per-group results (rows `groups[i]` of the batch each) back in the batch's row order."""
    order = torch.cat(groups).to(parts[0].device)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return torch.cat(parts)[inverse]


def rows(model, embeds, mask, answer, prefix, past: int, idx, right: bool) -> torch.Tensor:
    """Hidden states at the answer [R, H] for rows `idx` (None: all), padded only to the
    longest of these rows."""
    if idx is not None:
        embeds, mask, answer = embeds[idx], mask[idx], answer[idx]
        width = int(mask.sum(1).max())
        cut = 0 if right else mask.size(1) - width
        embeds, mask, answer = embeds[:, cut:cut + width], mask[:, cut:cut + width], answer - cut
        if prefix is not None and prefix[0][0].size(0) > 1:
            prefix = [(k[idx], v[idx]) for k, v in prefix]
    batch = embeds.size(0)
    extra = {}
    if prefix is not None:
        extra["cache"] = kv_cache(model.config, prefix, batch)
        mask = torch.cat([mask.new_ones(batch, past), mask], dim=1)
    positions = past + (mask[:, past:].cumsum(1) - 1).clamp(min=0)  # [R, T']
    out = model.base_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                           use_cache=False, **extra)
    return pick(out.last_hidden_state, answer)  # [R, H] or [R, A, H]


def packed(model, embeds, mask, answer, prefix, past: int) -> torch.Tensor:
    """All rows' real tokens as one sequence [1, N, H], no padding: a block-diagonal causal
    mask keeps each row to itself, every token sees the `past` keys (prefix and shared
    prompt) and positions restart per row, so each row computes what it would alone."""
    real = mask.bool()  # [B, T]
    where = torch.full(mask.shape, -1, dtype=torch.long, device=mask.device)
    where[real] = torch.arange(int(real.sum()), device=mask.device)  # packed index per cell
    row = torch.arange(mask.size(0), device=mask.device)[:, None].expand_as(mask)[real]  # [N]
    pos = (mask.cumsum(1) - 1)[real]  # [N]: position within its row
    same = (row[:, None] == row[None, :]) & (pos[None, :] <= pos[:, None])  # [N, N]
    keys = torch.cat([same.new_ones(same.size(0), past), same], dim=1)  # [N, past + N]
    extra = {}
    if prefix is not None:
        extra["cache"] = kv_cache(model.config, prefix, 1)
    out = model.base_model(inputs_embeds=embeds[real][None], attention_mask=keys[None, None],
                           position_ids=(past + pos)[None], use_cache=False, **extra)
    return out.last_hidden_state[0, pick(where, answer)]  # [B, H] or [B, A, H]


def share_prompt(model, inputs: ModelInputs, first: torch.Tensor, extra: int):
    """Run the shared tokens once and drop them from every row.

    `first` [B]: each row's first answer position (sharing stops before it); `extra`: tokens
    that will follow the input (generation), which must fit a sliding window too. Returns
    (prefix keys and values, embeds, mask, past length, number of shared tokens dropped)."""
    embeds, mask = inputs.inputs_embeds, inputs.attention_mask  # [B, T, H], [B, T]
    prefix = inputs.prefix  # per layer (k, v) [1 or B, kv, P, d]
    past = 0 if prefix is None else prefix_len(prefix)
    start = (mask.cumsum(1) == 0).sum(1)  # [B]: left padding before the first real token
    shared = min(inputs.shared_len, int((first - start).min()))
    if shared <= 0 or not window_allows(model.config, past + embeds.size(1) + extra):
        return prefix, embeds, mask, past, 0
    prefix = shared_kv(model, inputs, prefix, past, int(start[0]), shared)
    embeds, mask = drop_columns(embeds, start, shared), drop_columns(mask, start, shared)
    return prefix, embeds, mask, past + shared, shared


def shared_kv(model, inputs: ModelInputs, prefix, past: int, start: int, shared: int):
    """Keys and values [1, kv, past + shared, d] per layer after the shared tokens."""
    memo = inputs.memo
    key = None
    if memo is not None:
        key = (shared, tuple(inputs.input_ids[0, start:start + shared].tolist()))
        if key in memo:
            return memo[key]
    embeds = inputs.inputs_embeds[:1, start:start + shared]  # [1, S, H]
    cache = kv_cache(model.config, prefix, 1) if prefix is not None else DynamicCache(config=model.config)
    mask = torch.ones(1, past + shared, dtype=torch.long, device=embeds.device)
    positions = torch.arange(past, past + shared, device=embeds.device)[None]
    model.base_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                     cache=cache, use_cache=True)
    kv = [(layer.keys, layer.values) for layer in cache.layers]
    if key is not None:
        memo[key] = kv
    return kv


def drop_columns(x: torch.Tensor, start: torch.Tensor, count: int) -> torch.Tensor:
    """Remove `count` columns beginning at `start[b]` from each row of x [B, T, ...]."""
    if not bool(start.any()):
        return x[:, count:]  # right padding: the shared block is the first columns
    cols = torch.arange(x.size(1) - count, device=x.device)[None]  # [1, T - count]
    idx = cols + count * (cols >= start[:, None])  # [B, T - count]
    if x.dim() == 3:
        idx = idx[..., None].expand(-1, -1, x.size(2))
    return x.gather(1, idx)


def should_pack(mask: torch.Tensor, config, past: int) -> bool:
    """Worth it (enough padding), and exact (no sliding-window layer, whose window the
    block-diagonal mask would not apply)."""
    if mask.size(0) < 2 or not window_allows(config, 1 << 30):
        return False
    return mask.numel() > (1 + PACK_WASTE) * int(mask.sum())


def length_groups(lengths: list[int]) -> list[torch.Tensor | None]:
    """Split a batch into groups of similar length when that saves more padding than the extra
    passes cost: the optimal partition of the length-sorted rows (a small dynamic program).
    Gradients are unchanged (the loss still averages the whole batch); only padding goes.
    [None] means one pass over the batch as it is."""
    n = len(lengths)
    if n < 2:
        return [None]
    order = sorted(range(n), key=lengths.__getitem__)
    size = [lengths[i] for i in order]
    best, cut = [0.0] + [float("inf")] * n, [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            cost = best[i] + (j - i) * size[j - 1] + GROUP_OVERHEAD_TOKENS
            if cost < best[j]:
                best[j], cut[j] = cost, i
    bounds, j = [], n
    while j > 0:
        bounds.append((cut[j], j))
        j = cut[j]
    if len(bounds) == 1:
        return [None]
    return [torch.tensor(order[i:j]) for i, j in reversed(bounds)]
