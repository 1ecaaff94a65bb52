"""Prefix tuning (Li & Liang 2021) and P-tuning v2 (Liu et al. 2022): trainable keys and values
prepended at every attention layer; the base model stays frozen.

The family injects them as a pre-filled key/value cache, so every architecture whose attention
reads a cache works (Llama, Gemma, GPT-2, BERT; for T5 the decoder's self-attention, as PEFT
does, because T5's encoder reads no cache). The parameter layout is PEFT's
(`[P, layers * 2 * kv_heads * head_dim]`, keys and values interleaved by layer), so PEFT export
is a copy.

Initialisation: by default the keys and values the frozen model itself computes for P
vocabulary tokens (Li & Liang found real activations train far more stably than random ones).
`projection: true` is the MLP reparameterisation (embedding -> tanh MLP -> prefix).
"""

from __future__ import annotations

from typing import Literal

import torch
from peft import PrefixTuningConfig
from pydantic import Field
from torch import nn

from cuetune.config import MethodConfig
from cuetune.errors import ArtifactError, ConfigError
from cuetune.families.family import window_allows
from cuetune.families.inputs import ModelInputs
from cuetune.methods.method import Method
from cuetune.methods.soft import peft_prompt_state, vocab_sample
from cuetune.prompt.templates import Template


class PrefixConfig(MethodConfig):
    name: Literal["prefix"] = "prefix"
    num_tokens: int = Field(20, ge=1, le=1000)
    projection: bool = False
    projection_hidden: int = Field(512, ge=1)
    init: Literal["activations", "random"] = "activations"
    vocab_top: int = Field(5000, ge=10)
    seed: int = 0


class Prefix(Method):
    config_class = PrefixConfig
    default_lr = 1e-2
    merge_refusal = ("its prefix is keys and values added to every attention layer, not a weight "
                     "change; deploy it with `cuetune export` (PEFT)")

    @classmethod
    def adapt_template(cls, config, template: Template) -> Template:
        return template.without_soft()

    @classmethod
    def prepare_config(cls, config, context):
        """Refuse, before training, a generation run whose longest inputs could not be decoded
        from: on a sliding-window model (Gemma-3) prefix keys, an input at `data.max_length`
        and the new tokens must fit the window (`CausalState` checks each batch; without this,
        a run found out only at its final evaluation, after training)."""
        loaded, new = context.loaded, context.max_new_tokens
        need = config.num_tokens + context.max_length + new
        if (context.task == "generation" and loaded.family.answer_is_next
                and not window_allows(loaded.model.config, need)):
            window = loaded.model.config.get_text_config().sliding_window
            raise ConfigError(
                f"data.max_length: {context.max_length} + method.num_tokens {config.num_tokens} + "
                f"generate.max_new_tokens {new} = {need} exceeds this model's "
                f"{window}-token sliding attention window, so inputs at the length cap could not be "
                f"decoded from a prefix; set data.max_length to at most "
                f"{window - config.num_tokens - new}, or use soft or lora")
        return config

    @classmethod
    def unused_settings(cls, config, template):
        cfg, unused = config, {}
        if not cfg.projection:
            unused["method.projection_hidden"] = "read only with method.projection=true"
        if cfg.init == "random" or cfg.projection:
            unused["method.vocab_top"] = "read only by init=activations without projection"
        if cfg.projection:
            unused["method.init"] = "the projection MLP starts from its own random init"
        return unused

    def __init__(self, config: PrefixConfig, loaded, encoder, labels=None):
        super().__init__(config, loaded, encoder, labels)
        self.layers, self.kv_heads, self.head_dim = loaded.family.kv_layout(loaded.model)
        width = self.layers * 2 * self.kv_heads * self.head_dim
        gen = torch.Generator().manual_seed(config.seed)
        if config.projection:
            token_dim = self.kv_heads * self.head_dim
            self.embedding = nn.Parameter(torch.randn(config.num_tokens, token_dim, generator=gen) * 0.02)
            state = torch.random.get_rng_state()
            torch.manual_seed(config.seed)
            self.mlp = nn.Sequential(nn.Linear(token_dim, config.projection_hidden), nn.Tanh(),
                                     nn.Linear(config.projection_hidden, width))
            torch.random.set_rng_state(state)
        else:
            self.prefix = nn.Parameter(self._init_prefix(config, gen, width))  # [P, width]

    def _init_prefix(self, cfg: PrefixConfig, gen, width: int) -> torch.Tensor:
        if cfg.init == "random":
            return torch.randn(cfg.num_tokens, width, generator=gen) * 0.02
        tok, model = self.loaded.tokenizer, self.loaded.model
        ids = vocab_sample(cfg.num_tokens, cfg.vocab_top, model.get_input_embeddings().weight.size(0),
                           tok, gen)
        with torch.no_grad():
            kv = self.loaded.family.capture_kv(model, ids[None].to(model.device))  # L x (k, v)
        # each [1, kv_heads, P, d] -> [P, kv_heads * d]; interleave k, v per layer as PEFT does
        flat = [t[0].permute(1, 0, 2).reshape(cfg.num_tokens, -1) for pair in kv for t in pair]
        return torch.cat(flat, dim=1).float().cpu()

    def flat_prefix(self) -> torch.Tensor:
        """[P, layers * 2 * kv_heads * head_dim], PEFT's layout."""
        return self.mlp(self.embedding) if self.config.projection else self.prefix

    def prepare_inputs(self, inputs: ModelInputs, batch: dict) -> ModelInputs:
        dtype = inputs.inputs_embeds.dtype
        p = self.config.num_tokens
        kv = self.flat_prefix().to(dtype).view(p, self.layers * 2, self.kv_heads, self.head_dim)
        kv = kv.permute(1, 2, 0, 3)  # [2L, kv_heads, P, d]
        # one row [1, kv_heads, P, d] per layer; the family broadcasts it to the batch
        inputs.prefix = [(kv[2 * i][None], kv[2 * i + 1][None]) for i in range(self.layers)]
        return inputs

    peft_imports = ("PREFIX_TUNING",)

    def peft_export(self):
        family = self.loaded.family
        if not family.peft_prompts:
            raise ArtifactError(f"PEFT export: prefix adapters are supported for causal models here; "
                                f"this is a {family.name} model")
        flat = self.flat_prefix().detach().float()
        cfg = PrefixTuningConfig(task_type=family.peft_task_type, num_virtual_tokens=flat.size(0),
                                 token_dim=self.kv_heads * self.head_dim, num_layers=self.layers,
                                 num_attention_heads=self.kv_heads, num_transformer_submodules=1)
        return cfg, {"prompt_embeddings": flat}

    @classmethod
    def peft_import(cls, peft_config, tensors):
        fields, flat = peft_prompt_state(peft_config, tensors, "prefix")
        # PEFT saves the projected prefix, so it loads without the projection MLP
        return {**fields, "init": "random"}, {"prefix": flat}
