"""cuetune: prompt-based, parameter-efficient fine-tuning of pretrained language models."""

from pathlib import Path

from cuetune import ensemble
from cuetune._version import __version__
from cuetune.api import load as load_run
from cuetune.api import train


def load(path, device: str | None = None, base=None):
    """A finished run (`TunedModel`) or an ensemble folder (`ensemble.Ensemble`); both predict
    and evaluate. `base`: an already loaded base model to put a run over (runs only)."""
    if (Path(path) / ensemble.ENSEMBLE).is_file():
        if base is not None:
            raise TypeError("base= applies to a single run; an ensemble loads its members' bases")
        return ensemble.load(path, device)
    return load_run(path, device, base)


__all__ = ["__version__", "load", "train"]
