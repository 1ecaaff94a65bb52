"""Soft prompt tuning (Lester et al. 2021): trainable virtual-token embeddings where the template
puts `{soft:N}` blocks; the base model stays frozen.

Initialisation default is `vocab`: embeddings of tokens sampled from the most frequent part of
the vocabulary (BPE and WordPiece vocabularies list frequent pieces first). PEFT's `RANDOM`
default draws N(0, 1), far off the scale of real embeddings, and training often collapses; our
`random` option draws at the embedding matrix's own scale instead.

`SoftBlock` is the reusable part (LoRA with a soft template and two-stage training use it too).
"""

from __future__ import annotations

from typing import Literal

import torch
from peft import PromptTuningConfig
from pydantic import Field
from torch import nn

from cuetune.config import MethodConfig
from cuetune.errors import ArtifactError, ConfigError
from cuetune.families.inputs import ModelInputs
from cuetune.methods.method import Method, soft_settings_unused
from cuetune.prompt.templates import Template


class SoftConfig(MethodConfig):
    name: Literal["soft"] = "soft"
    num_tokens: int | None = Field(None, ge=1, le=1000)
    """Soft tokens put before the template when it has no {soft} slot (None: 20); a template
    with {soft:N} blocks sets the count itself, and setting this too is refused."""
    init: Literal["vocab", "words", "random"] = "vocab"
    init_words: str | None = None
    """For init=words: text whose tokens (repeated) initialise the prompt."""
    vocab_top: int = Field(5000, ge=10)
    seed: int = 0


def init_rows(count: int, cfg, embedding: nn.Module, tokenizer, gen, init_ids=None) -> torch.Tensor:
    """`count` embedding rows [count, H] (fp32) as `cfg.init` says; see the module docstring."""
    device = embedding.weight.device
    with torch.no_grad():
        if init_ids is not None:
            ids = torch.tensor(init_ids)
        elif cfg.init == "words":
            if not cfg.init_words:
                raise ConfigError("method.init_words: needed when method.init is 'words'")
            words = tokenizer(cfg.init_words, add_special_tokens=False)["input_ids"]
            ids = torch.tensor(words * (count // max(len(words), 1) + 1))[:count]
        elif cfg.init == "vocab":
            ids = vocab_sample(count, cfg.vocab_top, embedding.weight.size(0), tokenizer, gen)
        else:
            std = embedding.weight.float().std().item()
            return torch.randn(count, embedding.weight.size(1), generator=gen) * std
        return embedding(ids.to(device)).float().cpu()  # through the layer: keeps Gemma's scaling


def vocab_sample(count: int, top: int, vocab: int, tokenizer, gen) -> torch.Tensor:
    """`count` token ids drawn from the first `top` non-special ids."""
    special = set(tokenizer.all_special_ids)
    pool = [i for i in range(min(top, vocab)) if i not in special]
    return torch.tensor(pool)[torch.randint(len(pool), (count,), generator=gen)]


class SoftBlock(nn.Module):
    """The virtual-token embeddings of a template's `{soft}` blocks, and filling them in."""

    def __init__(self, cfg, loaded, encoder):
        super().__init__()
        embedding = loaded.model.get_input_embeddings()
        gen = torch.Generator().manual_seed(cfg.seed)
        blocks = [init_rows(spec.count, cfg, embedding, loaded.tokenizer, gen, spec.init_ids)
                  for spec in encoder.soft_specs]
        self.prompt = nn.Parameter(torch.cat(blocks))  # [P, H], fp32 for AdamW

    def fill(self, inputs: ModelInputs, batch: dict, prompt: torch.Tensor | None = None) -> ModelInputs:
        """Put `prompt` [P, H] (default: the trained one) where `batch["soft_index"]` says."""
        return fill_soft(inputs, batch["soft_index"], self.prompt if prompt is None else prompt)


def fill_soft(inputs: ModelInputs, soft_index: torch.Tensor, prompt: torch.Tensor) -> ModelInputs:
    """Put rows of `prompt` [P, H] into the input embeddings where `soft_index` [B, T] (-1
    where no soft token) points."""
    embeds = inputs.inputs_embeds  # [B, T, H]
    rows = prompt.to(embeds.dtype)[soft_index.clamp(min=0)]  # [B, T, H]
    inputs.inputs_embeds = torch.where((soft_index >= 0)[..., None], rows, embeds)
    return inputs


DEFAULT_SOFT_TOKENS = 20


def with_soft(template: Template, num_tokens: int | None) -> Template:
    """The template, with a leading soft block of `num_tokens` (default 20) if it has none."""
    if template.soft_segments:
        return template
    return template.with_leading_soft(num_tokens or DEFAULT_SOFT_TOKENS)


class SoftPrompt(Method):
    config_class = SoftConfig
    default_lr = 3e-2
    merge_refusal = ("its soft prompt is input embeddings the model reads, not a weight change; "
                     "deploy it with `cuetune export` (PEFT)")

    @classmethod
    def adapt_template(cls, config: SoftConfig, template: Template) -> Template:
        return with_soft(template, config.num_tokens)

    @classmethod
    def unused_settings(cls, config, template):
        return soft_settings_unused(config, template)

    def __init__(self, config: SoftConfig, loaded, encoder, labels=None):
        super().__init__(config, loaded, encoder, labels)
        self.soft = SoftBlock(config, loaded, encoder)

    def prompt_embeddings(self) -> torch.Tensor:
        """The virtual-token embeddings the model sees [P, H]."""
        return self.soft.prompt

    def prepare_inputs(self, inputs: ModelInputs, batch: dict) -> ModelInputs:
        return self.soft.fill(inputs, batch, self.prompt_embeddings())

    peft_imports = ("PROMPT_TUNING", "P_TUNING")

    def peft_export(self):
        check_peft_prompt_layout(self, "PEFT export")
        prompt = self.prompt_embeddings().detach().float()
        cfg = PromptTuningConfig(task_type=self.loaded.family.peft_task_type,
                                 num_virtual_tokens=prompt.size(0),
                                 token_dim=prompt.size(1), num_transformer_submodules=1)
        return cfg, {"prompt_embeddings": prompt}

    @classmethod
    def peft_import(cls, peft_config, tensors):
        # P-tuning adapters are saved as the encoder's output: a plain soft prompt.
        fields, emb = peft_prompt_state(peft_config, tensors, "soft")
        return fields, {"soft.prompt": emb}


def check_peft_prompt_layout(method, what: str) -> None:
    """PEFT puts virtual tokens before everything else on a causal LM; refuse layouts where
    PEFT would compute other logits than we do."""
    enc = method.encoder
    leading = bool(enc.segments) and enc.segments[0].__class__.__name__ == "Soft"
    if not method.loaded.family.peft_prompts:
        raise ArtifactError(f"{what}: PEFT prompt adapters are supported for causal models here; "
                            f"this is a {method.loaded.family.name} model")
    if len(enc.soft_specs) != 1 or not leading or enc.prefix:
        raise ArtifactError(
            f"{what}: PEFT prepends its virtual tokens before all other tokens, so the template "
            f"{enc.template.source!r} must start with its only {{soft}} block, with no special "
            "tokens before it (no BOS, no chat template)")


def peft_prompt_state(peft_config: dict, tensors: dict, name: str) -> tuple[dict, dict]:
    if "prompt_embeddings" not in tensors:
        raise ArtifactError(f"PEFT adapter: no 'prompt_embeddings' tensor (found {sorted(tensors)[:5]})")
    emb = tensors["prompt_embeddings"].float()
    return {"name": name, "num_tokens": int(emb.size(0))}, emb
