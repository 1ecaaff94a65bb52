"""Ensembles of finished runs: `cuetune ensemble RUN... --out DIR`.

Runs trained on the same split (same task, files, K and seeds; any methods, templates or base
models) are combined by the mean of their label log-probabilities, equally or weighted by
each run's best dev accuracy, then renormalised: p(y|x) ∝ exp(sum_i w_i log p_i(y|x)). The
folder holds `ensemble.json` (members, the adapter SHA-256 each was built from, weights) and
`eval.json`; `cuetune.load`, `cuetune predict` and `cuetune eval` accept it like a run. Members
on the same base weights share one loaded base model (adapters sit beside it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from cuetune import atomic
from cuetune.data.splits import load_splits
from cuetune.errors import ArtifactError, ConfigError
from cuetune.metrics.classification import classification_metrics
from cuetune.runs import artifacts
from cuetune.runs.tuned import as_examples, load_run

ENSEMBLE = "ensemble.json"
WEIGHTINGS = ("mean", "dev")
SPLIT_FREE = {"max_length", "max_target_length"}
"""data.* keys that change how inputs are encoded, not which examples a run saw."""


def check_same_split(manifests: list, paths: list[Path]) -> None:
    """Refuse members that were not trained and scored on the same examples, naming the key."""
    first = manifests[0]
    for manifest, path in zip(manifests[1:], paths[1:], strict=True):
        if manifest.task != "classification" or first.task != "classification":
            raise ConfigError(f"{path}: an ensemble combines classifiers; this run's task is {manifest.task}")
        if manifest.labels != first.labels:
            raise ConfigError(f"{path}: labels {manifest.labels} differ from {paths[0]}'s {first.labels}")
        a, b = first.config["data"], manifest.config["data"]
        for key in sorted((set(a) | set(b)) - SPLIT_FREE):
            if a.get(key) != b.get(key):
                raise ConfigError(f"{path}: data.{key} is {b.get(key)!r} but {paths[0]} has {a.get(key)!r}; "
                                  "ensemble members must share the split (task, files, K and seeds)")


def build(run_dirs: list[str | Path], out_dir: str | Path, weighting: str = "mean") -> dict:
    """Write the ensemble folder (which must not exist) and return its eval metrics."""
    if weighting not in WEIGHTINGS:
        raise ConfigError(f"--weighting {weighting}: choose one of {list(WEIGHTINGS)}")
    out = Path(out_dir)
    if out.exists():
        raise ArtifactError(f"{out}: already exists; choose a new folder for the ensemble")
    if len(run_dirs) < 2:
        raise ConfigError("an ensemble needs at least two runs")
    paths = [Path(p).resolve() for p in run_dirs]
    members = _load_members(paths)
    manifests = [m.manifest for m in members]
    check_same_split(manifests, paths)
    weights = _weights(manifests, paths, weighting)
    spec = {"format": "cuetune-ensemble", "version": 1, "weighting": weighting, "labels": manifests[0].labels,
            "members": [{"run_dir": str(p), "method": m.method_name, "adapter_sha256": m.adapter_sha256,
                         "weight": w} for p, m, w in zip(paths, manifests, weights, strict=True)]}
    model = Ensemble(members, weights, spec)
    splits = load_splits(members[0].config.data)
    metrics = {name: model.score(getattr(splits, name)) for name in ("dev", "test") if getattr(splits, name)}
    out.mkdir(parents=True)
    atomic.write_json(out / "eval.json", metrics)
    atomic.write_json(out / ENSEMBLE, {**spec, "metrics": metrics})  # last: marks the folder complete
    return metrics


def _weights(manifests, paths, weighting: str) -> list[float]:
    if weighting == "mean":
        return [1 / len(manifests)] * len(manifests)
    dev = [(m.metrics.get("dev_best") or m.metrics.get("dev") or {}).get("accuracy") for m in manifests]
    missing = [str(p) for p, d in zip(paths, dev, strict=True) if d is None]
    if missing:
        raise ConfigError(f"--weighting dev: {missing} have no dev accuracy; use --weighting mean")
    if not sum(dev):
        raise ConfigError("--weighting dev: every member scored 0 on dev; use --weighting mean")
    return [d / sum(dev) for d in dev]


def _load_members(paths: list[Path], device: str | None = None) -> list:
    """The runs, each over a shared base model when their base weights are the same."""
    members, bases = [], {}
    for path in paths:
        manifest = artifacts.read_manifest(path)
        key = (manifest.base_model.name, manifest.base_model.fingerprint)
        member = load_run(path, device, base=bases.get(key))
        bases.setdefault(key, member.pipe.loaded)
        members.append(member)
    return members


class Ensemble:
    """Finished runs combined by weighted mean log-probability; predicts and evaluates like
    `TunedModel`."""

    task = "classification"

    def __init__(self, members: list, weights: list[float], spec: dict):
        self.members, self.weights, self.spec = members, weights, spec

    @property
    def labels(self) -> list[str]:
        return self.spec["labels"]

    def probs(self, examples, batch_size: int = 32) -> torch.Tensor:
        """[N, L]: each member encodes the examples with its own prompt."""
        logp = 0.0
        for member, weight in zip(self.members, self.weights, strict=True):
            probs = member.pipe.label_probs(member.pipe.encoder.encode(examples, "inputs"), batch_size)
            logp = logp + weight * probs.clamp_min(1e-30).log()  # [N, L]
        return logp.softmax(-1)

    def predict(self, texts, text_pairs=None, batch_size: int = 32) -> list[dict]:
        probs = self.probs(as_examples(texts, text_pairs), batch_size)
        return [{"label": self.labels[int(row.argmax())],
                 "probs": {lab: round(float(p), 6) for lab, p in zip(self.labels, row, strict=True)}}
                for row in probs]

    def read(self, path: str | Path):
        return self.members[0].read(path)

    def score(self, examples) -> dict:
        return classification_metrics(self.labels, [e.label for e in examples], self.probs(examples))

    def evaluate(self, path: str | Path, **overrides) -> dict:
        if overrides:  # `cuetune eval --set`: decoding settings, and an ensemble classifies
            raise ConfigError(f"ensemble of {len(self.members)} runs: it classifies; decoding settings "
                              f"({', '.join(sorted(overrides))}) apply to generation runs only")
        examples = self.read(path)
        if any(e.label is None for e in examples):
            raise ConfigError(f"{path}: no label column; evaluation needs it")
        return self.score(examples)


def load_ensemble(folder: str | Path, device: str | None = None) -> Ensemble:
    """An ensemble folder; refuses members whose adapter changed since it was built."""
    path = Path(folder) / ENSEMBLE
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        runs = [Path(m["run_dir"]) for m in spec["members"]]
        weights = [float(m["weight"]) for m in spec["members"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path}: not a readable cuetune ensemble ({exc})") from None
    members = _load_members(runs, device)
    for member, entry in zip(members, spec["members"], strict=True):
        if member.manifest.adapter_sha256 != entry["adapter_sha256"]:
            raise ArtifactError(f"{path}: member {entry['run_dir']} was retrained or changed since the "
                                "ensemble was built (adapter SHA-256 differs); build the ensemble again")
    if not math.isclose(sum(weights), 1.0, abs_tol=1e-6):
        raise ArtifactError(f"{path}: member weights sum to {sum(weights)}, not 1; the file was edited")
    return Ensemble(members, weights, spec)
