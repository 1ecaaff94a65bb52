"""Typed run configuration, validated at the edge.

A YAML file maps one to one onto `RunConfig`; `key=value` overrides (`train.lr=0.01`) are
applied to the raw mapping before validation. Unknown keys are rejected with a did-you-mean,
so a typo never silently falls back to a default. Each part of cuetune is handed the sections
it reads (the trainer `TrainConfig`, decoding `GenerateConfig`, a method its own section);
`variant` makes a changed copy of a whole config. Reading a config file (with a named task's
`task:` section) is `cuetune.runs.config_file.load`.
"""

from __future__ import annotations

import logging
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator

from cuetune.errors import ConfigError, did_you_mean

log = logging.getLogger(__name__)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Strict):
    name: str = "smollm2-135m"
    """An alias from `cuetune models`, a local directory, or a hub id."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """auto: float32 on CPU (bf16 is slow on most CPUs), bfloat16 on CUDA."""
    device: str = "auto"
    trust_remote_code: bool = False
    dropout: float | None = Field(None, ge=0.0, lt=1.0)
    """Set every dropout rate in the base model (None: as the checkpoint says). Dropout in
    training turns off the shared-prompt fast path, whose rows must see identical states."""


class CleanConfig(Strict):
    strip: bool = True
    collapse_whitespace: bool = True
    drop_empty: bool = True
    drop_duplicates: bool = True
    drop_test_overlap: bool = True
    """Drop train/dev rows whose text also appears in the test split."""


class DataConfig(Strict):
    task: Literal["classification", "generation"] = "classification"
    """classification: the answer is one of `labels`; generation: the answer is text (the
    `target_column`), trained by token cross-entropy and decoded by `generate`."""
    train: str | None = None
    dev: str | None = None
    test: str | None = None
    """Files (csv, tsv, jsonl, json), or split names when `dataset` is set."""
    dataset: str | None = None
    """A `datasets.load_dataset` source (hub id or builder name); needs network for hub ids."""
    dataset_config: str | None = None
    format: Literal["auto", "csv", "tsv", "jsonl", "json"] = "auto"
    columns: list[str] | None = None
    """Column names for headerless CSV/TSV files, e.g. [label, text]."""
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    target_column: str = "target"
    """Generation: the answer text; a list of strings (JSON) gives several references."""
    labels: list[str] | None = None
    """The label list; integer labels in the data index into it."""
    dev_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    split_seed: int = 13
    k_shot: int | None = Field(None, ge=1)
    """Sample K training examples per class."""
    k_shot_dev: int | None = Field(None, ge=1)
    k_shot_seed: int = 13
    max_test: int | None = Field(None, ge=1)
    """Evaluate on the first N test inputs only (a CPU budget for long generation test sets)."""
    clean: CleanConfig = CleanConfig()
    max_length: int = Field(256, ge=8)
    max_target_length: int = Field(64, ge=1)
    """Generation: answer tokens kept for training (the end-of-text token is added)."""


class DemoConfig(Strict):
    """LM-BFF's demonstrations (Gao et al. 2021, section 6): before each input, `per_class`
    training examples of every class, rendered with the template and their label's first word.
    See `cuetune.demonstrations`."""

    per_class: int = Field(1, ge=1, le=8)
    select: Literal["similar", "random"] = "similar"
    """`similar`: the training examples nearest the input by sentence embedding (`embedder`);
    `random`: drawn per input with `seed`."""
    embedder: str = "minilm-l6"
    """Sentence encoder for `select: similar` (mean-pooled, normalised)."""
    seed: int = 0
    separator: str = "\n"
    pool: list[dict] | None = None
    """The training examples demonstrations come from ({text, text_pair, label}); filled from
    the training split when a run starts and saved with it, so a loaded run predicts with the
    same demonstrations."""
    max_pool: int = Field(2000, ge=1)
    """A larger training split is sampled down to this many (seeded) for the pool."""

    @field_validator("embedder")
    @classmethod
    def _embedder_needs_similar(cls, value, info):
        if info.data.get("select") == "random" and value != "minilm-l6":
            raise ValueError("only used with select: similar; remove it or set select: similar")
        return value


class PromptConfig(Strict):
    template: str = "{soft:20} Review: {text} Sentiment: {answer}"
    verbalizer: dict[str, str | list[str]] | None = None
    """label -> word or words; default: each label's own name."""
    instruction: str | None = None
    chat: bool = False
    """Wrap the prompt in the tokenizer's chat template (instruction-tuned models)."""
    multi_token: Literal["first", "mean", "max", "chain"] = "mean"
    calibrate: bool = False
    """Contextual calibration (Zhao et al. 2021): divide each label probability by the one the
    same prompt gives content-free inputs ("N/A", "", "[MASK]"; their mean), then renormalise,
    so a prompt's bias toward a label word stops deciding the answer. Applied at evaluation
    and prediction, with the run's adapter, for every method; training's loss is unchanged."""
    demonstrations: DemoConfig | None = None
    """Labelled training examples put before each input, for every method, in training and
    prediction (None: none)."""


