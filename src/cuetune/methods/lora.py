"""LoRA (Hu et al. 2021), applied beside the base model, with a hard or a soft template.

The low-rank factors live in this method, not in the base model: while the method is applied
(`Method.applied`), a forward hook on each target layer adds `B(A(dropout(x))) * alpha / r` to
the layer's output, and leaving the context removes the hooks, so the loaded base model is
never changed and other adapters can share it. Initialisation, target selection and the
arithmetic are peft's (A: Kaiming-uniform, B: zero, created in the same order from the same
seed), so a seeded run gives the numbers peft's injected layers gave, and PEFT export is a copy.
Target modules default to peft's per-architecture choice (the attention query and value
projections). Only those factors (and the soft prompt, when the template has `{soft}` blocks)
are trained.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from peft import LoraConfig as PeftLoraConfig
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from pydantic import Field
from torch import nn
from transformers.pytorch_utils import Conv1D

from cuetune.config import MethodConfig
from cuetune.errors import ArtifactError, ConfigError
from cuetune.families.inputs import ModelInputs
from cuetune.methods.method import Method
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


def _features(name: str, module: nn.Module) -> tuple[int, int]:
    """(in, out) features of a layer LoRA can adapt: nn.Linear, or GPT-2's Conv1D [in, out]."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return module.weight.size(0), module.weight.size(1)
    raise ConfigError(f"method.target_modules: {name} is a {type(module).__name__}; LoRA adapts "
                      "linear layers only")


def target_layers(model: nn.Module, targets: list[str] | None) -> list[tuple[str, nn.Module]]:
    """The layers peft would adapt: names equal to or ending in `.<target>`, in module order."""
    if targets is None:
        targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model.config.model_type)
        if targets is None:
            raise ConfigError(f"method.target_modules: no default for model type "
                              f"{model.config.model_type!r}; name the layers, e.g. [q_proj, v_proj]")
    found = [(n, m) for n, m in model.named_modules()
             if any(n == t or n.endswith("." + t) for t in targets)]
    if not found:
        raise ConfigError(f"method.target_modules: none of {list(targets)} is a layer of this model")
    return found


class LoraWeights(nn.Module):
    """The low-rank factors of every target layer, and the hooks that apply them."""

    def __init__(self, model: nn.Module, cfg):
        super().__init__()
        layers = target_layers(model, cfg.target_modules)
        self.names = [n for n, _ in layers]
        self._layers = [m for _, m in layers]  # a plain list: the base's layers are not ours
        self.scaling, self.p = cfg.alpha / cfg.r, cfg.dropout
        device = next(model.parameters()).device
        self.a, self.b = nn.ParameterList(), nn.ParameterList()
        state = torch.random.get_rng_state()
        torch.manual_seed(cfg.seed)  # lora_A's random init is part of the run's seed
        try:
            for name, layer in layers:  # peft's order of draws: A's and B's default init, then A's
                fan_in, fan_out = _features(name, layer)
                a, b = nn.Linear(fan_in, cfg.r, bias=False), nn.Linear(cfg.r, fan_out, bias=False)
                nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
                nn.init.zeros_(b.weight)
                self.a.append(nn.Parameter(a.weight.detach().to(device)))  # [r, in]
                self.b.append(nn.Parameter(b.weight.detach().to(device)))  # [out, r]
        finally:
            torch.random.set_rng_state(state)

    def merged(self) -> dict[str, torch.Tensor]:
        """Each target layer's weight plus its low-rank update (Conv1D stores [in, out])."""
        out = {}
        for name, layer, a, b in zip(self.names, self._layers, self.a, self.b, strict=True):
            delta = (b.detach() @ a.detach()) * self.scaling  # [out, in]
            if isinstance(layer, Conv1D):
                delta = delta.T  # Conv1D keeps its weight as [in, out]
            out[f"{name}.weight"] = layer.weight.detach() + delta.to(layer.weight.dtype)
        return out

    def tensors(self) -> dict[str, nn.Parameter]:
        """By peft's names for an injected adapter, under `base.` (old adapter files load)."""
        out = {}
        for name, a, b in zip(self.names, self.a, self.b, strict=True):
            out[f"base.{name}.lora_A.default.weight"] = a
            out[f"base.{name}.lora_B.default.weight"] = b
        return out

    def _hook(self, i: int, rows: torch.Tensor | None):
        def add_update(layer, args, output):
            x = args[0] if rows is None else args[0][rows]  # [..., in]: all rows, or ours
            if self.p:
                x = F.dropout(x, self.p, layer.training)
            a, b = self.a[i], self.b[i]
            update = (F.linear(F.linear(x.to(a.dtype), a), b) * self.scaling).to(output.dtype)
            if rows is None:
                return output + update  # [..., out]
            return output.index_add(0, rows, update)  # only our rows of a mixed batch
        return add_update

    @contextmanager
    def patch(self, rows: torch.Tensor | None = None):
        """The updates applied to every row, or only to batch rows `rows` [R]."""
        handles = [layer.register_forward_hook(self._hook(i, rows)) for i, layer in enumerate(self._layers)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


class Lora(Method):
    config_class = LoraConfig
    default_lr = 5e-4

    @classmethod
    def unused_settings(cls, config, template):
        if template.soft_segments:
            return {}
        why = "a soft-prompt option, read only when the template has {soft} blocks"
        return {f"method.{k}": why for k in ("init", "init_words", "vocab_top")}

    def __init__(self, config: LoraConfig, loaded, encoder, labels=None):
        super().__init__(config, loaded, encoder, labels)
        self.soft = SoftBlock(config, loaded, encoder) if encoder.soft_specs else None
        self.lora = LoraWeights(loaded.model, config)

    def prepare_inputs(self, inputs: ModelInputs, batch: dict) -> ModelInputs:
        return self.soft.fill(inputs, batch) if self.soft is not None else inputs

    def patch(self):
        return self.lora.patch()

    def patch_rows(self, rows):
        return self.lora.patch(rows)

    def merged_weights(self):
        if self.soft is not None:
            raise ArtifactError("merge: this LoRA run's template has a {soft} block, whose prompt is "
                                "input embeddings, not a weight change; train LoRA with a hard template "
                                "to merge it")
        return self.lora.merged()

    def adapter_tensors(self) -> dict[str, nn.Parameter]:
        soft = {"soft.prompt": self.soft.prompt} if self.soft is not None else {}
        return {**soft, **self.lora.tensors()}

    peft_imports = ("LORA",)

    def peft_export(self):
        if self.soft is not None:
            raise ArtifactError("PEFT export: PEFT's LoRA adapters hold no soft prompt; export a "
                                "LoRA run whose template has no {soft} block")
        targets = sorted({n.rsplit(".", 1)[-1] for n in self.lora.names})
        cfg = PeftLoraConfig(r=self.config.r, lora_alpha=self.config.alpha,
                             task_type=self.loaded.family.peft_task_type,
                             lora_dropout=self.config.dropout, target_modules=targets, bias="none")
        tensors = {"base_model.model." + n[len("base."):].replace(".default.", "."): p.detach().float()
                   for n, p in self.lora.tensors().items()}
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
