"""Soft prompt tuning (Lester et al. 2021): trainable virtual-token embeddings where the template
puts `{soft:N}` blocks; the base model stays frozen.

Initialisation default is `vocab`: embeddings of tokens sampled from the most frequent part of
the vocabulary (BPE and WordPiece vocabularies list frequent pieces first). PEFT's `RANDOM`
default draws N(0, 1), far off the scale of real embeddings, and training often collapses; our
`random` option draws at the embedding matrix's own scale instead.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from cuetune.config import MethodConfig
from cuetune.errors import ConfigError
from cuetune.methods.base import Method
from cuetune.templates import Template


class SoftConfig(MethodConfig):
    name: Literal["soft"] = "soft"
    num_tokens: int = Field(20, ge=1, le=1000)
    """Soft tokens put before the template when it has no {soft} slot."""
    init: Literal["vocab", "words", "random"] = "vocab"
    init_words: str | None = None
    """For init=words: text whose tokens (repeated) initialise the prompt."""
    vocab_top: int = Field(5000, ge=10)
    seed: int = 0


class SoftPrompt(Method):
    config_class = SoftConfig
    default_lr = 3e-2

    @classmethod
    def adapt_template(cls, config: SoftConfig, template: Template) -> Template:
        return template if template.soft_segments else template.with_leading_soft(config.num_tokens)

    def __init__(self, config: SoftConfig, loaded, encoder):
        super().__init__(config, loaded, encoder)
        embedding = loaded.model.get_input_embeddings()
        gen = torch.Generator().manual_seed(config.seed)
        blocks = [self._init_block(spec, embedding, loaded.tokenizer, gen)
                  for spec in encoder.soft_specs]
        self.prompt = nn.Parameter(torch.cat(blocks).float())  # [P, H], kept fp32 for AdamW

    @torch.no_grad()
    def _init_block(self, spec, embedding: nn.Module, tokenizer, gen) -> torch.Tensor:
        cfg: SoftConfig = self.config
        device = embedding.weight.device
        if spec.init_ids is not None:
            ids = torch.tensor(spec.init_ids)
        elif cfg.init == "words":
            if not cfg.init_words:
                raise ConfigError("method.init_words: needed when method.init is 'words'")
            words = tokenizer(cfg.init_words, add_special_tokens=False)["input_ids"]
            ids = torch.tensor(words * (spec.count // max(len(words), 1) + 1))[: spec.count]
        elif cfg.init == "vocab":
            special = set(tokenizer.all_special_ids)
            pool = [i for i in range(min(cfg.vocab_top, embedding.weight.size(0)))
                    if i not in special]
            ids = torch.tensor(pool)[torch.randint(len(pool), (spec.count,), generator=gen)]
        else:
            std = embedding.weight.float().std().item()
            return torch.randn(spec.count, embedding.weight.size(1), generator=gen) * std
        return embedding(ids.to(device)).float().cpu()  # through the layer: keeps Gemma's scaling

    def prepare_inputs(self, inputs: dict, batch: dict) -> dict:
        soft_index = batch["soft_index"]  # [B, T], -1 where no soft token
        embeds = inputs["inputs_embeds"]  # [B, T, H]
        prompt = self.prompt.to(embeds.dtype)[soft_index.clamp(min=0)]  # [B, T, H]
        inputs["inputs_embeds"] = torch.where((soft_index >= 0)[..., None], prompt, embeds)
        return inputs
