"""What a task trains and how it is scored: the only place classification and generation differ.

The trainer, `api` and the bench ask the pipeline's objective for the loss of a batch, the
metrics of a split, and the number that picks the best checkpoint; none of them names a task.

- Classification: cross-entropy over the label words' scores at the answer position;
  accuracy, macro-F1 and NLL on the labels. With `prompt.calibrate` the loss is that of the
  calibrated prediction (p(y|x) / p_cf(y), with p_cf from the same forward pass's parameters),
  so a trained run learns what it will predict; an uncalibrated loss with a calibrated
  prediction let a prefix fit its training set while dev read 50% at every evaluation (the
  content-free inputs' lean, learned in training, was then divided out).
- Generation: cross-entropy over the answer tokens only (teacher forcing; the prompt's tokens
  carry no loss), full vocabulary at those positions only. During training the dev set is
  scored by that token loss, which is cheap. The final dev and test scores decode with
  `generate` and add BLEU, chrF, ROUGE-L, exact match and token F1 against all references.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cuetune.config import GenerateConfig, MethodConfig, PromptConfig
from cuetune.engine.generation import generate
from cuetune.engine.inference import token_nll
from cuetune.errors import ConfigError
from cuetune.metrics.classification import classification_metrics
from cuetune.metrics.text import generation_metrics
from cuetune.prompt.batch import collate


class Objective:
    """A task's loss and scores, built from the config sections it reads (`objective_for`)."""

    task: str
    dev_keys: tuple[str, ...]
    """Dev metrics logged at each evaluation during training."""

    def check(self, method: MethodConfig, method_cls, family) -> None:
        """Refuse a method (its section and class) or model family this task cannot run on,
        before anything loads."""

    def attach(self, pipe) -> None:
        """Take what the loss needs from the assembled pipeline (called once, by `build`)."""

    def loss(self, model, batch: dict, label_smoothing: float) -> torch.Tensor:
        raise NotImplementedError

    def units(self, batch: dict) -> int:
        """What `loss` averages over in this batch, so slices of one batch on several
        processes can be weighted back into the whole batch's mean."""
        raise NotImplementedError

    def evaluate(self, pipe, items, batch_size: int, final: bool = True) -> dict:
        raise NotImplementedError

    @staticmethod
    def score(metrics: dict, metric: str) -> float:
        """Higher is better; picks the best checkpoint and drives early stopping."""
        raise NotImplementedError


class Classification(Objective):
    task = "classification"
    dev_keys = ("accuracy", "macro_f1", "nll")
    content_free: dict | None = None
    """With `prompt.calibrate`: the content-free inputs, collated, for the calibrated loss."""

    def __init__(self, prompt: PromptConfig):
        self.prompt = prompt

    def check(self, method, method_cls, family):
        if self.prompt.multi_token == "chain":
            if not family.teaches_words:
                family.teach_words({}, [])  # raises, saying why and what to use
            if not method_cls.uses_verbalizer:
                raise ConfigError(f"prompt.multi_token: chain scores label words, which method "
                                  f"{method.name} does not read (it has its own head); remove it")

    def attach(self, pipe):
        if self.prompt.calibrate:
            self.content_free = collate(pipe.content_free_items(), pipe.loaded.tokenizer.pad_token_id)

    def loss(self, model, batch, label_smoothing):
        log_cf = None
        if self.content_free is not None:  # first: a method may keep its last forward's state
            device = batch["labels"].device
            free = model({k: v.to(device) for k, v in self.content_free.items()}).log_softmax(-1)  # [3, L]
            log_cf = free.logsumexp(0) - math.log(free.size(0))  # [L]: log of the mean distribution
        scores = model(batch)  # [B, L]
        if log_cf is not None:  # the calibrated prediction's log-probabilities
            scores = (scores.log_softmax(-1) - log_cf).log_softmax(-1)
        return model.method.label_loss(scores, batch["labels"], label_smoothing)

    def units(self, batch):
        return len(batch["labels"])  # inputs (a distilled pool's labels are [B, L] distributions)

    def evaluate(self, pipe, items, batch_size, final=True):
        cf = pipe.content_free_probs() if self.prompt.calibrate else None  # computed once
        metrics = classification_metrics(pipe.labels, [e.label for e in items],
                                         pipe.label_probs(items, batch_size, cf))
        if cf is not None and final:  # what the scores were divided by
            shares = zip(pipe.labels, cf.tolist(), strict=True)
            metrics["content_free"] = {lab: round(p, 6) for lab, p in shares}
        metrics["truncated"] = sum(e.truncated for e in items)
        metrics.update(pipe.method.report())
        return metrics

    @staticmethod
    def score(metrics, metric):
        return metrics[metric]


class Generation(Objective):
    task = "generation"
    dev_keys = ("token_nll",)

    def __init__(self, prompt: PromptConfig, decoding: GenerateConfig):
        self.prompt, self.decoding = prompt, decoding

    def check(self, method, method_cls, family):
        if not family.generates:
            raise ConfigError(f"data.task=generation: a {family.name} model cannot write text; use a "
                              "decoder (causal) or encoder-decoder (seq2seq) model")
        if not method_cls.generates:
            raise ConfigError(f"method.name={method.name}: classification only; for generation "
                              "use soft, prefix, ptuning, lora, prompt-ft, full, two-stage or zero-shot")
        if self.prompt.calibrate:
            raise ConfigError("prompt.calibrate: calibrates label probabilities, which a generation "
                              "task has none of; remove it")

    def loss(self, model, batch, label_smoothing):
        logits = model(batch)  # [N, V]: answer positions only
        target = batch["target"][batch["target"] != -100]  # [N]
        return F.cross_entropy(logits, target, label_smoothing=label_smoothing)

    def units(self, batch):
        return int((batch["target"] != -100).sum())  # answer tokens

    def evaluate(self, pipe, items, batch_size, final=True):
        pad = pipe.loaded.tokenizer.pad_token_id
        # truncated: inputs cut to data.max_length (template and answer slot kept, input's end cut)
        metrics = {"token_nll": round(token_nll(pipe.model, items, pad, batch_size), 6),
                   "truncated": sum(e.truncated for e in items)}
        if final:
            texts = generate(pipe.model, pipe.loaded.tokenizer, items, self.decoding)
            metrics.update(generation_metrics(texts, [e.refs for e in items]))
            metrics["examples"] = [{"refs": list(e.refs), "output": t}
                                   for e, t in zip(items[:20], texts[:20], strict=True)]
        return metrics

    @staticmethod
    def score(metrics, metric):
        nll = metrics["token_nll"]
        return -nll if math.isfinite(nll) else float("-inf")


OBJECTIVES: dict[str, type[Objective]] = {"classification": Classification, "generation": Generation}


def objective_for(task: str, prompt: PromptConfig, decoding: GenerateConfig) -> Objective:
    """The objective of `data.task`, holding the sections it reads."""
    if task == "generation":
        return Generation(prompt, decoding)
    return Classification(prompt)


def dev_score(task: str, metrics: dict, metric: str) -> float:
    """The number that picks a run's best checkpoint (and a bench cell's best grid point)."""
    return OBJECTIVES[task].score(metrics, metric)
