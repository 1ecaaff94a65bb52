"""What a prompt method is: a module that owns its trainable state and its forward changes.

The trainer, evaluator and artifact code talk to every method through these hooks only:

- `adapt_template(config, template)`: the template this method runs with (e.g. zero-shot
  drops soft slots; soft prompting adds a block when the template has none);
- `prepare_inputs(inputs, batch)`: change the model inputs (inputs_embeds, attention_mask, ...);
- `trainable_parameters()`, `adapter_state()`, `load_adapter_state()`: what is trained and
  what the adapter file holds.

A new method is one module with a config subclass and a `register(...)` call.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from cuetune.config import MethodConfig
from cuetune.templates import Template


class Method(nn.Module):
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    trains: ClassVar[bool] = True
    """False for baselines that only evaluate (zero-shot)."""
    default_lr: ClassVar[float] = 1e-3

    def __init__(self, config: MethodConfig, loaded, encoder):
        super().__init__()
        self.config = config
        # The base model is not a submodule: its weights are not part of this method's state.
        self._loaded = (loaded,)

    @property
    def loaded(self):
        return self._loaded[0]

    @classmethod
    def adapt_template(cls, config: MethodConfig, template: Template) -> Template:
        return template

    def prepare_inputs(self, inputs: dict, batch: dict) -> dict:
        return inputs

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        own = dict(self.named_parameters())
        if set(state) != {n for n, p in own.items() if p.requires_grad}:
            raise KeyError(f"adapter tensors {sorted(state)} do not match {sorted(own)}")
        with torch.no_grad():
            for name, tensor in state.items():
                if own[name].shape != tensor.shape:
                    raise ValueError(f"adapter tensor {name}: shape {tuple(tensor.shape)}, "
                                     f"expected {tuple(own[name].shape)}")
                own[name].copy_(tensor)
