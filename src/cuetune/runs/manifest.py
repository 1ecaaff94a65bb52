"""The run manifest (`cuetune.json`) as a typed, versioned record.

Everything that reads a finished run (loading, the bench, the CLI, PEFT export) reads these
fields, never string keys of a dict, so a field a run does not have (a generation run has no
accuracy) is an explicit None rather than a KeyError three modules away.

Version 2 adds the learning rate and step count of each training phase. Version 1 manifests
(cuetune 0.1 runs) are migrated when read: the same fields, no phases; keys that version 2 no
longer knows are dropped with a warning that names them.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cuetune._version import __version__

log = logging.getLogger(__name__)

FORMAT_VERSION = 2


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BaseModelRef(_Record):
    name: str
    fingerprint: str
    """`models.fingerprint` of the weights the adapter was trained on; loading checks it."""
    family: str


class PhaseRecord(_Record):
    """One stretch of training as it ran: the learning rate used and the steps it had."""

    name: str
    lr: float
    steps: int


class TrainingRecord(_Record):
    steps: int
    best_step: int | None = None
    stopped_early: bool = False
    seconds: float = 0.0
    skipped_steps: int = 0
    resumed_from: int | None = None
    phases: list[PhaseRecord] = Field(default_factory=list)
    """Empty in runs written before version 2."""


class ImportRecord(_Record):
    peft_dir: str
    peft_type: str


class Manifest(_Record):
    format_version: Literal[2] = FORMAT_VERSION
    cuetune_version: str = __version__
    base_model: BaseModelRef
    method: dict[str, Any]
    """The method's config section as the run used it."""
    template: str
    task: Literal["classification", "generation"] = "classification"
    verbalizer: dict[str, Any] | None = None
    labels: list[str]
    trainable_parameters: int
    adapter_sha256: str
    adapter_bytes: int
    data: dict[str, Any] = Field(default_factory=dict)
    """What was read: files, sizes per split, rows dropped by cleaning."""
    training: TrainingRecord | None = None
    """None for baselines that train nothing (zero-shot, in-context) and imported adapters."""
    metrics: dict[str, Any] = Field(default_factory=dict)
    """Per split (`dev`, `test`, `dev_best`, `zero_shot_test`): the task's metrics."""
    config: dict[str, Any]
    imported_from: ImportRecord | None = None
    wall_seconds: float | None = None
    """Set by the bench: the run's wall-clock time."""
    test_seconds: float | None = None
    """Set by `api.score_test`: the time scoring test took."""
    adapter_removed: str | None = None
    """Set when the bench deleted a full-weight adapter after scoring it."""
    run_dir: str | None = Field(None, exclude=True)
    """Where the run was read from or written to (not stored in the file)."""

    @property
    def method_name(self) -> str:
        return self.method["name"]

    def score(self, split: str, metric: str) -> float | None:
        """A metric of a split, or None where the run has no such number."""
        value = (self.metrics.get(split) or {}).get(metric)
        return value if isinstance(value, int | float) else None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def parse(raw: object, source: str) -> Manifest:
    """A manifest from its JSON content; `source` names the file in errors.

    Raises ValueError with a one-line message naming the field."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: not a JSON object")
    version = raw.get("format_version", 1)
    if version == 1:
        raw = _from_v1(raw, source)
    elif version != FORMAT_VERSION:
        raise ValueError(f"{source}: format_version {version!r} is not one this cuetune "
                         f"({__version__}) reads; it reads 1 and {FORMAT_VERSION}")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        missing = err["type"] == "missing"
        raise ValueError(f"{source}: field '{where}' "
                         f"{'missing' if missing else err['msg'].lower()}; the manifest is damaged") from None


def _from_v1(raw: dict, source: str) -> dict:
    known = set(Manifest.model_fields) - {"run_dir"}
    dropped = sorted(set(raw) - known)
    if dropped:
        log.warning("%s: version-1 keys %s are not part of the manifest any more; ignored",
                    source, dropped)
    return {**{k: v for k, v in raw.items() if k in known}, "format_version": FORMAT_VERSION}
