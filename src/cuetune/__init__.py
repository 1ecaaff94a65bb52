"""cuetune: prompt-based, parameter-efficient fine-tuning of pretrained language models."""

from cuetune._version import __version__
from cuetune.api import load, train

__all__ = ["__version__", "load", "train"]
