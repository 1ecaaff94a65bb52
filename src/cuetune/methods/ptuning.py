"""P-tuning (Liu et al. 2021): soft prompts produced by a small prompt encoder (MLP or
bidirectional LSTM) over trainable virtual-token inputs; the base model stays frozen.

The reparameterisation couples the virtual tokens, which steadies training on few examples.
Unlike PEFT we add the encoder's output to its input (a residual) with the last layer
initialised to zero, so training starts from the same vocabulary-sampled prompt soft tuning
starts from instead of random noise. Only the encoder's output matters at inference: PEFT
export writes that output as fixed prompt embeddings (PEFT does the same in inference mode).
"""

from __future__ import annotations

from typing import Literal

import torch
from peft import PromptEncoderConfig
from pydantic import Field
from torch import nn

from cuetune.methods.soft import SoftConfig, SoftPrompt, check_peft_prompt_layout


class PTuningConfig(SoftConfig):
    name: Literal["ptuning"] = "ptuning"
    encoder: Literal["mlp", "lstm"] = "mlp"
    hidden_size: int | None = Field(None, ge=1)
    """Prompt-encoder width; default: the model's hidden size."""
    residual: bool = True


class PTuning(SoftPrompt):
    config_class = PTuningConfig
    default_lr = 3e-3

    def __init__(self, config: PTuningConfig, loaded, encoder, labels=None):
        super().__init__(config, loaded, encoder, labels)
        dim = self.soft.prompt.size(1)
        hid = config.hidden_size or dim
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(config.seed)  # the encoder's init is part of the run's seed
        if config.encoder == "lstm":
            self.lstm = nn.LSTM(dim, hid, num_layers=2, bidirectional=True, batch_first=True)
            self.head = nn.Sequential(nn.Linear(2 * hid, 2 * hid), nn.ReLU(), nn.Linear(2 * hid, dim))
        else:
            self.lstm = None
            self.head = nn.Sequential(nn.Linear(dim, hid), nn.ReLU(), nn.Linear(hid, hid), nn.ReLU(),
                                      nn.Linear(hid, dim))
        torch.random.set_rng_state(gen_state)
        if config.residual:
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)

    def prompt_embeddings(self) -> torch.Tensor:
        x = self.soft.prompt  # [P, H]
        h = self.lstm(x[None])[0][0] if self.lstm is not None else x  # [P, 2*hid] or [P, H]
        out = self.head(h)  # [P, H]
        return x + out if self.config.residual else out

    peft_imports = ()  # PEFT saves P-tuning as fixed embeddings; `soft` imports them

    def peft_export(self):
        check_peft_prompt_layout(self, "PEFT export")
        prompt = self.prompt_embeddings().detach().float()
        cfg = PromptEncoderConfig(task_type=self.loaded.family.peft_task_type,
                                  num_virtual_tokens=prompt.size(0),
                                  token_dim=prompt.size(1), num_transformer_submodules=1,
                                  encoder_hidden_size=self.config.hidden_size or prompt.size(1))
        return cfg, {"prompt_embeddings": prompt}
