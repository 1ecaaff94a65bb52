"""The adapters a server holds: finished runs loaded over one shared base model.

Each run loads as `cuetune.load` loads it (manifest SHA-256 of the adapter file, base model
fingerprint), over the base the first run loaded, so a run made on another base is refused
with the reason. Full-weight runs are refused: their "adapter" is a second copy of every
weight, which defeats one frozen model for all tasks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from cuetune.errors import ArtifactError, CuetuneError
from cuetune.runs.tuned import TunedModel, load_run
from cuetune.serve.mixed import can_mix

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


class UnknownAdapter(CuetuneError):
    """No adapter by that name (HTTP 404)."""


@dataclass
class Adapter:
    name: str
    run_dir: Path
    tuned: TunedModel
    mixable: bool
    """Whether its rows share forwards with other adapters' rows (`mixed.can_mix`)."""
    content_free: torch.Tensor | None
    """The calibration distribution, computed once at load for runs that calibrate."""

    @property
    def pipe(self):
        return self.tuned.pipe

    @property
    def task(self) -> str:
        return self.tuned.task

    @property
    def method(self) -> str:
        return self.tuned.config.method.name

    @property
    def chat(self) -> bool:
        return self.tuned.config.prompt.chat

    @property
    def max_input_tokens(self) -> int:
        return self.tuned.config.data.max_length

    def describe(self) -> dict:
        return {"id": self.name, "object": "model", "owned_by": "cuetune", "task": self.task,
                "method": self.method, "labels": self.tuned.labels, "chat": self.chat,
                "run_dir": str(self.run_dir)}


class Registry:
    """Name -> adapter, over one base model loaded with the first run."""

    def __init__(self, device: str | None = None, root: str | Path | None = None):
        self.device = device
        self.root = Path(root).resolve() if root is not None else None
        self.base = None
        self.adapters: dict[str, Adapter] = {}

    def get(self, name: str) -> Adapter:
        if name not in self.adapters:
            known = ", ".join(sorted(self.adapters)) or "none"
            raise UnknownAdapter(f"model {name!r}: no such adapter (loaded: {known})")
        return self.adapters[name]

    def names(self) -> list[str]:
        return sorted(self.adapters)

    def within_root(self, path: str) -> Path:
        """A client-named run folder, resolved under `--adapter-root` (nothing outside it)."""
        if self.root is None:
            raise ArtifactError("loading adapters at run time is off; start the server with "
                                "--adapter-root DIR to allow run folders under DIR")
        full = (self.root / path).resolve()
        if not full.is_relative_to(self.root):
            raise ArtifactError(f"path {path!r}: outside the adapter root; give a run folder "
                                f"under {self.root}")
        return full

    def add(self, run_dir: str | Path, name: str | None = None) -> Adapter:
        """Load a run (checked in full before it is registered; a failure leaves nothing)."""
        run_dir = Path(run_dir)
        name = name or run_dir.resolve().name
        if not NAME.match(name):
            raise ArtifactError(f"adapter name {name!r}: use letters, digits and . _ : - "
                                "(at most 64 characters)")
        if name in self.adapters:
            raise ArtifactError(f"adapter name {name!r}: already loaded (from "
                                f"{self.adapters[name].run_dir}); unload it first or pick another name")
        tuned = load_run(run_dir, self.device, base=self.base)
        if not tuned.pipe.method.freezes_base:
            raise ArtifactError(f"{run_dir}: a {tuned.config.method.name} run holds its own copy of "
                                "every model weight, so it cannot share the server's frozen base; "
                                "serve a soft, prefix, p-tuning or LoRA run, or `cuetune merge` this "
                                "one and serve the merged model on its own")
        content_free = None
        if tuned.pipe.verbalizer is not None and tuned.pipe.calibrate:
            content_free = tuned.pipe.content_free_probs()
        adapter = Adapter(name, run_dir, tuned, can_mix(tuned.pipe), content_free)
        if self.base is None:
            self.base = tuned.pipe.loaded
        self.adapters[name] = adapter
        return adapter

    def remove(self, name: str) -> Adapter:
        """Unregister an adapter: new requests get 404, rows already queued finish."""
        adapter = self.get(name)
        del self.adapters[name]
        return adapter
