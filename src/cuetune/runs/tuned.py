"""A finished run loaded for use: `load(run_dir)` gives a `TunedModel` that predicts, writes
text and evaluates, on its own base model or on one another run already loaded."""

from __future__ import annotations

from pathlib import Path

from cuetune.config import GenerateConfig, RunConfig
from cuetune.data.cleaning import clean
from cuetune.data.examples import Example, check_text, group_refs, to_examples
from cuetune.data.readers import read_rows
from cuetune.engine.generation import generate
from cuetune.engine.objectives import objective_for
from cuetune.engine.pipeline import Pipeline, build, load_for
from cuetune.errors import ArtifactError, CuetuneError
from cuetune.families.pretrained import LoadedModel
from cuetune.runs import artifacts
from cuetune.runs.manifest import Manifest


class TunedModel:
    """A trained prompt on its base model, ready to predict. `config` is the run's config as
    it trained (its data columns, decoding settings, length limits)."""

    def __init__(self, pipe: Pipeline, manifest: Manifest, run_dir: Path, config: RunConfig):
        self.pipe = pipe
        self.manifest = manifest
        self.run_dir = run_dir
        self.config = config

    @property
    def labels(self) -> list[str]:
        return self.pipe.labels

    @property
    def task(self) -> str:
        return self.config.data.task

    def predict(self, texts, text_pairs=None, batch_size: int = 32) -> list[dict]:
        """Label and per-label probabilities for each text (and optional second text)."""
        if self.task != "classification":
            raise CuetuneError(f"{self.run_dir}: this run writes text; use generate(), not predict()")
        items = self.pipe.encoder.encode(as_examples(texts, text_pairs), "inputs")
        probs = self.pipe.label_probs(items, batch_size)
        return [{"label": self.labels[int(row.argmax())],
                 "probs": {lab: round(float(p), 6) for lab, p in zip(self.labels, row, strict=True)}}
                for row in probs]

    def generate(self, texts, text_pairs=None, **overrides) -> list[str]:
        """The text the tuned prompt writes for each input. `overrides` change the run's
        `generate` settings for this call (strategy, max_new_tokens, num_beams, stop, ...)."""
        if self.task != "generation":
            raise CuetuneError(f"{self.run_dir}: this run classifies; use predict(), not generate()")
        items = self.pipe.encoder.encode(as_examples(texts, text_pairs), "inputs", with_target=False)
        return generate(self.pipe.model, self.pipe.loaded.tokenizer, items, self.decoding(overrides))

    def decoding(self, overrides: dict | None = None) -> GenerateConfig:
        """The run's `generate` settings with `overrides` (validated: a bad one raises)."""
        return GenerateConfig.model_validate({**self.config.generate.model_dump(), **(overrides or {})})

    def read(self, path: str | Path) -> list[Example]:
        """Read a data file with the run's column mapping and labels (or answer texts)."""
        data = self.config.data
        rows = read_rows(path, "auto" if data.format == "auto" else data.format, data.columns)
        label_col = data.label_column if all(data.label_column in r for _, r in rows) else None
        target_col = data.target_column if all(data.target_column in r for _, r in rows) else None
        generation = self.task == "generation"
        examples = to_examples(rows, data.text_column, data.text_pair_column,
                               None if generation else label_col, self.labels, str(path),
                               target_col if generation else None)
        cleaned, _ = clean(examples, data.clean.model_copy(update={"drop_duplicates": False}),
                           str(path))
        return group_refs(cleaned) if generation else cleaned

    def evaluate(self, path: str | Path, **overrides) -> dict:
        """Metrics on a labelled file. `overrides` change a generation run's decoding settings
        for this evaluation (no_repeat_ngram_size=3, strategy="beam", ...), so a setting is
        judged on the same metrics as the run's own eval.json."""
        if overrides and self.task != "generation":
            raise CuetuneError(f"{self.run_dir}: this run classifies; decoding settings "
                               f"({', '.join(sorted(overrides))}) apply to generation runs only")
        examples = self.read(path)
        if any(e.label is None and not e.refs for e in examples):
            data = self.config.data
            column = data.target_column if self.task == "generation" else data.label_column
            raise CuetuneError(f"{path}: no '{column}' column; evaluation needs it")
        objective = self.pipe.objective
        if overrides:
            objective = objective_for(self.task, self.config.prompt, self.decoding(overrides))
        items = self.pipe.encoder.encode(examples)
        return objective.evaluate(self.pipe, items, self.config.train.eval_batch_size)


def as_examples(texts, text_pairs) -> list[Example]:
    """Inputs given in code (strings, or Examples as they are), each checked as text."""
    if isinstance(texts, str):
        texts = [texts]
    pairs = text_pairs or [None] * len(texts)
    return [t if isinstance(t, Example) else
            Example(check_text(str(t), f"input {i}"),
                    None if p is None else check_text(str(p), f"text_pair {i}"))
            for i, (t, p) in enumerate(zip(texts, pairs, strict=True))]


def load_run(run_dir: str | Path, device: str | None = None, base: LoadedModel | None = None) -> TunedModel:
    """Load a run directory; refuses an adapter whose base weights differ from the loaded ones.

    `base`: a base model already loaded (by `models.load_model` or another run's `.pipe.loaded`)
    to load this run over instead of loading its own; runs of any methods share it side by side,
    since no method changes the base model."""
    run_dir = Path(run_dir)
    manifest = artifacts.read_manifest(run_dir)
    try:
        cfg = RunConfig.model_validate(manifest.config)
    except Exception as exc:  # pydantic errors: report as a damaged manifest
        raise ArtifactError(f"{run_dir / artifacts.MANIFEST}: config is invalid ({exc})") from None
    if device:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"device": device})})
    loaded = base if base is not None else load_for(cfg.model)
    artifacts.check_base(manifest, loaded.fingerprint, run_dir)
    pipe = build(cfg, manifest.labels, loaded=loaded)
    state = artifacts.read_adapter(run_dir, manifest)
    try:
        pipe.method.load_adapter_state(state)
    except (KeyError, ValueError) as exc:
        raise ArtifactError(f"{run_dir / artifacts.ADAPTER}: {exc}") from None
    return TunedModel(pipe, manifest, run_dir, cfg)

