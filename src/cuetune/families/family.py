"""What a model family is, and the key/value cache helpers every family shares.

A family knows (1) how a prompt is laid out for it (the answer is the next token for a causal
LM, a mask token for a masked LM, the decoder's first token for seq2seq), (2) how to get logits
for a few label-word tokens at the answer position only, never full-vocabulary logits at every
position (the LM-BFF way: logits only where the answer is), (3) how decoding state is built
when it writes text, and (4) what it supports (generation, PEFT adapter types). Code outside
`cuetune.families` asks the family object; it never compares family names.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from transformers import DynamicCache

from cuetune.errors import ModelError
from cuetune.families.inputs import ModelInputs


class Family:
    name: ClassVar[str]
    auto_class: ClassVar[type]
    """The transformers Auto class that loads a model of this family with its LM head."""
    answer_is_next: ClassVar[bool] = False
    """True: the hidden state before the answer predicts it (nothing follows the answer).
    False: a placeholder token (mask, sentinel) holds the answer's place in the input."""
    shares_prefix: ClassVar[bool] = False
    """True when states at a position never depend on later positions (causal attention), so
    an input-independent start of the prompt can be computed once per batch."""
    generates: ClassVar[bool] = False
    """Whether this family can write text (`data.task: generation`)."""
    mixes_rows: ClassVar[bool] = False
    """Whether rows of several adapters can share one forward (`cuetune.serve.mixed`): left
    padding with positions from the mask, per-row prefix keys, one token per decoding step."""
    peft_task_type: ClassVar[str | None] = None
    """PEFT's `task_type` for this family's adapters (None: PEFT has none that fits)."""
    peft_prompts: ClassVar[bool] = False
    """Whether PEFT prompt adapters (prompt tuning, prefix tuning) compute what we compute."""
    pools_first_token: ClassVar[bool] = False
    """A classification head reads the first token ([CLS]) rather than the answer position."""
    fallback: ClassVar[bool] = False
    """Chosen when no other family claims a model config (`detect`)."""

    @classmethod
    def detect(cls, config) -> bool:
        """Whether a transformers config belongs to this family."""
        return False

    def setup(self, tokenizer) -> None:
        """Read the special tokens the family needs from the tokenizer."""

    def answer_token_id(self, tokenizer) -> int:
        """The token that holds the answer's place in the input (families whose
        `answer_is_next` is False)."""
        raise ModelError(f"{self.name} models read the answer after the prompt; no placeholder token")

    def end_token_ids(self, tokenizer) -> set[int]:
        """Tokens that end a written text."""
        return {tokenizer.eos_token_id} - {None}

    def run(self, model: nn.Module, inputs: ModelInputs) -> torch.Tensor:
        """Hidden states at the answer positions [B, H] (or [B, A, H] for teacher-forced answers),
        every position attending to the `prefix` keys and values when there are some."""
        embeds, mask = inputs.inputs_embeds, inputs.attention_mask
        extra = {}
        if inputs.prefix is not None:
            extra["cache"] = kv_cache(model.config, inputs.prefix, embeds.size(0))
            mask = torch.cat([mask.new_ones(mask.size(0), prefix_len(inputs.prefix)), mask], 1)
        out = model.base_model(inputs_embeds=embeds, attention_mask=mask, use_cache=False, **extra)
        return pick(out.last_hidden_state, inputs.answer_pos)

    def decoding_state(self, prompt_model, batch: dict, max_new: int):
        """The state `generate` steps through: the prompt run once, then one token per step
        (`.logits` [B, V], `.step(tokens)`, `.select(rows)`)."""
        raise ModelError(f"a {self.name} model cannot write text; use a decoder (causal) or "
                         "encoder-decoder (seq2seq) model")

    teaches_words: ClassVar[bool] = False
    """Whether label words can be read token by token after the answer position (chain-rule
    scoring, `prompt.multi_token: chain`)."""

    def teach_words(self, batch: dict, words: list[tuple[int, ...]]) -> dict:
        """The batch [B, T] with each row repeated once per label word (row b * W + w) and the
        word's tokens teacher-forced after the answer: `answer_pos` [B*W, m] where each token
        is predicted from, `target` [B*W, m] (-100 past a word's end)."""
        raise ModelError(f"prompt.multi_token: chain reads a label word token by token after the "
                         f"answer; a {self.name} model fills one answer position; use mean, first "
                         "or max")

    def word_logprobs(self, prompt_model, batch: dict, words: list[tuple[int, ...]]) -> torch.Tensor:
        """log P(word | prompt) [B, W] by the chain rule, over the whole vocabulary: each row
        repeated per word with the word teacher-forced after the answer (`teach_words`)."""
        taught = self.teach_words(batch, words)  # rows b * W + w
        target = taught.pop("target")  # [B*W, m], -100 past a word's end
        hidden = self.run(prompt_model.base, prompt_model.inputs(taught))  # [B*W, m, H]
        logp = self.token_logits(prompt_model.base, hidden.reshape(-1, hidden.size(-1)), None)
        logp = logp.log_softmax(-1).view(*target.shape, -1)  # [B*W, m, V]
        picked = logp.gather(2, target.clamp(min=0)[..., None]).squeeze(2) * (target >= 0)
        return picked.sum(1).view(-1, len(words))  # [B, W]

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
        model.base_model(input_ids=ids, cache=cache, use_cache=True)
        return [(layer.keys, layer.values) for layer in cache.layers]

    def token_logits(self, model: nn.Module, hidden: torch.Tensor,
                     token_ids: torch.Tensor | None) -> torch.Tensor:
        """Logits of `token_ids` [V'] from answer hidden states [..., H] -> [..., V'];
        None: the whole vocabulary (generation)."""
        raise NotImplementedError

    def output_head(self, model: nn.Module) -> nn.Module:
        """The module that turns hidden states into vocabulary logits."""
        return model.get_output_embeddings()

    def repair_missing_head(self, model: nn.Module, missing: set | list) -> None:
        """Fill an output head the checkpoint lacks; only masked encoders need it."""


