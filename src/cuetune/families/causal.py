"""Decoders (Llama, Gemma, GPT-2, ...): the hidden state before the answer predicts it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from cuetune.errors import ModelError
from cuetune.families import fastpath
from cuetune.families.base import (
    Family,
    kv_cache,
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
        prefix, length = inputs.get("prefix"), inputs["inputs_embeds"].size(1)
        if prefix is not None and not window_allows(base.config, prefix_len(prefix) + length + max_new):
            raise ModelError("generate: prefix keys plus the prompt and max_new_tokens exceed this "
                             "model's sliding attention window, where cached and teacher-forced "
                             "attention to the prefix differ; lower generate.max_new_tokens or "
                             "data.max_length, or use a soft prompt")
        prefix, embeds, mask, past, _ = fastpath.share_prompt(base, inputs, inputs["answer_pos"], max_new)
        rows = embeds.size(0)
        self.cache = kv_cache(None, prefix, rows)
        self.mask = torch.cat([mask.new_ones(rows, past), mask], 1)  # [B, past + T]
        positions = past + (mask.cumsum(1) - 1).clamp(min=0)  # [B, T]
        out = base.base_model(inputs_embeds=embeds, attention_mask=self.mask, position_ids=positions,
                              cache=self.cache, use_cache=True)
        self.next_pos = positions[:, -1] + 1  # [B]
        self.base, self.family = base, family
        self.logits = family.token_logits(base, out.last_hidden_state[:, -1], None)  # [B, V]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B] -> next-token logits [B, V]."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.size(0), 1)], 1)
        out = self.base.base_model(input_ids=tokens[:, None], attention_mask=self.mask,
                                   position_ids=self.next_pos[:, None], cache=self.cache, use_cache=True)
        self.next_pos = self.next_pos + 1
        return self.family.token_logits(self.base, out.last_hidden_state[:, -1], None)

    def extend(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, n] appended at once -> the last one's hidden state [B, H] (prompt search
        scores candidates this way: the input runs once, each candidate only its own tokens)."""
        n = tokens.size(1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.size(0), n)], 1)
        positions = self.next_pos[:, None] + torch.arange(n, device=tokens.device)  # [B, n]
        out = self.base.base_model(input_ids=tokens, attention_mask=self.mask, position_ids=positions,
                                   cache=self.cache, use_cache=True)
        self.next_pos = self.next_pos + n
        return out.last_hidden_state[:, -1]

    def select(self, rows: torch.Tensor) -> None:
        """Keep (and repeat) these rows: beams expand and reorder."""
        select_cache(self.cache, rows)
        self.mask, self.next_pos = self.mask[rows], self.next_pos[rows]
