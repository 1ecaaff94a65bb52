"""Prompt search: templates, label words, calibration and demonstrations chosen on train and
dev (`cuetune search`); the runner, its stages and scorer, and one module per searcher."""

from cuetune.search.runner import load_config, register, run

__all__ = ["load_config", "register", "run"]
