"""The prompt model: a frozen base, a method's hooks, and label logits at the answer only.

`PromptModel.forward` is the one forward pass every method shares:
token ids -> input embeddings -> method.prepare_inputs -> family.run (hidden state at the
answer position only) -> method.scores (by default: logits of the label-word tokens only ->
verbalizer -> label scores).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from cuetune import methods
from cuetune.config import RunConfig
from cuetune.encoding import Encoded, PromptEncoder, collate
from cuetune.models import LoadedModel, load_model, set_dropout
from cuetune.objectives import Objective, objective_for
from cuetune.templates import parse
from cuetune.verbalizers import Verbalizer


class PromptModel(nn.Module):
    def __init__(self, loaded: LoadedModel, method, verbalizer: Verbalizer | None, shared_len: int = 0):
        super().__init__()
        self.base = loaded.model
        self.method = method
        self.family = loaded.family
        self.verbalizer = verbalizer
        """None for generation: the answer is text, read from the whole vocabulary."""
        use = verbalizer is not None and method.uses_verbalizer
        ids = verbalizer.token_ids if use else torch.zeros(0, dtype=torch.long)
        self.register_buffer("token_ids", ids.clone(), persistent=False)
        self.shared_len = shared_len if self.family.shares_prefix else 0
        self.memo: dict | None = None
        """Set by `reuse_shared`: the shared prompt's keys and values, kept across batches."""

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """batch tensors [B, T] -> label scores [B, L] (fp32); a teacher-forced generation
        batch (with "target") -> `target_logits`. One forward, so a distributed wrapper sees
        every training call."""
        if "target" in batch:
            return self.target_logits(batch)
        hidden = self.family.run(self.base, self.inputs(batch))  # [B, H]
        return self.method.scores(hidden, self).float()

    def target_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Teacher-forced generation batch -> full-vocabulary logits [N, V] (fp32) at the N
        positions that predict a real target token (batch["target"] != -100, row-major)."""
        hidden = self.family.run(self.base, self.inputs(batch))  # [B, A, H]
        hidden = hidden[batch["target"] != -100]  # [N, H]: only where an answer token is
        return self.family.token_logits(self.base, hidden, None)

    def inputs(self, batch: dict[str, torch.Tensor]) -> dict:
        """The model inputs after the method's `prepare_inputs` hook (also what decoding
        starts from)."""
        embeds = self.base.get_input_embeddings()(batch["input_ids"])  # [B, T, H]
        inputs = {"inputs_embeds": embeds, "attention_mask": batch["attention_mask"],
                  "answer_pos": batch["answer_pos"], "input_ids": batch["input_ids"],
                  "shared_len": self._shared_len(), "memo": self.memo}
        if "decoder_input_ids" in batch:
            inputs["decoder_input_ids"] = batch["decoder_input_ids"]
        return self.method.prepare_inputs(inputs, batch)

    def _shared_len(self) -> int:
        """Rows share their first tokens' states only if no dropout makes them differ."""
        if self.training and _has_dropout(self.base):
            return 0
        return self.shared_len

    @contextmanager
    def reuse_shared(self):
        """Inference over many batches: the prompt's shared keys and values are computed once."""
        self.memo = {}
        try:
            yield self
        finally:
            self.memo = None


def _has_dropout(model: nn.Module) -> bool:
    """Any dropout active in training: nn.Dropout modules, or the float rate HF attention
    modules hand to their kernels."""
    return any((isinstance(m, nn.Dropout) and m.p > 0)
               or (isinstance(getattr(m, "attention_dropout", None), float) and m.attention_dropout > 0)
               for m in model.modules())


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


def batches_by_length(items: list[Encoded], batch_size: int):
    """Yield (indices, batch items) in length order, so each batch pads little."""
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield idx, [items[i] for i in idx]


@torch.inference_mode()
def predict_probs(model: PromptModel, items: list[Encoded], pad_id: int,
                  batch_size: int = 32) -> torch.Tensor:
    """Label probabilities [N, L] for encoded items, in their original order."""
    was_training = model.training
    model.eval()
    device = model.token_ids.device
    out = torch.empty(len(items), len(model.verbalizer.labels))
    with model.reuse_shared():
        for idx, chunk in batches_by_length(items, batch_size):
            batch = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
            out[idx] = model(batch).softmax(-1).float().cpu()
    model.train(was_training)
    return out
