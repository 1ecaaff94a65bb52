"""LoRA (Hu et al. 2021) through the peft library, with a hard or a soft template.

peft injects low-rank adapters into the base model's linear layers in place; only those (and
the soft prompt, when the template has `{soft}` blocks) are trained. Target modules default to
peft's per-architecture choice (the attention query and value projections).
"""

from __future__ import annotations

from typing import Literal

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from pydantic import Field
from torch import nn

from cuetune.config import MethodConfig
from cuetune.errors import ArtifactError, ConfigError, ModelError
from cuetune.methods.base import Method
from cuetune.methods.soft import SoftBlock


class LoraConfig(MethodConfig):
    name: Literal["lora"] = "lora"
    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | None = None
    """Module names to adapt (e.g. [q_proj, v_proj]); default: peft's choice per architecture."""
    init: Literal["vocab", "words", "random"] = "vocab"
    """Soft-prompt options, used when the template has {soft} blocks."""
    init_words: str | None = None
    vocab_top: int = Field(5000, ge=10)
    seed: int = 0


def peft_lora_config(cfg) -> PeftLoraConfig:
    return PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=cfg.target_modules, bias="none")


def inject_lora(model: nn.Module, cfg) -> None:
    """Add LoRA layers to `model` in place, seeded, refusing a model that already has some."""
    if any(isinstance(m, BaseTunerLayer) for m in model.modules()):
        raise ModelError("the base model already carries adapter layers; load a fresh base model")
    state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)  # lora_A's random init is part of the run's seed
    try:
        inject_adapter_in_model(peft_lora_config(cfg), model)
    except ValueError as exc:  # peft: target modules not found
        raise ConfigError(f"method.target_modules: {exc}") from None
    finally:
        torch.random.set_rng_state(state)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)


def lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {f"base.{n}": p for n, p in model.named_parameters() if "lora_" in n}


class Lora(Method):
    config_class = LoraConfig
    default_lr = 5e-4

    def __init__(self, config: LoraConfig, loaded, encoder, labels=None):
        super().__init__(config, loaded, encoder, labels)
        self.soft = SoftBlock(config, loaded, encoder) if encoder.soft_specs else None
        inject_lora(loaded.model, config)

    def prepare_inputs(self, inputs: dict, batch: dict) -> dict:
        return self.soft.fill(inputs, batch) if self.soft is not None else inputs

    def adapter_tensors(self) -> dict[str, nn.Parameter]:
        own = {n: p for n, p in self.named_parameters() if p.requires_grad}
        return {**own, **lora_parameters(self.loaded.model)}

    peft_imports = ("LORA",)

    def peft_export(self):
        if self.soft is not None:
            raise ArtifactError("PEFT export: PEFT's LoRA adapters hold no soft prompt; export a "
                                "LoRA run whose template has no {soft} block")
        model = self.loaded.model
        targets = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                          if isinstance(m, BaseTunerLayer)})
        task = {"causal": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM"}.get(self.loaded.family.name)
        cfg = PeftLoraConfig(r=self.config.r, lora_alpha=self.config.alpha, task_type=task,
                             lora_dropout=self.config.dropout, target_modules=targets, bias="none")
        tensors = {"base_model.model." + n[len("base."):].replace(".default.", "."): p.detach().float()
                   for n, p in lora_parameters(model).items()}
        return cfg, tensors

    @classmethod
    def peft_import(cls, peft_config, tensors):
        unsupported = [k for k in ("use_dora", "use_rslora", "modules_to_save", "rank_pattern",
                                   "alpha_pattern", "layers_to_transform")
                       if peft_config.get(k) not in (None, False, {}, [])]
        if peft_config.get("bias", "none") != "none":
            unsupported.append("bias")
        targets = peft_config.get("target_modules")
        if isinstance(targets, str):
            unsupported.append("target_modules (a regex)")
        if unsupported:
            raise ArtifactError(f"PEFT adapter: LoRA options {unsupported} are not supported here")
        fields = {"name": "lora", "r": int(peft_config["r"]),
                  "alpha": float(peft_config.get("lora_alpha", 8)),
                  "dropout": float(peft_config.get("lora_dropout", 0.0)),
                  "target_modules": sorted(targets) if targets else None}
        state = {}
        for key, t in tensors.items():
            if not key.startswith("base_model.model.") or ".lora_" not in key:
                raise ArtifactError(f"PEFT adapter: unexpected tensor {key!r} in a LoRA adapter")
            name, _, leaf = key[len("base_model.model."):].rpartition(".")
            state[f"base.{name}.default.{leaf}"] = t.float()
        return fields, state
