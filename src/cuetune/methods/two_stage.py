"""Two-stage training: first a soft prompt on the frozen model, then LoRA or full fine-tuning
with that prompt kept in place (frozen), so the model learns to use the prompt it was given.

`train.max_steps` (or epochs) is split between the stages by `soft_fraction`; each stage has its
own learning rate here because one rate cannot suit both (`train.lr` is not used).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from cuetune.config import MethodConfig
from cuetune.families.inputs import ModelInputs
from cuetune.methods.lora import LoraWeights
from cuetune.methods.method import Method, Phase, WeightCopy, soft_settings_unused
from cuetune.methods.soft import SoftBlock, with_soft
from cuetune.prompt.templates import Template


class TwoStageConfig(MethodConfig):
    name: Literal["two-stage"] = "two-stage"
    second: Literal["lora", "full"] = "lora"
    soft_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    soft_lr: float = Field(3e-2, gt=0)
    tune_lr: float | None = Field(None, gt=0)
    """Second-stage rate; default 5e-4 for LoRA, 2e-5 for full fine-tuning."""
    num_tokens: int | None = Field(None, ge=1, le=1000)
    """As soft prompting's: used when the template has no {soft} block (None: 20)."""
    init: Literal["vocab", "words", "random"] = "vocab"
    init_words: str | None = None
    vocab_top: int = Field(5000, ge=10)
    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | None = None
    seed: int = 0


class TwoStage(Method):
    config_class = TwoStageConfig
    merge_refusal = "the soft prompt of its first stage is input embeddings, not a weight change"

    @classmethod
    def adapt_template(cls, config: TwoStageConfig, template: Template) -> Template:
        return with_soft(template, config.num_tokens)

    @classmethod
    def unused_settings(cls, config, template):
        return {"train.lr": "each stage has its own rate: set method.soft_lr and method.tune_lr",
                **soft_settings_unused(config, template)}

    def __init__(self, config: TwoStageConfig, loaded, encoder, labels=None):
        super().__init__(config, loaded, encoder, labels)
        self.soft = SoftBlock(config, loaded, encoder)
        self.freezes_base = config.second == "lora"  # the instance knows; the class cannot
        lora = config.second == "lora"
        self.tuned = LoraWeights(loaded.model, config) if lora else WeightCopy(loaded.model)

    def prepare_inputs(self, inputs: ModelInputs, batch: dict) -> ModelInputs:
        return self.soft.fill(inputs, batch)

    def patch(self):
        return self.tuned.patch()

    def patch_rows(self, rows):
        return self.tuned.patch(rows) if isinstance(self.tuned, LoraWeights) else None

    def _tuned(self) -> dict[str, nn.Parameter]:
        return self.tuned.tensors()

    def adapter_tensors(self) -> dict[str, nn.Parameter]:
        return {"soft.prompt": self.soft.prompt, **self._tuned()}

    def phases(self) -> list[Phase]:
        cfg: TwoStageConfig = self.config
        tune_lr = cfg.tune_lr or (5e-4 if cfg.second == "lora" else 2e-5)
        return [Phase("soft", [self.soft.prompt], cfg.soft_lr, cfg.soft_fraction),
                Phase(cfg.second, list(self._tuned().values()), tune_lr, 1.0 - cfg.soft_fraction)]
