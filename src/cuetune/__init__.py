"""cuetune: prompt-based, parameter-efficient fine-tuning of pretrained language models."""

from cuetune._version import __version__
from cuetune.runs.config_file import load as load_config
from cuetune.runs.loader import load
from cuetune.runs.train import train

__all__ = ["__version__", "load", "load_config", "train"]
