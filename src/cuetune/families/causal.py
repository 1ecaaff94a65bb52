"""Decoders (Llama, Gemma, GPT-2, ...): the hidden state before the answer predicts it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from cuetune.errors import ModelError
from cuetune.families import fastpath
from cuetune.families.family import (
    Family,
    kv_cache,
    pick,
    prefix_len,
    repeat_rows,
    select_cache,
    window_allows,
    word_targets,
)


class Causal(Family):
    name = "causal"
    auto_class = AutoModelForCausalLM
    answer_is_next = True
    shares_prefix = True
    generates = True
    mixes_rows = True
    peft_task_type = "CAUSAL_LM"
    peft_prompts = True
    fallback = True

    @classmethod
    def detect(cls, config) -> bool:
        return True

    def run(self, model, inputs):
        """As `Family.run`, through the exact fast path (see `fastpath`): the shared prompt
        runs once, padded batches are packed or split into length groups. Positions come from
        the mask, so left padding is exact too."""
        return fastpath.run(model, inputs)

    teaches_words = True

    def word_logprobs(self, prompt_model, batch, words):
        """As `Family.word_logprobs`, with the prompt run once: its cache is repeated for the
        W words and each row appends only its word's tokens (all but the last). Rows of similar
        length run together, each group cut to its longest row (`fastpath.length_groups`): a
        padded batch of reviews from 20 to 256 tokens otherwise ran at about twice the cost."""
        mask = batch["attention_mask"]  # [B, T]
        if not bool(mask[:, 0].all()):  # left padding: no column to cut
            return self._word_logprobs(prompt_model, batch, words)
        return self._grouped(prompt_model, batch, words, fastpath.length_groups(mask.sum(1).tolist()))

    def _grouped(self, prompt_model, batch, words, groups):
        if len(groups) == 1:
            return self._word_logprobs(prompt_model, batch, words)
        mask, parts = batch["attention_mask"], []
        for idx in groups:
            idx = idx.to(mask.device)
            width = int(mask[idx].sum(1).max())
            parts.append(self._word_logprobs(prompt_model, _rows(batch, idx, width), words))
        return fastpath.in_batch_order(parts, groups)  # [B, W]

    def _word_logprobs(self, prompt_model, batch, words):
        B, W = batch["input_ids"].size(0), len(words)
        state = CausalState(prompt_model, batch, 0)
        lengths = batch["attention_mask"].sum(1).tolist()
        width = state.mask.size(1) + max(len(w) for w in words)  # cache slots the last word sees
        if len(set(lengths)) > 1 and not window_allows(prompt_model.base.config, width):
            # a sliding window counts cache slots: a shorter row's word would see padding, not
            # its own last tokens; rows of one length each have none (exact, more passes)
            by_length = [torch.tensor([i for i, n in enumerate(lengths) if n == m])
                         for m in sorted(set(lengths))]
            return self._grouped(prompt_model, batch, words, by_length)
        first = self.token_logits(prompt_model.base, state.hidden_at(batch["answer_pos"]), None)
        target = word_targets(words, B, first.device)  # [B*W, m]
        logp = first.log_softmax(-1).repeat_interleave(W, 0)  # [B*W, V]: the words' first tokens
        total = logp.gather(1, target[:, :1]).squeeze(1)  # [B*W]
        if target.size(1) > 1:
            state.select(torch.arange(B, device=first.device).repeat_interleave(W))
            hidden = state.extend(target[:, :-1].clamp(min=0), every=True)  # [B*W, m-1, H]
            rest = self.token_logits(prompt_model.base, hidden.reshape(-1, hidden.size(-1)), None)
            rest = rest.log_softmax(-1).view(B * W, -1, rest.size(-1))
            later = target[:, 1:]
            total = total + (rest.gather(2, later.clamp(min=0)[..., None]).squeeze(2) * (later >= 0)).sum(1)
        return total.view(B, W)

    def teach_words(self, batch, words):
        """Word tokens written after each row's answer position (the prompt's last token);
        for a right-padded row those columns were padding."""
        B, W = batch["input_ids"].size(0), len(words)
        target = word_targets(words, B, batch["input_ids"].device)  # [B*W, m]
        m = target.size(1)
        out = repeat_rows(batch, W)
        grow = int((out["answer_pos"] + m).max()) + 1 - out["input_ids"].size(1)
        if grow > 0:
            for key, fill in (("input_ids", 0), ("attention_mask", 0), ("soft_index", -1)):
                out[key] = torch.cat([out[key], out[key].new_full((out[key].size(0), grow), fill)], 1)
        steps = out["answer_pos"][:, None] + torch.arange(m, device=target.device)  # [B*W, m]
        given = steps[:, 1:]  # where tokens 1..m-1 of the word are written
        rows = torch.arange(B * W, device=target.device)[:, None].expand_as(given)
        known = target[:, :-1] >= 0
        out["input_ids"][rows[known], given[known]] = target[:, :-1][known]
        out["attention_mask"][rows[known], given[known]] = 1
        out["answer_pos"], out["target"] = steps, target
        return out

    def decoding_state(self, prompt_model, batch, max_new):
        return CausalState(prompt_model, batch, max_new)

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


class CausalState:
    """A decoder's cache after the prompt; `step` appends one token per row."""

    def __init__(self, model, batch: dict, max_new: int):
        base, family = model.base, model.family
        inputs = model.inputs(batch)
        prefix, length = inputs.prefix, inputs.inputs_embeds.size(1)
        if prefix is not None and not window_allows(base.config, prefix_len(prefix) + length + max_new):
            raise ModelError("generate: prefix keys plus the prompt and max_new_tokens exceed this "
                             "model's sliding attention window, where cached and teacher-forced "
                             "attention to the prefix differ; lower generate.max_new_tokens or "
                             "data.max_length, or use a soft prompt")
        prefix, embeds, mask, past, self.dropped = fastpath.share_prompt(base, inputs, inputs.answer_pos,
                                                                         max_new)
        rows = embeds.size(0)
        self.cache = kv_cache(None, prefix, rows)
        self.mask = torch.cat([mask.new_ones(rows, past), mask], 1)  # [B, past + T]
        positions = past + (mask.cumsum(1) - 1).clamp(min=0)  # [B, T]
        out = base.base_model(inputs_embeds=embeds, attention_mask=self.mask, position_ids=positions,
                              cache=self.cache, use_cache=True)
        self.next_pos = positions[:, -1] + 1  # [B]: right-padded rows continue after their last token
        self.base, self.family = base, family
        self.states = out.last_hidden_state  # [B, T - dropped, H]
        self._logits = None

    @property
    def logits(self) -> torch.Tensor:
        """Next-token logits after the prompt's last column [B, V] (left-padded batches)."""
        if self._logits is None:
            self._logits = self.family.token_logits(self.base, self.states[:, -1], None)
        return self._logits

    def hidden_at(self, pos: torch.Tensor) -> torch.Tensor:
        """The prompt's hidden states at positions pos [B] of the batch's columns -> [B, H]."""
        return pick(self.states, pos - self.dropped)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B] -> next-token logits [B, V]."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.size(0), 1)], 1)
        out = self.base.base_model(input_ids=tokens[:, None], attention_mask=self.mask,
                                   position_ids=self.next_pos[:, None], cache=self.cache, use_cache=True)
        self.next_pos = self.next_pos + 1
        return self.family.token_logits(self.base, out.last_hidden_state[:, -1], None)

    def extend(self, tokens: torch.Tensor, every: bool = False) -> torch.Tensor:
        """tokens [B, n] appended at once -> the last one's hidden state [B, H], or each one's
        [B, n, H] (`every`). Prompt search scores candidates this way (the input runs once,
        each candidate only its own tokens), and chain scoring reads label words."""
        n = tokens.size(1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.size(0), n)], 1)
        positions = self.next_pos[:, None] + torch.arange(n, device=tokens.device)  # [B, n]
        out = self.base.base_model(input_ids=tokens, attention_mask=self.mask, position_ids=positions,
                                   cache=self.cache, use_cache=True)
        self.next_pos = self.next_pos + n
        return out.last_hidden_state if every else out.last_hidden_state[:, -1]

    def select(self, rows: torch.Tensor) -> None:
        """Keep (and repeat) these rows: beams expand and reorder."""
        select_cache(self.cache, rows)
        self.mask, self.next_pos = self.mask[rows], self.next_pos[rows]


COLUMN_KEYS = ("input_ids", "attention_mask", "soft_index")
"""A classification batch's [B, T] tensors (`encoding.collate`); the rest are per row."""


def _rows(batch: dict, idx: torch.Tensor, width: int) -> dict:
    """Rows `idx` of a right-padded batch, its [B, T] tensors cut to `width` columns."""
    B = batch["attention_mask"].size(0)
    out = {}
    for key, value in batch.items():
        if key in COLUMN_KEYS:
            value = value[idx][:, :width]
        elif isinstance(value, torch.Tensor) and value.dim() >= 1 and value.size(0) == B:
            value = value[idx]
        out[key] = value
    return out
