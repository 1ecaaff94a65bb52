"""A run's parts assembled from its config: base model, template encoder, verbalizer, method,
prompt model and objective.

`build` is the one place a config turns into objects; `train`, `load`, the bench and PEFT
import all go through it. The base model (`LoadedModel`) can be passed in, so several
pipelines share one loaded base: no method changes it (see `Method.patch`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cuetune import methods
from cuetune.config import RunConfig
from cuetune.data import Example
from cuetune.demonstrations import Demonstrations
from cuetune.encoding import Encoded, PromptEncoder
from cuetune.engine import PromptModel
from cuetune.errors import ConfigError
from cuetune.inference import predict_probs
from cuetune.models import LoadedModel, load_model, set_dropout
from cuetune.objectives import Objective, objective_for
from cuetune.templates import parse
from cuetune.verbalizers import Verbalizer

CONTENT_FREE = ("N/A", "", "[MASK]")
"""Zhao et al.'s content-free inputs for contextual calibration."""
TINY = 1e-30
"""Floor for probabilities before taking logs (a confident model underflows to 0)."""


@dataclass
class Pipeline:
    config: RunConfig
    loaded: LoadedModel
    encoder: PromptEncoder
    verbalizer: Verbalizer | None
    model: PromptModel
    objective: Objective

    @property
    def method(self):
        return self.model.method

    @property
    def labels(self) -> list[str]:
        return self.verbalizer.labels if self.verbalizer is not None else []

    def encode(self, examples, what: str = "examples", with_target: bool = True) -> list[Encoded]:
        return self.encoder.encode_all(examples, what, with_target)

    def label_probs(self, items: list[Encoded], batch_size: int = 32,
                    content_free: torch.Tensor | None = None) -> torch.Tensor:
        """Label probabilities [N, L], contextually calibrated when `prompt.calibrate` is set
        (`content_free`: the distribution to divide out, if the caller has computed it)."""
        probs = predict_probs(self.model, items, self.loaded.tokenizer.pad_token_id, batch_size)
        return self.calibrated(probs, content_free)

    def calibrated(self, probs: torch.Tensor, content_free: torch.Tensor | None = None) -> torch.Tensor:
        """Label probabilities [N, L] divided by the content-free distribution and renormalised
        when `prompt.calibrate` is set (in logs, so no 0 / 0); unchanged otherwise."""
        if not self.config.prompt.calibrate:
            return probs
        if content_free is None:
            content_free = self.content_free_probs()
        bias = content_free.clamp_min(TINY).log().to(probs.device)  # [L]
        return (probs.clamp_min(TINY).log() - bias).softmax(-1)

    def content_free_examples(self) -> list[Example]:
        """The content-free inputs (`CONTENT_FREE`), in both slots of a pair."""
        pair = self.encoder.template.has("text_pair")
        return [Example(t, t if pair else None) for t in CONTENT_FREE]

    def content_free_items(self) -> list[Encoded]:
        return self.encode(self.content_free_examples(), "content-free inputs")

    def content_free_probs(self) -> torch.Tensor:
        """The mean label distribution [L] the prompt gives inputs with no content."""
        pad = self.loaded.tokenizer.pad_token_id
        return predict_probs(self.model, self.content_free_items(), pad).mean(0)


def load_for(cfg: RunConfig) -> LoadedModel:
    """The base model (and tokenizer) a run config names."""
    return load_model(cfg.model.name, cfg.model.dtype, cfg.model.device, cfg.model.trust_remote_code)


def build(cfg: RunConfig, labels: list[str], loaded: LoadedModel | None = None) -> Pipeline:
    """Assemble model, template, verbalizer and method from a config."""
    if loaded is None:
        loaded = load_for(cfg)
    if cfg.model.dropout is not None:
        set_dropout(loaded.model, cfg.model.dropout)
    method_cls = methods.get(cfg.method.name)
    objective = objective_for(cfg.data.task)
    objective.check(cfg, method_cls, loaded.family)
    template = method_cls.adapt_template(cfg.method, parse(cfg.prompt.template))
    encoder = method_cls.build_encoder(cfg, template, loaded)
    if cfg.prompt.demonstrations is not None:
        _add_demonstrations(cfg, encoder, template, labels)
    verbalizer = None
    if cfg.data.task != "generation":
        verbalizer = Verbalizer(labels, cfg.prompt.verbalizer, cfg.prompt.multi_token)
        if method_cls.uses_verbalizer:
            verbalizer.bind(loaded.tokenizer, encoder.answer_space)
    method = method_cls(cfg.method, loaded, encoder, labels)
    device = next(loaded.model.parameters()).device
    model = PromptModel(loaded, method.to(device), verbalizer, encoder.shared_len)
    pipe = Pipeline(cfg, loaded, encoder, verbalizer, model, objective)
    objective.attach(pipe)
    return pipe


def _add_demonstrations(cfg: RunConfig, encoder: PromptEncoder, template, labels: list[str]) -> None:
    if cfg.data.task == "generation" or cfg.method.name == "in-context":
        why = ("they are rendered with a label word, which a generation task has none of"
               if cfg.data.task == "generation" else "method in-context puts its own demonstrations")
        raise ConfigError(f"prompt.demonstrations: {why}; remove it")
    words = Verbalizer(labels, cfg.prompt.verbalizer).words
    demos = Demonstrations(cfg.prompt.demonstrations, template.without_soft(), labels, words)
    encoder.use_demonstrations(demos)
