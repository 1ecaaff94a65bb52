"""cuetune: prompt-based, parameter-efficient fine-tuning of pretrained language models."""

__version__ = "0.1.0"

from cuetune.api import load, train  # noqa: E402

__all__ = ["__version__", "load", "train"]
