"""Zero-shot baseline: the hard template and verbalizer on the frozen model, nothing trained.

It runs through the same evaluation and artifact path as trained methods, so a zero-shot run
directory predicts and evaluates like any other.
"""

from __future__ import annotations

from typing import Literal

from cuetune.config import MethodConfig
from cuetune.methods.method import Method
from cuetune.prompt.templates import Template


class ZeroShotConfig(MethodConfig):
    name: Literal["zero-shot"] = "zero-shot"


class ZeroShot(Method):
    config_class = ZeroShotConfig
    trains = False
    merge_refusal = "nothing was trained: the base model with the prompt is the model"

    @classmethod
    def adapt_template(cls, config, template: Template) -> Template:
        return template.without_soft()
