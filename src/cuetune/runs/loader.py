"""`cuetune.load`: a finished run folder or an ensemble folder, whichever the path holds."""

from __future__ import annotations

from pathlib import Path

from cuetune.families.pretrained import LoadedModel
from cuetune.runs.ensemble import ENSEMBLE, Ensemble, load_ensemble
from cuetune.runs.tuned import TunedModel, load_run


def load(path: str | Path, device: str | None = None,
         base: LoadedModel | None = None) -> TunedModel | Ensemble:
    """A finished run (`TunedModel`) or an ensemble folder (`Ensemble`); both predict and
    evaluate. `base`: an already loaded base model to put a run over (runs only)."""
    if (Path(path) / ENSEMBLE).is_file():
        if base is not None:
            raise TypeError("base= applies to a single run; an ensemble loads its members' bases")
        return load_ensemble(path, device)
    return load_run(path, device, base)