def repeat_rows(batch: dict, times: int) -> dict:
    """Every tensor's rows repeated `times` times in place (row b -> rows b*times .. +times-1)."""
    return {k: v.repeat_interleave(times, 0) for k, v in batch.items()}


def word_targets(words: list[tuple[int, ...]], rows: int, device) -> torch.Tensor:
    """[rows * W, m] label-word tokens per repeated row, -100 past a word's end."""
    width = max(len(w) for w in words)
    table = torch.full((len(words), width), -100, dtype=torch.long, device=device)
    for i, w in enumerate(words):
        table[i, :len(w)] = torch.tensor(w, device=device)
    return table.repeat(rows, 1)


def pick(hidden: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    """hidden [B, T, ...] at answer [B] -> [B, ...], or at answer [B, A] -> [B, A, ...]."""
    rows = torch.arange(hidden.size(0), device=hidden.device)
    return hidden[rows[:, None] if answer.dim() == 2 else rows, answer]


def prefix_len(prefix: list) -> int:
    return prefix[0][0].size(2)


def kv_cache(config, prefix: list[tuple[torch.Tensor, torch.Tensor]] | None, batch: int) -> DynamicCache:
    """A fresh cache pre-filled with the prefix, broadcast to `batch` rows (the forward pass
    appends to it in place; the expand is a view, so the gradient sums over rows).

    `config=None` gives a cache that keeps every key: sliding-window layers then see the window
    through the attention mask, as in training, where a sliding cache would drop keys that
    training keeps when prefix or shared keys sit in it (decoding uses that)."""
    cache = DynamicCache(config=config) if config is not None else DynamicCache()
    for layer, (keys, values) in enumerate(prefix or []):
        cache.update(keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1), layer)
    return cache


def select_cache(cache: DynamicCache, rows: torch.Tensor) -> None:
    """Keep (and repeat) these rows of every layer: beams expand and reorder."""
    for layer in cache.layers:
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            layer.keys, layer.values = layer.keys[rows], layer.values[rows]


def window_allows(config, length: int) -> bool:
    """Sliding-window caches keep only the window; share only when everything fits in it."""
    cfg = config.get_text_config()
    window = getattr(cfg, "sliding_window", None)
    sliding = "sliding_attention" in (getattr(cfg, "layer_types", None) or [])
    return not (window and sliding) or length <= window
