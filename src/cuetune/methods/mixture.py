"""A mixture of prompts: M prompts trained together under a prior P(phi), so a prediction rests
on a distribution of prompts rather than on one.

The product's formulation treats the prompt as a random variable:
L = sum_x sum_phi C(y | x, theta) P(x | phi) P(phi). In code (docs/methods.md relates each term):

- phi ranges over the components: the templates in `method.prompts` (hand or searched), each
  repeated `copies` times; a component whose template has a `{soft}` block (or gets one from
  `num_tokens`) trains its own soft prompt, so `copies` > 1 gives M soft prompts on one wording;
- P(phi) is `prior`: `uniform` (fixed 1/M), `learned` (a softmax over M logits) or `gate`
  (those logits plus a linear gate over the frozen model's answer states for x, Qin & Eisner
  2021: the prior depends on the input);
- p(y | x, phi) is the label distribution the model gives under component phi;
- `objective: marginal` trains -log sum_phi P(phi) p(y | x, phi) (the mixture's likelihood);
  `objective: expected` trains sum_phi P(phi) [-log p(y | x, phi)], the expected cost of the
  formula, which by Jensen's inequality bounds the other from above;
- `entropy` subtracts that multiple of the prior's entropy from the loss, and `temperature`
  divides the prior's logits: two guards against the prior collapsing onto one prompt early.

A component may bring its own label words and contextual calibration (`method.prompts`
entries `{template, verbalizer, calibrate}`): a prompt search's top prompts each come with the
words and calibration dev chose for them, and the mixture keeps them (issue 42). Each
component's label-word logits are then read at its own answer and turned into p(y | x, phi)
through its own verbalizer; a calibrated component's log-probabilities are shifted by its
content-free distribution (computed without gradient at every forward, from the same rows)
before the prior mixes them, in training as at prediction.

Prediction is always the mixture p(y | x) = sum_phi P(phi) p(y | x, phi). The M variants of an
input are rows of one batch (`Views` encodes them). On a causal model rows that start alike run
that start once (`row_groups`): each prompt's special tokens, soft prompt and words before the
input, as a single-prompt run does; or, with the input first, each input once for its M prompts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from cuetune.config import MethodConfig, PromptConfig, Strict
from cuetune.errors import ConfigError, TemplateError, VerbalizerError
from cuetune.families.inputs import ModelInputs
from cuetune.methods.method import Method
from cuetune.methods.soft import SoftBlock, fill_soft
from cuetune.prompt.batch import collate
from cuetune.prompt.encoder import Encoded, PromptEncoder, content_free_examples
from cuetune.prompt.templates import Template, parse
from cuetune.prompt.verbalizers import Verbalizer


class MixturePrompt(Strict):
    """One component with its own label words and calibration (a searched prompt as the
    search chose it)."""

    template: str
    verbalizer: dict[str, str | list[str]] | None = None
    """This prompt's label -> word(s); None: the run's `prompt.verbalizer`."""
    calibrate: bool = False
    """Contextual calibration of this prompt's label distribution before the prior mixes it."""


class MixtureConfig(MethodConfig):
    name: Literal["mixture"] = "mixture"
    prompts: list[str | MixturePrompt] | None = None
    """The components: templates (with the run's label words), or `{template, verbalizer,
    calibrate}` entries with their own; None: `prompt.template` only."""
    copies: int = Field(1, ge=1, le=64)
    """Components per template, each with its own soft prompt (needs soft tokens)."""
    num_tokens: int | None = Field(None, ge=1, le=1000)
    """A leading soft block of this many tokens on every template that has none; None: the
    templates as written (hard ones train nothing but the prior)."""
    prior: Literal["uniform", "learned", "gate"] = "learned"
    objective: Literal["marginal", "expected"] = "marginal"
    entropy: float = Field(0.0, ge=0.0)
    """Weight of the prior's entropy, subtracted from the loss (keeps the prior spread)."""
    temperature: float = Field(1.0, gt=0.0)
    """Divides the prior's logits: above 1 flattens the prior."""
    init: Literal["vocab", "words", "random"] = "vocab"
    """Soft-prompt initialisation, as for method soft; copy m draws with seed + m."""
    init_words: str | None = None
    vocab_top: int = Field(5000, ge=10)
    seed: int = 0


