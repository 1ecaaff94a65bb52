"""Model families: where the answer is and how its logits are read.

Each family knows (1) how a prompt is laid out for it (the answer is the next token for a
causal LM, a mask token for a masked LM, the decoder's first token for seq2seq) and (2) how to
get logits for a few label-word tokens at the answer position only, never full-vocabulary
logits at every position (the LM-BFF way: logits only where the answer is).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, EncoderDecoderCache

from cuetune.errors import ModelError

MASKED_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "albert", "mpnet",
                "deberta", "deberta-v2", "camembert", "modernbert"}


class Family:
    name: ClassVar[str]
    answer_style: ClassVar[str]
    """'next' (hidden state before the answer predicts it) or 'mask' (a mask token holds it)."""

    shares_prefix: ClassVar[bool] = False
    """True when states at a position never depend on later positions (causal attention), so
    an input-independent start of the prompt can be computed once per batch."""

    def run(self, model: nn.Module, inputs: dict) -> torch.Tensor:
        """Hidden states at the answer positions [B, H].

        inputs: `inputs_embeds` [B, T, H], `attention_mask` [B, T], `answer_pos` [B], and
        optionally `prefix`: per layer (keys, values) [1 or B, kv_heads, P, d] every position
        sees.
        """
        embeds, mask = inputs["inputs_embeds"], inputs["attention_mask"]
        extra = {}
        if inputs.get("prefix") is not None:
            extra["past_key_values"] = _cache(model.config, inputs["prefix"], embeds.size(0))
            mask = torch.cat([mask.new_ones(mask.size(0), prefix_len(inputs["prefix"])), mask], 1)
        out = model.base_model(inputs_embeds=embeds, attention_mask=mask, use_cache=False, **extra)
        return _pick(out.last_hidden_state, inputs["answer_pos"])

    def kv_layout(self, model: nn.Module) -> tuple[int, int, int]:
        """(layers, kv heads, head dim) of the attention a prefix is prepended to."""
        cfg = model.config.get_text_config()
        heads = cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        return cfg.num_hidden_layers, kv_heads, head_dim

    def capture_kv(self, model: nn.Module, ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The keys and values the model computes for `ids` [1, P], per layer [1, kv_heads, P, d]."""
        cache = DynamicCache(config=model.config)
        model.base_model(input_ids=ids, past_key_values=cache, use_cache=True)
        return [(layer.keys, layer.values) for layer in cache.layers]

    def token_logits(self, model: nn.Module, hidden: torch.Tensor,
                     token_ids: torch.Tensor | None) -> torch.Tensor:
        """Logits of `token_ids` [V'] from answer hidden states [..., H] -> [..., V'];
        None: the whole vocabulary (generation)."""
        raise NotImplementedError

    def output_head(self, model: nn.Module) -> nn.Module:
        """The module that turns hidden states into vocabulary logits."""
        return model.get_output_embeddings()

    def setup(self, tokenizer) -> None:
        """Read the special tokens the family needs from the tokenizer."""

    def repair_missing_head(self, model: nn.Module, missing: set | list) -> None:
        """Fill an output head the checkpoint lacks; only masked encoders need it."""


