"""What a prompt method is: a module that owns its trainable state and its forward changes.

The trainer, evaluator and artifact code talk to every method through these hooks only:

Each hook gets the method's own config section, and beside it only what it reads:

- `check(config, prompt, task)`: refuse prompt settings or a task this method cannot run;
- `prepare_config(config, context)`: fill data-derived settings into the method config before
  anything is built (`MethodContext`: the splits, the loaded model, the template, the length
  limits; in-context samples its demonstrations here, fitted to `data.max_length` with the
  loaded tokenizer, so they are saved with the run and a reload sees the same prompt);
- `adapt_template(config, template)`: the template this method runs with (zero-shot drops
  soft slots; soft prompting adds a block when the template has none);
- `unused_settings(config, template)`: settings that would have no effect with this
  template, with the reason; a new run that sets one is refused (`check_settings`);
- `prepare_inputs(inputs, batch)`: change the model inputs (`inputs_embeds`,
  `attention_mask`, `answer_pos`, and `prefix`: per-layer keys and values);
- `patch()`: a context in which the base model computes with this method's weight changes
  (LoRA's low-rank updates as forward hooks, full fine-tuning's own copy of the weights). The
  engine enters it through `applied()` around every forward; outside it the base model is
  exactly as loaded, so several methods share one base model side by side;
- `patch_rows(rows)`: the same changes for some rows of a batch only, so a server runs rows
  of several adapters in one forward (LoRA gathers its rows, S-LoRA style); None when a
  method cannot restrict its change to rows (a trained copy of every weight);
- `build_encoder(config, template, make_encoder)`: the encoder of this method's inputs
  (`make_encoder(template)` gives the run's `PromptEncoder`; a mixture of prompts makes one per
  prompt and encodes each input once per prompt, as rows of one batch);
- `scores(hidden, model)`: label scores from the answer-position hidden state (the default
  reads label-word logits through the verbalizer; a classification head replaces it);
- `label_loss(scores, labels, smoothing)`: the training loss on those scores (cross-entropy;
  a mixture's expected cost and prior entropy); `report()`: numbers added to eval metrics;
- `adapter_tensors()`: the parameters this method trains, by the name the adapter file uses;
  `trainable_parameters`, `adapter_state` and `load_adapter_state` follow from it;
- `phases()`: what is trained in which order (two-stage training has two phases);
- `merged_weights()`: the base weights with the adapter folded in (`cuetune merge`), or a
  refusal that says why this adapter is not a weight change;
- `peft_imports`, `peft_export()`, `peft_import(...)`: the PEFT adapter kinds a method writes
  and reads (`interop` does the files; the method knows its tensor layout).

A new method is one module with a config subclass and a `register(...)` call.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cuetune.config import MethodConfig, PromptConfig
from cuetune.data.examples import Splits
from cuetune.errors import ArtifactError
from cuetune.families.inputs import ModelInputs
from cuetune.prompt.encoder import Encoder, PromptEncoder
from cuetune.prompt.templates import Slot, Template, Text


@dataclass(frozen=True)
class MethodContext:
    """What `prepare_config` may read besides the method's own section: the run's data, its
    base model, and the few settings of other sections that shape the prompt."""

    template: Template
    """The run's template as written (`prompt.template`, parsed)."""
    verbalizer: dict | None
    """`prompt.verbalizer` as written (None: each label's own name)."""
    task: str
    """`data.task`: classification or generation."""
    max_length: int
    """`data.max_length`: tokens an input with its prompt may take."""
    max_new_tokens: int
    """`generate.max_new_tokens`."""
    seed: int
    """`train.seed`."""
    splits: Splits
    loaded: object
    """The `LoadedModel` the run is built on."""
    make_encoder: Callable[[Template], PromptEncoder]
    """The run's encoder of a template (`prompt.encoder_for`)."""


@dataclass
class Phase:
    """One stretch of training: these parameters, this learning rate, this share of the steps.

    `lr=None` takes `train.lr`, or the method's default when that is unset too.
    """

    name: str
    params: list[nn.Parameter]
    lr: float | None = None
    fraction: float = 1.0