def own_words(cfg: MixtureConfig) -> bool:
    """Whether the components are entries with their own words and calibration."""
    return any(isinstance(p, MixturePrompt) for p in cfg.prompts or [])


def component_entries(cfg: MixtureConfig) -> list[MixturePrompt]:
    """Every listed prompt as an entry (a bare template: the run's words, uncalibrated), in
    component order."""
    entries = [p if isinstance(p, MixturePrompt) else MixturePrompt(template=p) for p in cfg.prompts or []]
    return [e for e in entries for _ in range(cfg.copies)]


def component_templates(cfg: MixtureConfig, template: Template) -> list[Template]:
    """The M templates, in component order: each prompt `copies` times."""
    sources = ([p.template if isinstance(p, MixturePrompt) else p for p in cfg.prompts]
               if cfg.prompts is not None else [template.source])
    if not sources:
        raise ConfigError("method.prompts: empty; give at least one template (or leave it unset "
                          "to use prompt.template)")
    out = []
    for i, source in enumerate(sources):
        try:
            parsed = template if cfg.prompts is None else parse(source)
        except TemplateError as exc:
            raise ConfigError(f"method.prompts[{i}]: {exc}") from None
        if cfg.num_tokens is not None and not parsed.soft_segments:
            parsed = parsed.with_leading_soft(cfg.num_tokens)
        out += [parsed] * cfg.copies
    if len(out) < 2:
        raise ConfigError("method: a mixture needs at least two prompts; list several in "
                          "method.prompts or set method.copies (with soft tokens)")
    return out


class Views:
    """Encodes each example once per component; an item's `views` become rows of one batch
    (`encoding.collate`): example b's prompt m is row b * M + m."""

    def __init__(self, encoders: list[PromptEncoder], own_words: bool = False):
        self.encoders = encoders
        first = encoders[0]
        for i, enc in enumerate(encoders[1:], 1):
            if enc.template.has("text_pair") != first.template.has("text_pair"):
                raise ConfigError(f"method.prompts[{i}]: every prompt must take the same inputs "
                                  "({text_pair} in all or none)")
            if enc.answer_space != first.answer_space and not own_words:
                raise ConfigError(f"method.prompts[{i}]: the label words follow a space in one prompt "
                                  "and not in another, so they would be different tokens; end every "
                                  "prompt's text before {answer} the same way")
        self.views = len(encoders)
        self.template = first.template
        self.answer_space = first.answer_space
        self.shared_lens = [e.shared_len for e in encoders]
        self.shared_len = 1
        """Asks the prompt model for shared starts (it passes 0 where dropout forbids them);
        `Mixture.row_groups` says which rows share which start."""
        self.num_soft = sum(e.num_soft for e in encoders)

    def encode(self, examples, what: str = "examples", with_target: bool = True) -> list[Encoded]:
        per = [enc.encode(examples, what, with_target) for enc in self.encoders]
        out = []
        for views in zip(*per, strict=True):
            longest = max(views, key=lambda v: len(v.input_ids))  # what length ordering reads
            out.append(Encoded(longest.input_ids, longest.soft_index, longest.answer_pos, views[0].label,
                               any(v.truncated for v in views), views=tuple(views)))
        return out

    def use_demonstrations(self, demos) -> None:
        raise ConfigError("prompt.demonstrations: not available with method mixture (each prompt "
                          "would need its own rendering of them); remove it")

    def pieces(self) -> list[dict]:
        raise ConfigError("method mixture: M prompts have no single layout to export")


