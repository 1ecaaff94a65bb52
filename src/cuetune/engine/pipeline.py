"""A run's parts assembled from its config: base model, template encoder, verbalizer, method,
prompt model and objective.

`build` is the one place a config turns into objects; `train`, `load`, the bench and PEFT
import all go through it. The base model (`LoadedModel`) can be passed in, so several
pipelines share one loaded base: no method changes it (see `Method.patch`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cuetune.config import ModelConfig, PromptConfig, RunConfig
from cuetune.data.examples import Example, Splits
from cuetune.engine.forward import PromptModel
from cuetune.engine.inference import predict_probs
from cuetune.engine.objectives import Objective, objective_for
from cuetune.errors import ConfigError
from cuetune.families.pretrained import LoadedModel, load_model, set_dropout
from cuetune.methods import get_method
from cuetune.methods.method import MethodContext
from cuetune.prompt.demonstrations import Demonstrations
from cuetune.prompt.encoder import Encoded, Encoder, content_free_examples, encoder_for
from cuetune.prompt.templates import parse
from cuetune.prompt.verbalizers import Verbalizer

"""Zhao et al.'s content-free inputs for contextual calibration."""
TINY = 1e-30
"""Floor for probabilities before taking logs (a confident model underflows to 0)."""


@dataclass
class Pipeline:
    """A run's assembled parts over one base model. Nothing here reads the run config: each
    part was built from the sections it needs; `config` is kept for the run's manifest."""

    loaded: LoadedModel
    encoder: Encoder
    verbalizer: Verbalizer | None
    model: PromptModel
    objective: Objective
    calibrate: bool
    """`prompt.calibrate`: label probabilities are divided by the content-free ones."""
    config: RunConfig
    """The run config the pipeline was built from: what the manifest records."""

    @property
    def method(self):
        return self.model.method

    @property
    def labels(self) -> list[str]:
        return self.verbalizer.labels if self.verbalizer is not None else []

    def label_probs(self, items: list[Encoded], batch_size: int = 32,
                    content_free: torch.Tensor | None = None) -> torch.Tensor:
        """Label probabilities [N, L], contextually calibrated when `prompt.calibrate` is set
        (`content_free`: the distribution to divide out, if the caller has computed it)."""
        probs = predict_probs(self.model, items, self.loaded.tokenizer.pad_token_id, batch_size)
        return self.calibrated(probs, content_free)

    def calibrated(self, probs: torch.Tensor, content_free: torch.Tensor | None = None) -> torch.Tensor:
        """Label probabilities [N, L] divided by the content-free distribution and renormalised
        when `prompt.calibrate` is set (in logs, so no 0 / 0); unchanged otherwise."""
        if not self.calibrate:
            return probs
        if content_free is None:
            content_free = self.content_free_probs()
        bias = content_free.clamp_min(TINY).log().to(probs.device)  # [L]
        return (probs.clamp_min(TINY).log() - bias).softmax(-1)

    def content_free_examples(self) -> list[Example]:
        """The content-free inputs (`prompt.encoder.CONTENT_FREE`), in both slots of a pair."""
        return content_free_examples(self.encoder.template.has("text_pair"))

    def content_free_items(self) -> list[Encoded]:
        return self.encoder.encode(self.content_free_examples(), "content-free inputs")

    def content_free_probs(self) -> torch.Tensor:
        """The mean label distribution [L] the prompt gives inputs with no content."""
        pad = self.loaded.tokenizer.pad_token_id
        return predict_probs(self.model, self.content_free_items(), pad).mean(0)


def load_for(model: ModelConfig) -> LoadedModel:
    """The base model (and tokenizer) a `model` section names."""
    return load_model(model.name, model.dtype, model.device, model.trust_remote_code)


def method_context(cfg: RunConfig, splits: Splits, loaded: LoadedModel) -> MethodContext:
    """What a method's `prepare_config` may read of a run (`methods.method.MethodContext`)."""
    return MethodContext(parse(cfg.prompt.template), cfg.prompt.verbalizer, cfg.data.task,
                         cfg.data.max_length, cfg.generate.max_new_tokens, cfg.train.seed, splits, loaded,
                         encoder_for(cfg.prompt, cfg.data, loaded))


def build(cfg: RunConfig, labels: list[str], loaded: LoadedModel | None = None) -> Pipeline:
    """Assemble model, template, verbalizer and method from a config: the one place a whole
    run config is read, each part handed the sections it uses."""
    if loaded is None:
        loaded = load_for(cfg.model)
    if cfg.model.dropout is not None:
        set_dropout(loaded.model, cfg.model.dropout)
    method_cls = get_method(cfg.method.name)
    objective = objective_for(cfg.data.task, cfg.prompt, cfg.generate)
    objective.check(cfg.method, method_cls, loaded.family)
    method_cls.check(cfg.method, cfg.prompt, cfg.data.task)
    template = method_cls.adapt_template(cfg.method, parse(cfg.prompt.template))
    encoder = method_cls.build_encoder(cfg.method, template, encoder_for(cfg.prompt, cfg.data, loaded))
    if cfg.prompt.demonstrations is not None:
        _add_demonstrations(cfg.prompt, cfg.data.task, method_cls, encoder, template, labels)
    verbalizer = None
    if cfg.data.task != "generation":
        verbalizer = Verbalizer(labels, cfg.prompt.verbalizer, cfg.prompt.multi_token)
        if method_cls.uses_verbalizer:
            verbalizer.bind(loaded.tokenizer, encoder.answer_space)
    method = method_cls(cfg.method, loaded, encoder, labels)
    device = next(loaded.model.parameters()).device
    model = PromptModel(loaded, method.to(device), verbalizer, encoder.shared_len)
    pipe = Pipeline(loaded, encoder, verbalizer, model, objective, cfg.prompt.calibrate, cfg)
    objective.attach(pipe)
    return pipe


def _add_demonstrations(prompt: PromptConfig, task: str, method_cls, encoder: Encoder, template,
                        labels: list[str]) -> None:
    name = method_cls.config_class.model_fields["name"].default
    why = (method_cls.demonstrations_refusal and f"method {name} {method_cls.demonstrations_refusal}")
    if task == "generation":
        why = "they are rendered with a label word, which a generation task has none of"
    if why:
        raise ConfigError(f"prompt.demonstrations: {why}; remove it")
    words = Verbalizer(labels, prompt.verbalizer).words
    demos = Demonstrations(prompt.demonstrations, template.without_soft(), labels, words)
    encoder.use_demonstrations(demos)