class Method(nn.Module):
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    trains: ClassVar[bool] = True
    """False for baselines that only evaluate (zero-shot, in-context)."""
    freezes_base: ClassVar[bool] = True
    """False when the adapter holds (a trained copy of) the base model's own weights: full and
    prompt-based fine-tuning. The loaded base model itself is never changed."""
    uses_verbalizer: ClassVar[bool] = True
    generates: ClassVar[bool] = True
    """False when the method's answer can only be a label (a classification head; in-context
    demonstrations built from label words)."""
    default_lr: ClassVar[float] = 1e-3
    peft_imports: ClassVar[tuple[str, ...]] = ()
    """PEFT `peft_type`s this method can load (PROMPT_TUNING, PREFIX_TUNING, LORA, ...)."""
    merge_refusal: ClassVar[str] = "it trains no weight of the model"
    """Why `merged_weights` cannot fold this method's adapter into the base weights."""
    demonstrations_refusal: ClassVar[str | None] = None
    """Why `prompt.demonstrations` cannot go with this method, said after "method <name>"
    (None: they can)."""

    def __init__(self, config: MethodConfig, loaded, encoder, labels: list[str] | None = None):
        super().__init__()
        self.config = config
        self.labels = labels
        self.encoder = encoder
        # The base model is not a submodule: its weights are not part of this method's state.
        self._loaded = (loaded,)
        self._applied = False

    @property
    def loaded(self):
        return self._loaded[0]

    @classmethod
    def check(cls, config: MethodConfig, prompt: PromptConfig, task: str) -> None:
        """Refuse, before anything loads, prompt settings or a task this method cannot run."""

    @classmethod
    def prepare_config(cls, config: MethodConfig, context: MethodContext) -> MethodConfig:
        return config

    @classmethod
    def adapt_template(cls, config: MethodConfig, template: Template) -> Template:
        return template

    @classmethod
    def unused_settings(cls, config: MethodConfig, template: Template) -> dict[str, str]:
        """`section.key` -> why it would do nothing with this method section and the user's
        template as written (a key of another section may be named too: `train.lr`)."""
        return {}

    @classmethod
    def build_encoder(cls, config: MethodConfig, template: Template,
                      make_encoder: Callable[[Template], PromptEncoder]) -> Encoder:
        """The encoder of this method's inputs (a mixture encodes each input once per prompt)."""
        return make_encoder(template)

    def prepare_inputs(self, inputs: ModelInputs, batch: dict) -> ModelInputs:
        return inputs

    def patch(self):
        """A context manager in which the base model computes with this method's weight
        changes; the default changes nothing."""
        return nullcontext()

    def patch_rows(self, rows: torch.Tensor):
        """A context in which this method's weight changes apply to batch rows `rows` [R] only,
        or None when they cannot be restricted to rows. Methods that change no weight need
        nothing."""
        return nullcontext() if type(self).patch is Method.patch else None

    @contextmanager
    def applied(self):
        """`patch()`, entered once however deeply calls nest (a decoding loop around forwards)."""
        if self._applied:
            yield
            return
        self._applied = True
        try:
            with self.patch():
                yield
        finally:
            self._applied = False

    def scores(self, hidden: torch.Tensor, model) -> torch.Tensor:
        """Answer hidden states [B, H] -> label scores [B, L]: label-word logits only."""
        token_logits = model.family.token_logits(model.base, hidden, model.token_ids)  # [B, V']
        return model.verbalizer.label_logits(token_logits)

    def label_loss(self, scores: torch.Tensor, labels: torch.Tensor, label_smoothing: float) -> torch.Tensor:
        """The training loss of label scores [B, L]: cross-entropy on the gold label."""
        return F.cross_entropy(scores, labels, label_smoothing=label_smoothing)

    def report(self) -> dict:
        """Method-specific numbers added to evaluation metrics (a mixture's prior)."""
        return {}

    def adapter_tensors(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def phases(self) -> list[Phase]:
        return [Phase("train", self.trainable_parameters())]

    def merged_weights(self) -> dict[str, torch.Tensor]:
        """Base parameter name -> that weight with this adapter folded in, for each weight the
        adapter changes; a plain transformers model with them computes what the run computes."""
        raise ArtifactError(f"merge: a {self.config.name} run cannot be folded into the model's "
                            f"weights: {self.merge_refusal}")

    def peft_export(self) -> tuple:
        """(peft config object, tensors in PEFT's names) for PEFT's `save_pretrained` layout."""
        raise ArtifactError(f"method {self.config.name!r}: PEFT has no adapter type for it; "
                            "PEFT export covers soft, ptuning, prefix and lora")

    @classmethod
    def peft_import(cls, peft_config: dict, tensors: dict) -> tuple[dict, dict]:
        """(method config fields, adapter state in our names) from a PEFT adapter."""
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.adapter_tensors().values())

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.adapter_tensors().items()}

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        own = self.adapter_tensors()
        if set(state) != set(own):
            missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise KeyError(f"adapter tensors do not match this method: missing {missing[:5]}, "
                           f"unexpected {extra[:5]}")
        with torch.no_grad():
            for name, tensor in state.items():
                if own[name].shape != tensor.shape:
                    raise ValueError(f"adapter tensor {name}: shape {tuple(tensor.shape)}, "
                                     f"expected {tuple(own[name].shape)}")
                own[name].copy_(tensor)


