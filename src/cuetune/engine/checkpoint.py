"""Training checkpoints: everything needed to continue a run bit for bit, in one file.

`checkpoint.safetensors` in the run directory holds the method's adapter tensors, the best
adapter so far, the optimizer's tensors and the RNG state, plus a single metadata entry with
the rest as JSON (step, phase, data position, scheduler, best score, counters). It is written
atomically, so a kill at any moment leaves the previous checkpoint whole. No pickle anywhere:
safetensors and JSON only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from cuetune import atomic
from cuetune.errors import ArtifactError

CHECKPOINT = "checkpoint.safetensors"
_META = "cuetune_checkpoint"


@dataclass
class Checkpoint:
    state: dict
    """step, phase, order (epoch, index), best score/step/dev, bad, seen, skipped."""
    adapter: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor] | None
    optimizer: dict
    scheduler: dict
    rng: dict[str, torch.Tensor] = field(default_factory=dict)


def save_checkpoint(run_dir: Path, ckpt: Checkpoint) -> None:
    tensors = {f"adapter.{k}": v for k, v in ckpt.adapter.items()}
    tensors.update({f"best.{k}": v for k, v in (ckpt.best or {}).items()})
    for idx, entry in ckpt.optimizer["state"].items():
        for key, value in entry.items():
            tensors[f"opt.{idx}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors.update({f"rng.{k}": v for k, v in ckpt.rng.items()})
    meta = {"state": ckpt.state, "param_groups": ckpt.optimizer["param_groups"],
            "scheduler": ckpt.scheduler, "has_best": ckpt.best is not None}
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                metadata={_META: json.dumps(meta)})  # one key: the bytes are deterministic
    atomic.write_bytes(Path(run_dir) / CHECKPOINT, data)


def load_checkpoint(run_dir: Path) -> Checkpoint | None:
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None
    data = path.read_bytes()
    try:
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(json.loads(data[8:8 + header_len])["__metadata__"][_META])
    except (SafetensorError, KeyError, ValueError) as exc:
        raise ArtifactError(f"{path}: damaged checkpoint ({exc}); delete it to restart the run") from None
    groups = {"adapter": {}, "best": {}, "rng": {}}
    opt_state: dict[int, dict] = {}
    for key, value in tensors.items():
        kind, _, rest = key.partition(".")
        if kind == "opt":
            idx, _, name = rest.partition(".")
            opt_state.setdefault(int(idx), {})[name] = value
        else:
            groups[kind][rest] = value
    return Checkpoint(meta["state"], groups["adapter"], groups["best"] if meta["has_best"] else None,
                      {"state": opt_state, "param_groups": meta["param_groups"]}, meta["scheduler"],
                      groups["rng"])


def rng_state() -> dict[str, torch.Tensor]:
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
