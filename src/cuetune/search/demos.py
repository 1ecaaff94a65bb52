"""Demonstrations as a searched part of the prompt: the best prompt so far, with each of
`search.demos.options` (LM-BFF demonstrations chosen by similarity or at random, one or more
per class), scored on dev like any candidate. Dev inputs get demonstrations from the training
split; training examples never see themselves."""

from __future__ import annotations

from pydantic import ValidationError

from cuetune.config import DemoConfig
from cuetune.errors import ConfigError
from cuetune.search.candidates import Candidate
from cuetune.search.stage import Stage


def run(stage: Stage, best: Candidate) -> None:
    options = stage.settings.demos.options
    for i, option in enumerate(options):
        if "pool" in option:
            raise ConfigError(f"search.demos.options[{i}].pool: the run fills the pool from its "
                              "training split; remove it")
        try:
            DemoConfig.model_validate(option)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ConfigError(f"search.demos.options[{i}].{'.'.join(map(str, err['loc']))}: "
                              f"{err['msg']}") from None
    stage.plan(len(options))
    for option in options:
        stage.consider(best.with_demos(option), "demonstrations")