def soft_settings_unused(method, template: Template) -> dict[str, str]:
    """Soft-prompt keys the template makes moot: its own {soft:N} blocks fix the length, and
    init words are read only with init=words."""
    unused = {}
    if template.soft_segments and method.num_tokens is not None:
        unused["method.num_tokens"] = "the template's {soft:N} blocks set the number of soft tokens"
    if method.init != "words" and method.init_words is not None:
        unused["method.init_words"] = "read only with method.init=words"
    return unused


def plain_template(template: Template) -> Template:
    """The inputs and the answer with no prompt words: `{text} {text_pair} {answer}`."""
    segs: list = []
    for name in ("text", "text_pair", "answer"):
        if template.has(name):
            segs += [Text(" "), Slot(name)] if segs else [Slot(name)]
    return Template(template.source, tuple(segs))


class WeightCopy(nn.Module):
    """A method's own trainable copy of base weights, used in place of the base's own.

    Full and prompt-based fine-tuning train every weight, yet the loaded base model must stay
    as loaded (other adapters share it, the zero-shot baseline reads it). So the method trains
    a copy, and `patch()` puts the copy into the base model's modules for the duration of a
    forward and puts the originals back after: the same swap `torch.func.functional_call`
    makes. Tied weights share one copy. Names are `base.<parameter name>` in the adapter file.

    The copy is fp32 whatever the base's dtype (fp32 master weights): with a bf16 base (the
    CUDA default) the forward runs on a bf16 cast of it, while the update and AdamW's moments
    keep full precision, so small steps are not rounded away.
    """

    def __init__(self, model: nn.Module, skip: set[int] = frozenset()):
        super().__init__()
        named = {n: p for n, p in model.named_parameters() if id(p) not in skip}  # tied: once
        self.names = list(named)
        self.dtypes = [p.dtype for p in named.values()]
        self.params = nn.ParameterList([nn.Parameter(_master(p)) for p in named.values()])
        index = {id(p): i for i, p in enumerate(named.values())}
        self._slots = [(module, key, index[id(p)]) for module in model.modules()
                       for key, p in module._parameters.items() if p is not None and id(p) in index]

    def tensors(self) -> dict[str, nn.Parameter]:
        return {f"base.{n}": p for n, p in zip(self.names, self.params, strict=True)}

    def merged(self) -> dict[str, torch.Tensor]:
        """The trained weights in the base's own dtypes."""
        return {n: p.detach().to(d) for n, p, d in zip(self.names, self.params, self.dtypes, strict=True)}

    @contextmanager
    def patch(self):
        saved = [(module, key, module._parameters[key]) for module, key, _ in self._slots]
        for module, key, i in self._slots:  # a differentiable cast when the base is not fp32
            module._parameters[key] = self.params[i].to(self.dtypes[i])
        try:
            yield
        finally:
            for module, key, original in saved:
                module._parameters[key] = original


def _master(p: torch.Tensor) -> torch.Tensor:
    """A trainable copy of a base weight: fp32 for floating point weights."""
    return p.detach().to(torch.float32 if p.is_floating_point() else p.dtype, copy=True)