class Mixture(Method):
    config_class = MixtureConfig
    default_lr = 3e-2
    generates = False
    merge_refusal = "its prompts are inputs the model reads and a prior over them, not a weight change"
    demonstrations_refusal = "has several prompts, and each would need its own rendering of them"

    @classmethod
    def check(cls, config: MixtureConfig, prompt: PromptConfig, task: str) -> None:
        if task != "classification":
            raise ConfigError("method mixture: classification only (a prior over prompts mixes "
                              "label distributions)")
        if prompt.multi_token == "chain":
            raise ConfigError("prompt.multi_token: chain runs its own teacher-forced rows, which "
                              "method mixture does not combine yet; use mean, first or max")
        if prompt.calibrate and config.objective == "expected":
            raise ConfigError("prompt.calibrate: the expected-cost objective trains each prompt's own "
                              "uncalibrated scores, not the calibrated mixture it would predict; "
                              "use method.objective=marginal, or drop calibration")
        if own_words(config):
            if prompt.calibrate and any(e.calibrate for e in component_entries(config)):
                raise ConfigError("prompt.calibrate: calibrates the whole mixture, and method.prompts "
                                  "entries calibrate their own prompts; use one of the two")
            if prompt.multi_token != "mean":
                raise ConfigError(f"prompt.multi_token: {prompt.multi_token} with method.prompts "
                                  "entries of their own words; per-prompt words are scored by their "
                                  "tokens' mean (use mean, or give templates only)")

    @classmethod
    def build_encoder(cls, config: MixtureConfig, template: Template,
                      make_encoder: Callable[[Template], PromptEncoder]) -> Views:
        templates = component_templates(config, template)
        if config.copies > 1 and not any(t.soft_segments for t in templates):
            raise ConfigError("method.copies: copies of a hard template are the same prompt; set "
                              "method.num_tokens (or put {soft:N} in the template) so each copy "
                              "trains its own soft prompt")
        return Views([make_encoder(t) for t in templates], own_words(config))

    @classmethod
    def unused_settings(cls, config, template):
        m, unused = config, {}
        if m.prior == "uniform":
            for key in ("entropy", "temperature"):
                unused[f"method.{key}"] = "shapes a learned prior; prior is uniform"
        sources = ([e.template for e in component_entries(m)] if m.prompts is not None
                   else [template.source])
        if m.num_tokens is not None and all(parse(t).soft_segments for t in sources):
            unused["method.num_tokens"] = "every template's {soft:N} blocks set the number of soft tokens"
        if m.init != "words" and m.init_words is not None:
            unused["method.init_words"] = "read only with method.init=words"
        return unused

    def __init__(self, config: MixtureConfig, loaded, encoder: Views, labels=None):
        super().__init__(config, loaded, encoder, labels)
        self.count = len(encoder.encoders)
        blocks, offsets, at = {}, [], 0
        for m, enc in enumerate(encoder.encoders):
            offsets.append(at)
            if enc.num_soft:
                blocks[str(m)] = SoftBlock(config.model_copy(update={"seed": config.seed + m}), loaded, enc)
                at += enc.num_soft
        self.blocks = nn.ModuleDict(blocks)
        self.register_buffer("offsets", torch.tensor(offsets), persistent=False)  # [M]
        self.prior_logits = nn.Parameter(torch.zeros(self.count), requires_grad=config.prior != "uniform")
        hidden = loaded.model.get_input_embeddings().weight.size(1)
        self.gate = nn.Linear(hidden, self.count) if config.prior == "gate" else None
        if self.gate is not None:  # starts as the plain learned prior
            nn.init.zeros_(self.gate.weight)
            nn.init.zeros_(self.gate.bias)
        self.words = own_words(config)
        entries = component_entries(config)
        self.verbalizers: list[Verbalizer | None] = [None] * self.count
        """Per component, its own bound verbalizer; None: the run's words, bound at the first
        forward (they are the prompt model's)."""
        if self.words:
            for m, (entry, enc) in enumerate(zip(entries, encoder.encoders, strict=True)):
                if entry.verbalizer is not None:
                    self.verbalizers[m] = _bound(entry.verbalizer, labels, loaded.tokenizer, enc.answer_space,
                                                 f"method.prompts[{m // config.copies}].verbalizer")
        self.union: torch.Tensor | None = None
        self.columns: list[torch.Tensor] = []
        self.register_buffer("calibrated", torch.tensor([e.calibrate for e in entries] if self.words
                                                        else [False] * self.count), persistent=False)  # [M]
        self.trains = any(p.requires_grad for p in self.parameters())
        """False for hard prompts under a uniform prior: nothing to learn, so the run only
        evaluates (a search's zero-shot combination)."""
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None
        """(log p(y|x,phi) [B, M, L], log P(phi|x) [B, M]) of the latest forward, for the loss."""
        self._seen = [torch.zeros(self.count), 0]  # prior mass summed over scored inputs, count

    def prepare_inputs(self, inputs: ModelInputs, batch: dict) -> ModelInputs:
        if inputs.shared_len:  # sharing is allowed here (no dropout in training)
            inputs.row_groups = self.row_groups(batch)
            inputs.shared_len = 0
        if not len(self.blocks):
            return inputs
        prompt = torch.cat([b.prompt for b in self.blocks.values()])  # [P_total, H]
        soft = batch["soft_index"]  # [B*M, T]
        shift = self.offsets.repeat(soft.size(0) // self.count)[:, None]  # [B*M, 1]
        return fill_soft(inputs, torch.where(soft >= 0, soft + shift, soft), prompt)

    def row_groups(self, batch: dict) -> list[tuple[torch.Tensor, int, object]]:
        """Groups of rows that start alike, for `fastpath.run_groups`: (rows, shared length,
        memo key), whichever layout saves more tokens. Prompt first (special tokens, soft
        prompt, words before the input): each prompt's rows share that start, kept across
        batches. Input first (`{text} <prompt> {answer}`): an input's M rows share the input,
        so it runs once and the M prompts after it; no memo (every input is new)."""
        ids, soft, mask = batch["input_ids"], batch["soft_index"], batch["attention_mask"]  # [B*M, T]
        count = self.count
        n = ids.size(0) // count
        rows = torch.arange(n * count, device=ids.device)
        lens = self.encoder.shared_lens
        same = ((ids.view(n, count, -1) == ids.view(n, count, -1)[:, :1]).all(1)
                & (soft.view(n, count, -1) < 0).all(1) & mask.view(n, count, -1).bool().all(1))  # [B, T]
        common = same.long().cumprod(1).sum(1)  # [B]: each input's shared start
        if int(common.sum()) * (count - 1) > sum(lens) * (n - 1):
            return [(rows[b * count:(b + 1) * count], int(common[b]), None) for b in range(n)]
        return [(rows[m::count], lens[m], m) for m in range(count)]

    def log_prior(self, hidden: torch.Tensor) -> torch.Tensor:
        """log P(phi | x) [B, M] from answer states [B, M, H]."""
        logits = self.prior_logits.expand(hidden.size(0), -1)  # [B, M]
        if self.gate is not None:  # the frozen model's view of x, averaged over the prompts
            logits = logits + self.gate(hidden.detach().float().mean(1))
        return F.log_softmax(logits / self.config.temperature, -1)

    def scores(self, hidden: torch.Tensor, model) -> torch.Tensor:
        """Answer states [B*M, H] -> log p(y|x) [B, L] of the mixture (normalised, so a
        cross-entropy on it is the marginal likelihood)."""
        logp = self.component_logp(hidden, model)  # [B, M, L]
        if bool(self.calibrated.any()):
            with torch.no_grad():
                free = self.component_logp(self._content_free_hidden(model), model)  # [3, M, L]
            bias = (free.exp().mean(0).clamp_min(1e-30).log() * self.calibrated[:, None])  # [M, L]
            logp = F.log_softmax(logp - bias, -1)
        prior = self.log_prior(hidden.view(logp.size(0), self.count, -1))  # [B, M]
        self.last = (logp, prior)
        if not torch.is_grad_enabled():
            self._seen[0] += prior.detach().exp().sum(0).cpu()
            self._seen[1] += prior.size(0)
        return torch.logsumexp(prior[..., None] + logp, 1)  # [B, L]

    def component_logp(self, hidden: torch.Tensor, model) -> torch.Tensor:
        """Answer states [B*M, H] -> log p(y | x, phi) [B, M, L], each component through its
        own words where it has them."""
        if not self.words:
            per = super().scores(hidden, model).float()  # [B*M, L]
            return F.log_softmax(per, -1).view(-1, self.count, per.size(-1))
        verbalizers = self._verbalizers(model)
        union = self.union.to(hidden.device)
        logits = model.family.token_logits(model.base, hidden, union).float()  # [B*M, U]
        logits = logits.view(-1, self.count, logits.size(-1))  # [B, M, U]
        per = torch.stack([v.label_logits(logits[:, m, self.columns[m].to(hidden.device)])
                           for m, v in enumerate(verbalizers)], 1)  # [B, M, L]
        return F.log_softmax(per, -1)

    def _verbalizers(self, model) -> list[Verbalizer]:
        """The components' verbalizers, the run's words bound to each prompt's own answer
        spacing where a component has none; and the union of their tokens (`union` [U];
        `columns[m]`: where component m's tokens sit in it)."""
        if self.union is not None:
            return self.verbalizers
        run = model.verbalizer
        for m, enc in enumerate(self.encoder.encoders):
            if self.verbalizers[m] is None:
                self.verbalizers[m] = _bound(run.words, run.labels, self.loaded.tokenizer, enc.answer_space,
                                             "prompt.verbalizer")
        self.union = torch.unique(torch.cat([v.token_ids for v in self.verbalizers]))  # sorted
        self.columns = [torch.searchsorted(self.union, v.token_ids) for v in self.verbalizers]
        return self.verbalizers

    def _content_free_hidden(self, model) -> torch.Tensor:
        """Answer states [3*M, H] of the content-free inputs under every component (a
        calibrated component divides its predictions by theirs)."""
        items = self.encoder.encode(content_free_examples(self.encoder.template.has("text_pair")),
                                    "content-free inputs", with_target=False)
        device = model.token_ids.device
        batch = {k: v.to(device) for k, v in collate(items, self.loaded.tokenizer.pad_token_id).items()}
        return model.family.run(model.base, model.inputs(batch))

    def label_loss(self, scores: torch.Tensor, labels: torch.Tensor, label_smoothing: float) -> torch.Tensor:
        logp, prior = self.last
        if self.config.objective == "marginal":
            loss = F.cross_entropy(scores, labels, label_smoothing=label_smoothing)
        else:  # E_phi[C]: each prompt's own cross-entropy, weighted by its prior
            flat = logp.flatten(0, 1)  # [B*M, L]
            each = F.cross_entropy(flat, labels.repeat_interleave(self.count), reduction="none",
                                   label_smoothing=label_smoothing).view(-1, self.count)  # [B, M]
            loss = (prior.exp() * each).sum(1).mean()
        if self.config.entropy:
            loss = loss - self.config.entropy * entropy(prior).mean()
        return loss

    def report(self) -> dict:
        """The prior (for a gate: its mean over the inputs scored since the last report) and
        its entropy in nats (log M is uniform, 0 is one prompt)."""
        total, n = self._seen
        if self.gate is not None and n:
            prior = total / n
        else:
            prior = F.softmax(self.prior_logits.detach().float().cpu() / self.config.temperature, -1)
        self._seen = [torch.zeros(self.count), 0]
        return {"prior": [round(float(p), 6) for p in prior],
                "prior_entropy": round(float(entropy(prior.clamp_min(1e-30).log())), 6)}


def _bound(words: dict, labels: list[str], tokenizer, answer_space: bool, field: str) -> Verbalizer:
    """A component's verbalizer bound to the tokenizer (errors name the component's field)."""
    try:
        return Verbalizer(labels, words).bind(tokenizer, answer_space)
    except VerbalizerError as exc:
        raise ConfigError(str(exc).replace("prompt.verbalizer", field, 1)) from None


def entropy(log_p: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of distributions given as log-probabilities over the last dim."""
    return -(log_p.exp() * log_p).sum(-1)