class Causal(Family):
    name = "causal"
    answer_style = "next"
    shares_prefix = True

    def run(self, model, inputs):
        """As `Family.run`; with `shared_len` S > 0, the first S real tokens of every row (the
        same in all rows) run once with batch size 1 and their keys and values are broadcast to
        the batch, which is exact because causal attention never looks ahead. Gradients reach
        the shared tokens through the broadcast. `memo` (a dict, inference only) keeps those keys
        and values across batches. Positions come from the mask, so left padding is exact too.
        """
        answer = inputs["answer_pos"]
        first = answer.reshape(answer.size(0), -1)[:, 0]  # [B]: the (first) answer position
        prefix, embeds, mask, past, shared = self.share_prompt(model, inputs, first, 0)
        answer = answer - shared
        if _should_pack(mask, model.config, past):
            return self._packed(model, embeds, mask, answer, prefix, past)
        right = bool(mask[:, 0].all())  # no row starts with padding
        groups = _length_groups(mask.sum(1).tolist())
        hidden = [self._rows(model, embeds, mask, answer, prefix, past, idx, right) for idx in groups]
        if len(groups) == 1:
            return hidden[0]
        order = torch.cat(groups).to(embeds.device)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        return torch.cat(hidden)[inverse]  # [B, H] in the batch's row order

    def _rows(self, model, embeds, mask, answer, prefix, past: int, idx, right: bool):
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
            extra["past_key_values"] = _cache(model.config, prefix, batch)
            mask = torch.cat([mask.new_ones(batch, past), mask], dim=1)
        positions = past + (mask[:, past:].cumsum(1) - 1).clamp(min=0)  # [R, T']
        out = model.base_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                               use_cache=False, **extra)
        return _pick(out.last_hidden_state, answer)  # [R, H] or [R, A, H]

    def _packed(self, model, embeds, mask, answer, prefix, past: int):
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
            extra["past_key_values"] = _cache(model.config, prefix, 1)
        out = model.base_model(inputs_embeds=embeds[real][None], attention_mask=keys[None, None],
                               position_ids=(past + pos)[None], use_cache=False, **extra)
        return out.last_hidden_state[0, _pick(where, answer)]  # [B, H] or [B, A, H]

    def share_prompt(self, model, inputs, first: torch.Tensor, extra: int):
        """Run the shared tokens once (see `run`) and drop them from every row.

        `first` [B]: each row's first answer position (sharing stops before it); `extra`: tokens
        that will follow the input (generation), which must fit a sliding window too. Returns
        (prefix keys and values, embeds, mask, past length, number of shared tokens dropped)."""
        embeds, mask = inputs["inputs_embeds"], inputs["attention_mask"]  # [B, T, H], [B, T]
        prefix = inputs.get("prefix")  # per layer (k, v) [1 or B, kv, P, d]
        past = 0 if prefix is None else prefix_len(prefix)
        start = (mask.cumsum(1) == 0).sum(1)  # [B]: left padding before the first real token
        shared = min(inputs.get("shared_len", 0), int((first - start).min()))
        if shared <= 0 or not window_allows(model.config, past + embeds.size(1) + extra):
            return prefix, embeds, mask, past, 0
        prefix = self.shared_kv(model, inputs, prefix, past, int(start[0]), shared)
        embeds, mask = drop_columns(embeds, start, shared), drop_columns(mask, start, shared)
        return prefix, embeds, mask, past + shared, shared

    def shared_kv(self, model, inputs, prefix, past: int, start: int, shared: int):
        """Keys and values [1, kv, past + shared, d] per layer after the shared tokens."""
        memo = inputs.get("memo")
        key = None
        if memo is not None:
            key = (shared, tuple(inputs["input_ids"][0, start:start + shared].tolist()))
            if key in memo:
                return memo[key]
        embeds = inputs["inputs_embeds"][:1, start:start + shared]  # [1, S, H]
        cache = _cache(model.config, prefix, 1) if prefix is not None else DynamicCache(config=model.config)
        mask = torch.ones(1, past + shared, dtype=torch.long, device=embeds.device)
        positions = torch.arange(past, past + shared, device=embeds.device)[None]
        model.base_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                         past_key_values=cache, use_cache=True)
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        if key is not None:
            memo[key] = kv
        return kv

    def token_logits(self, model, hidden, token_ids):
        head = model.get_output_embeddings()
        every = token_ids is None
        weight = head.weight if every else head.weight[token_ids]  # [V', H]: the label-word rows
        bias = getattr(head, "bias", None)
        bias = bias if bias is None or every else bias[token_ids]
        logits = F.linear(hidden.to(weight.dtype), weight, bias).float()  # [B, V']
        cap = getattr(model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits


class Masked(Family):
    name = "masked"
    answer_style = "mask"

    def token_logits(self, model, hidden, token_ids):
        head = self._head(model)
        logits = head(hidden[:, None, :])[:, 0, :]  # [B, V]: one position per row only
        return logits[:, token_ids].float()

    def output_head(self, model):
        return self._head(model)

    @staticmethod
    def _head(model: nn.Module) -> nn.Module:
        heads = [m for n, m in model.named_children() if n != model.base_model_prefix]
        if len(heads) != 1:
            raise ModelError(
                f"{type(model).__name__}: cannot find a single MLM head beside the encoder"
            )
        return heads[0]

    def repair_missing_head(self, model, missing):
        """Encoders shipped without an MLM head (minilm-l6) get a deterministic fallback.

        The decoder stays tied to the word embeddings; the transform becomes the identity and
        the output bias zero, so a mask's score for a word is the dot product of its normalised
        hidden state with that word's embedding. Random init would make every load differ.
        """
        head_missing = [k for k in missing if not k.startswith(model.base_model_prefix + ".")]
        if not head_missing:
            return
        predictions = getattr(getattr(model, "cls", None), "predictions", None)
        if predictions is None:
            raise ModelError(
                f"{type(model).__name__}: checkpoint has no MLM head and no fallback is known "
                "for this architecture; use a checkpoint with an MLM head"
            )
        with torch.no_grad():
            dense = predictions.transform.dense
            dense.weight.copy_(torch.eye(dense.weight.size(0), dtype=dense.weight.dtype))
            dense.bias.zero_()
            predictions.transform.transform_act_fn = nn.Identity()
            predictions.transform.LayerNorm.weight.fill_(1.0)
            predictions.transform.LayerNorm.bias.zero_()
            predictions.bias.zero_()
            if getattr(predictions.decoder, "bias", None) is not None:
                predictions.decoder.bias.zero_()
        model.cuetune_head_fallback = True


class Seq2Seq(Family):
    """T5-style: the template goes to the encoder with a sentinel at the answer; the decoder's
    first step after the sentinel predicts the label word."""

    name = "seq2seq"
    answer_style = "sentinel"

    sentinel = "<extra_id_0>"

    def setup(self, tokenizer) -> None:
        ids = tokenizer.convert_tokens_to_ids([self.sentinel])
        if not ids or ids[0] is None or ids[0] == tokenizer.unk_token_id:
            raise ModelError(f"seq2seq tokenizer has no {self.sentinel} token for the answer")
        self.sentinel_id = ids[0]

    def run(self, model, inputs):
        embeds, mask = inputs["inputs_embeds"], inputs["attention_mask"]
        start = model.config.decoder_start_token_id
        taught = inputs.get("decoder_input_ids")  # generation: [B, A] teacher-forced answer
        if taught is None:
            dec = torch.tensor([[start, self.sentinel_id]] * embeds.size(0), device=embeds.device)
        else:
            dec = torch.cat([taught.new_full((taught.size(0), 1), start), taught], 1)
        enc = model.get_encoder()(inputs_embeds=embeds, attention_mask=mask)
        extra = {}
        if inputs.get("prefix") is not None:  # T5's encoder reads no cache: the decoder gets it
            own = _cache(model.config, inputs["prefix"], embeds.size(0))
            extra["past_key_values"] = EncoderDecoderCache(own, DynamicCache(config=model.config))
        out = model.get_decoder()(input_ids=dec, encoder_hidden_states=enc.last_hidden_state,
                                  encoder_attention_mask=mask, use_cache=False, **extra)
        if taught is not None:
            return _pick(out.last_hidden_state, inputs["answer_pos"])  # [B, A, H]
        return out.last_hidden_state[:, -1]  # [B, H]: the step after the sentinel

    def kv_layout(self, model):
        cfg = model.config
        return cfg.num_decoder_layers, cfg.num_heads, cfg.d_kv

    def capture_kv(self, model, ids):
        enc = model.get_encoder()(input_ids=ids)
        cache = EncoderDecoderCache(DynamicCache(config=model.config), DynamicCache(config=model.config))
        model.get_decoder()(input_ids=ids, encoder_hidden_states=enc.last_hidden_state,
                            past_key_values=cache, use_cache=True)
        return [(layer.keys, layer.values) for layer in cache.self_attention_cache.layers]

    def token_logits(self, model, hidden, token_ids):
        if getattr(model.config, "tie_word_embeddings", False):
            hidden = hidden * model.config.d_model ** -0.5  # T5 rescales before a tied head
        weight = model.get_output_embeddings().weight
        weight = weight if token_ids is None else weight[token_ids]
        return F.linear(hidden.to(weight.dtype), weight).float()


def _pick(hidden: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    """hidden [B, T, ...] at answer [B] -> [B, ...], or at answer [B, A] -> [B, A, ...]."""
    rows = torch.arange(hidden.size(0), device=hidden.device)
    return hidden[rows[:, None] if answer.dim() == 2 else rows, answer]


def prefix_len(prefix: list) -> int:
    return prefix[0][0].size(2)


def _cache(config, prefix: list[tuple[torch.Tensor, torch.Tensor]], batch: int) -> DynamicCache:
    """A fresh cache pre-filled with the prefix, broadcast to `batch` rows (the forward pass
    appends to it in place; the expand is a view, so the gradient sums over rows)."""
    cache = DynamicCache(config=config)
    for layer, (keys, values) in enumerate(prefix):
        cache.update(keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1), layer)
    return cache


def drop_columns(x: torch.Tensor, start: torch.Tensor, count: int) -> torch.Tensor:
    """Remove `count` columns beginning at `start[b]` from each row of x [B, T, ...]."""
    if not bool(start.any()):
        return x[:, count:]  # right padding: the shared block is the first columns
    cols = torch.arange(x.size(1) - count, device=x.device)[None]  # [1, T - count]
    idx = cols + count * (cols >= start[:, None])  # [B, T - count]
    if x.dim() == 3:
        idx = idx[..., None].expand(-1, -1, x.size(2))
    return x.gather(1, idx)


PACK_WASTE = 0.15
"""Pack a batch into one unpadded sequence when padding would be more than this share."""


def _should_pack(mask: torch.Tensor, config, past: int) -> bool:
    """Worth it (enough padding), and exact (no sliding-window layer, whose window the
    block-diagonal mask would not apply)."""
    if mask.size(0) < 2 or not window_allows(config, 1 << 30):
        return False
    return mask.numel() > (1 + PACK_WASTE) * int(mask.sum())


GROUP_OVERHEAD_TOKENS = 16
"""What one more forward pass costs, in padded tokens (kernel launches, small matmuls)."""


def _length_groups(lengths: list[int]) -> list[torch.Tensor | None]:
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


def window_allows(config, length: int) -> bool:
    """Sliding-window caches keep only the window; share only when everything fits in it."""
    cfg = config.get_text_config()
    window = getattr(cfg, "sliding_window", None)
    sliding = "sliding_attention" in (getattr(cfg, "layer_types", None) or [])
    return not (window and sliding) or length <= window


def family_for(config, hint: str | None = None) -> Family:
    if hint is not None:
        return {"causal": Causal, "masked": Masked, "seq2seq": Seq2Seq}[hint]()
    if getattr(config, "is_encoder_decoder", False):
        return Seq2Seq()
    if config.model_type in MASKED_TYPES:
        return Masked()
    return Causal()
