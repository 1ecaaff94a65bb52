"""Run directories: the adapter file, the manifest, and loading them back.

A run directory holds `adapter.safetensors` (only the trained parameters), `cuetune.json` (the
manifest: base model and its weight fingerprint, template, verbalizer, labels, method config,
metrics, package version, SHA-256 of the adapter), `metrics.jsonl`, and plots. The manifest is
written last, so a directory without one is an unfinished run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from cuetune import atomic
from cuetune.errors import ArtifactError
from cuetune.runs.manifest import Manifest, parse

MANIFEST = "cuetune.json"
ADAPTER = "adapter.safetensors"


def save_adapter(run_dir: Path, state: dict[str, torch.Tensor]) -> str:
    """Write the adapter atomically; return its SHA-256."""
    # One metadata key only: safetensors writes metadata in hash-map order, so two keys would
    # make identical adapters differ byte for byte (the version is in the manifest).
    data = save({k: v.detach().contiguous().cpu() for k, v in state.items()},
                metadata={"format": "cuetune"})
    atomic.write_bytes(run_dir / ADAPTER, data)
    return hashlib.sha256(data).hexdigest()


def write_manifest(run_dir: Path, manifest: Manifest) -> None:
    atomic.write_json(run_dir / MANIFEST, manifest.to_json())


def update_manifest(run_dir: str | Path, **changes) -> Manifest:
    """Set fields of a finished run's manifest (rewritten atomically, checked as a whole; the
    cuetune version stays that of the run that wrote it). Returns the new manifest."""
    manifest = read_manifest(run_dir)
    updated = Manifest.model_validate({**manifest.to_json(), **changes})
    write_manifest(Path(run_dir), updated)
    return updated.model_copy(update={"run_dir": manifest.run_dir})


def read_manifest(run_dir: str | Path) -> Manifest:
    path = Path(run_dir) / MANIFEST
    if not Path(run_dir).is_dir():
        raise ArtifactError(f"{run_dir}: run directory not found")
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; {run_dir} is not a finished cuetune run "
                            "(training may have stopped early)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        manifest = parse(raw, str(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None
    except ValueError as exc:
        raise ArtifactError(str(exc)) from None
    return manifest.model_copy(update={"run_dir": str(run_dir)})


def read_adapter(run_dir: str | Path, manifest: Manifest) -> dict[str, torch.Tensor]:
    path = Path(run_dir) / ADAPTER
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; the run directory is incomplete")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.adapter_sha256:
        raise ArtifactError(f"{path}: SHA-256 {digest[:12]}... does not match the manifest's "
                            f"{manifest.adapter_sha256[:12]}...; the file was changed or damaged")
    try:
        return load(data)
    except SafetensorError as exc:
        raise ArtifactError(f"{path}: not a valid safetensors file ({exc})") from None


def check_base(manifest: Manifest, fingerprint: str, run_dir) -> None:
    """Refuse an adapter trained on other base weights."""
    want = manifest.base_model.fingerprint
    if want != fingerprint:
        raise ArtifactError(
            f"{Path(run_dir) / MANIFEST}: adapter was trained on base model "
            f"'{manifest.base_model.name}' (weights {want}), but the loaded weights are "
            f"{fingerprint}; load it on the same base model")
