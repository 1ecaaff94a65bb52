"""A run's parts assembled from its config: base model, template encoder, verbalizer, method,
prompt model and objective.

`build` is the one place a config turns into objects; `train`, `load`, the bench and PEFT
import all go through it. The base model (`LoadedModel`) can be passed in, so several
pipelines share one loaded base: no method changes it (see `Method.patch`).
"""

from __future__ import annotations

from dataclasses import dataclass

from cuetune import methods
from cuetune.config import RunConfig
from cuetune.encoding import Encoded, PromptEncoder
from cuetune.engine import PromptModel
from cuetune.models import LoadedModel, load_model, set_dropout
from cuetune.objectives import Objective, objective_for
from cuetune.templates import parse
from cuetune.verbalizers import Verbalizer


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
    encoder = PromptEncoder.for_run(cfg, template, loaded)
    verbalizer = None
    if cfg.data.task != "generation":
        verbalizer = Verbalizer(labels, cfg.prompt.verbalizer, cfg.prompt.multi_token)
        if method_cls.uses_verbalizer:
            verbalizer.bind(loaded.tokenizer, encoder.answer_space)
    method = method_cls(cfg.method, loaded, encoder, labels)
    device = next(loaded.model.parameters()).device
    model = PromptModel(loaded, method.to(device), verbalizer, encoder.shared_len)
    return Pipeline(cfg, loaded, encoder, verbalizer, model, objective)
