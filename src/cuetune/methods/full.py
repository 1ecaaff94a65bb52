"""Methods that train the base model's own weights.

- `prompt-ft`: prompt-based fine-tuning (LM-BFF, PET): the hard template and verbalizer, every
  weight trained; the label words' output rows are the classifier, so nothing starts random.
- `full`: every weight trained with a plain template (`{text} {answer}`): the same objective
  without prompt words, to measure what the prompt adds.
- `head`: standard fine-tuning, the baseline of the literature (`AutoModelFor
  SequenceClassification`): no prompt, a new randomly initialised linear head on the last
  token (decoders), the first token ([CLS], encoders) or the decoder's first step (T5).

Their adapter file holds every base weight (prefixed `base.`), so it is as large as the model.
They train a copy of the weights (`WeightCopy`), never the loaded base model itself.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from cuetune.config import MethodConfig
from cuetune.families.inputs import ModelInputs
from cuetune.methods.method import Method, WeightCopy, plain_template
from cuetune.prompt.templates import Template


class PromptFTConfig(MethodConfig):
    name: Literal["prompt-ft"] = "prompt-ft"


class FullConfig(MethodConfig):
    name: Literal["full"] = "full"


class HeadConfig(MethodConfig):
    name: Literal["head"] = "head"
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    seed: int = 0


class PromptFinetune(Method):
    config_class = PromptFTConfig
    freezes_base = False
    default_lr = 2e-5

    @classmethod
    def adapt_template(cls, config, template: Template) -> Template:
        return template.without_soft()

    def __init__(self, config, loaded, encoder, labels=None):
        super().__init__(config, loaded, encoder, labels)
        self.weights = WeightCopy(loaded.model, self._unused(loaded))

    @staticmethod
    def _unused(loaded) -> set[int]:
        """Base weights this method never trains (none: every weight)."""
        return set()

    def patch(self):
        return self.weights.patch()

    def merged_weights(self):
        return self.weights.merged()

    def adapter_tensors(self) -> dict[str, nn.Parameter]:
        return self.weights.tensors()


class Full(PromptFinetune):
    config_class = FullConfig

    @classmethod
    def adapt_template(cls, config, template: Template) -> Template:
        return plain_template(template)


class Head(PromptFinetune):
    config_class = HeadConfig
    uses_verbalizer = False
    generates = False
    merge_refusal = ("its classification head is not part of the language model, so a merged "
                     "model would lose it")

    def merged_weights(self):
        return Method.merged_weights(self)

    @classmethod
    def adapt_template(cls, config, template: Template) -> Template:
        return plain_template(template)

    def __init__(self, config: HeadConfig, loaded, encoder, labels=None):
        super().__init__(config, loaded, encoder, labels)
        hidden = loaded.model.get_input_embeddings().weight.size(1)
        gen = torch.Generator().manual_seed(config.seed)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(hidden, len(labels))
        with torch.no_grad():
            self.classifier.weight.copy_(torch.randn(len(labels), hidden, generator=gen) * 0.02)
            self.classifier.bias.zero_()
        self.first_token = loaded.family.pools_first_token

    @staticmethod
    def _unused(loaded) -> set[int]:
        """The LM head is not used (tied input embeddings stay: they are the backbone's)."""
        model = loaded.model
        unused = {id(p) for p in loaded.family.output_head(model).parameters()}
        unused.discard(id(model.get_input_embeddings().weight))
        return unused

    def adapter_tensors(self) -> dict[str, nn.Parameter]:
        """The backbone and the new head."""
        return {**self.weights.tensors(), "classifier.weight": self.classifier.weight,
                "classifier.bias": self.classifier.bias}

    def prepare_inputs(self, inputs: ModelInputs, batch: dict) -> ModelInputs:
        if self.first_token:  # encoders pool at [CLS], as their sequence classifiers do
            inputs.answer_pos = torch.zeros_like(inputs.answer_pos)
        return inputs

    def scores(self, hidden: torch.Tensor, model) -> torch.Tensor:
        return self.classifier(self.dropout(hidden.float()))  # [B, L]