class AugmentConfig(Strict):
    """Noisy copies of the training examples (see augment.py)."""

    kind: Literal["none", "token_dropout", "swap"] = "none"
    p: float = Field(0.1, gt=0.0, lt=1.0)
    copies: int = Field(1, ge=1, le=16)
    """Noisy copies per training example (the originals are kept)."""


class TrainConfig(Strict):
    seed: int = 42
    lr: float | None = Field(None, gt=0)
    """None: the method's default learning rate."""
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(16, ge=1)
    eval_batch_size: int = Field(32, ge=1)
    group_by_length: bool = False
    """Batch examples of similar length together (sorted within windows of 8 batches, batch
    order shuffled). Off by default: decoders pack each batch without padding anyway, and the
    batches it makes are not random samples (docs/PERFORMANCE.md has what that cost)."""
    grad_accum: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)
    epochs: float = Field(3.0, gt=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    max_grad_norm: float | None = 1.0
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment: AugmentConfig = AugmentConfig()
    eval_every: int = Field(20, ge=1)
    patience: int | None = Field(5, ge=1)
    """Stop after this many evaluations without improvement; None disables."""
    metric: Literal["accuracy", "macro_f1"] = "accuracy"
    checkpoint_every: int | None = Field(50, ge=1)
    """Write a resumable checkpoint every N steps (`cuetune train --resume RUN_DIR`); None: never."""
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """A NaN/inf loss or gradient: stop with an error (the last checkpoint is kept) or skip that
    update and count it (`training.skipped_steps` in the manifest)."""
    zero_shot_baseline: bool = True
    """Also evaluate the hard prompt alone (no trained parameters) on test."""
    evaluate_test: bool = True
    """Score the test split when training ends. `cuetune bench` turns it off for the points of
    a hyperparameter grid and scores test once, on the point dev chose (`api.score_test`)."""
    progress: bool = True


class GenerateConfig(Strict):
    """How `generate` decodes (generation tasks; eval and the `generate` command)."""

    strategy: Literal["greedy", "beam", "sample"] = "greedy"
    max_new_tokens: int = Field(64, ge=1, le=4096)
    num_beams: int = Field(4, ge=1, le=64)
    length_penalty: float = 1.0
    """Beam search ranks finished texts by log-probability / length ** length_penalty."""
    temperature: float = Field(1.0, gt=0)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: list[str] = []
    """Strings that end a text (cut before them), besides the end-of-text token."""
    repetition_penalty: float = Field(1.0, gt=0)
    """Divides a positive score (multiplies a negative one) of every token the text already
    holds (CTRL's penalty, as in transformers); 1 is off. Counts written tokens only, never
    the prompt's: a summary must be free to reuse the dialogue's names."""
    no_repeat_ngram_size: int = Field(0, ge=0)
    """Forbid any token that would write an n-gram of this size the text already holds (0 is
    off). Written tokens only, as `repetition_penalty`."""
    seed: int = 0
    """Sampling: row i of the input uses seed + i, so batching never changes the output."""
    batch_size: int = Field(16, ge=1)


class MethodConfig(Strict):
    """Base of every method's config; each method registers a subclass."""

    name: str = "soft"


METHOD_CONFIGS: dict[str, type[MethodConfig]] = {}
"""Method name -> its config class; filled by `cuetune.methods.register`."""


def method_config_class(name: str) -> type[MethodConfig]:
    if name not in METHOD_CONFIGS:
        raise ConfigError(f"method.name: unknown method {name!r};"
                          f"{did_you_mean(name, METHOD_CONFIGS) or ''} known: {sorted(METHOD_CONFIGS)}")
    return METHOD_CONFIGS[name]


class RunConfig(Strict):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    prompt: PromptConfig = PromptConfig()
    method: SerializeAsAny[MethodConfig] = Field(
        default_factory=lambda: {"name": "soft"}, validate_default=True
    )
    train: TrainConfig = TrainConfig()
    generate: GenerateConfig = GenerateConfig()
    output_dir: str = "runs/default"

    @field_validator("method", mode="before")
    @classmethod
    def _method_by_name(cls, value: Any) -> Any:
        if isinstance(value, MethodConfig):
            value = value.model_dump()
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ValueError("method must be a mapping with a 'name'")
        return method_config_class(value.get("name", "soft")).model_validate(value)


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse `a.b.c=value`; the value is read as YAML (numbers, booleans, lists, null)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.lr=0.01")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def _is_text_field(parts: list[str], raw: dict) -> bool:
    """True when the key names a plain string field (a template, a path, an instruction).

    Its value is kept as typed: `prompt.template={text} {answer}` must not parse as YAML.
    """
    model = _model_at(tuple(parts), raw)
    field = model.model_fields.get(parts[-1]) if model else None
    ann = field.annotation if field else None
    args = typing.get_args(ann) if isinstance(ann, types.UnionType) or typing.get_origin(ann) else ()
    return ann is str or (bool(args) and set(args) <= {str, type(None)})


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`key=value` items applied to a raw config mapping, in order. `method.name=X` naming
    another method keeps only the method keys X also has (a file written for prefix tuning
    still trains with `--set method.name=lora`), and warns naming the ones it drops."""
    for item in overrides:
        parts, value = parse_override(item)
        if parts == ["method", "name"] and isinstance(raw.get("method"), dict):
            _switch_method(raw, value)
        if _is_text_field(parts, raw) and not (value is None and item.endswith("=null")):
            value = item.split("=", 1)[1]
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return raw


def _switch_method(raw: dict, name) -> None:
    old = raw["method"]
    if old.get("name", "soft") == name or name not in METHOD_CONFIGS:
        return  # the same method, or an unknown name (validation says which are known)
    fields = METHOD_CONFIGS[name].model_fields
    dropped = sorted(k for k in old if k not in fields)
    if dropped:
        log.warning("method.name=%s: method %s's keys %s do not apply to %s; dropped", name,
                    old.get("name", "soft"), ", ".join(f"method.{k}" for k in dropped), name)
    raw["method"] = {k: v for k, v in old.items() if k in fields}


def decoding_overrides(items: list[str]) -> dict:
    """`--set key=value` items as `generate` settings (a leading `generate.` is optional)."""
    overrides = {}
    for item in items:
        keys, value = parse_override(item)
        overrides[".".join(keys).removeprefix("generate.")] = value
    return overrides


def _model_at(loc: tuple, raw: dict) -> type[BaseModel] | None:
    """The config model that holds the last key of `loc` (the method's own for `method.*`)."""
    model: type[BaseModel] | None = RunConfig
    node: Any = raw
    for part in loc[:-1]:
        if model is None:
            return None
        if model is RunConfig and part == "method":
            name = node.get("method", {}).get("name", "soft") if isinstance(node, dict) else "soft"
            try:
                model = method_config_class(name)
            except ConfigError:
                return None
            node = node.get("method", {})
            continue
        field = model.model_fields.get(str(part))
        node = node.get(part, {}) if isinstance(node, dict) else {}
        ann = field.annotation if field else None
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return model


def validate(raw: dict, source: str = "config") -> RunConfig:
    """Validate a raw mapping into a RunConfig, with one-line errors naming the field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    try:
        return RunConfig.model_validate(raw)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(str(p) for p in err["loc"])
        where = ".".join(loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            model = _model_at(loc, raw)
            hint = did_you_mean(loc[-1], list(model.model_fields) if model else [])
            msg = f"{source}: {where}: unknown key;{hint or ' see the documented keys'}"
        else:
            msg = f"{source}: {where}: {err['msg']} (got {err.get('input')!r})"
        more = len(exc.errors()) - 1
        raise ConfigError(msg + (f" (+{more} more)" if more else "")) from None


def read_mapping(path: str | Path, what: str) -> dict:
    """A YAML file whose top level is a mapping; errors name the file (and line)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: {what} not found")
    return parse_mapping(p.read_text(encoding="utf-8"), str(p))


def parse_mapping(text: str, source: str) -> dict:
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    return raw


def variant(cfg: RunConfig, **changes: Any) -> RunConfig:
    """A changed copy of a run config, validated as a new one: `method=` replaces the method
    section (another method's keys would not fit it); any other section given as a mapping is
    merged into that section; a plain value (`output_dir`) replaces it."""
    raw = cfg.model_dump()
    for key, value in changes.items():
        merge = isinstance(value, dict) and key != "method" and isinstance(raw.get(key), dict)
        raw[key] = {**raw[key], **value} if merge else value
    return RunConfig.model_validate(raw)
