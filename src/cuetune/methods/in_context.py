"""In-context learning baseline (Brown et al. 2020; LM-BFF's demonstrations): k training
examples per class, rendered with the template and their label word, put before each input.
Nothing is trained.

The demonstrations are sampled once per run from the training split with `method.seed` and
stored in the method config, so the saved run reloads with exactly the same prompt.
"""

from __future__ import annotations

import random
from typing import Literal

from pydantic import Field

from cuetune.config import MethodConfig
from cuetune.methods.base import Method
from cuetune.templates import Literal as Text
from cuetune.templates import Slot, Template, parse
from cuetune.verbalizers import Verbalizer


class InContextConfig(MethodConfig):
    name: Literal["in-context"] = "in-context"
    per_class: int = Field(1, ge=1, le=64)
    seed: int = 0
    separator: str = "\n"
    demonstrations: str | None = None
    """Filled from the training data when the run starts; set it to fix your own."""


def render(template: Template, example, word: str) -> str:
    """The template filled with an example and its answer word (soft slots dropped)."""
    parts = []
    for seg in template.without_soft().segments:
        if isinstance(seg, Text):
            parts.append(seg.text)
        elif isinstance(seg, Slot) and seg.name == "answer":
            parts.append(word)
        elif isinstance(seg, Slot):
            parts.append(getattr(example, seg.name) or "")
    return "".join(parts).strip()


class InContext(Method):
    config_class = InContextConfig
    generates = False
    trains = False

    @classmethod
    def prepare_config(cls, run_config, splits) -> InContextConfig:
        cfg: InContextConfig = run_config.method
        if cfg.demonstrations is not None:
            return cfg
        words = Verbalizer(splits.labels, run_config.prompt.verbalizer).words
        template = parse(run_config.prompt.template)
        rng = random.Random(cfg.seed)
        demos = []
        for label_index, label in enumerate(splits.labels):
            pool = [e for e in splits.train if e.label == label_index]
            demos += [render(template, e, words[label][0])
                      for e in rng.sample(pool, min(cfg.per_class, len(pool)))]
        rng.shuffle(demos)
        return cfg.model_copy(update={"demonstrations": cfg.separator.join(demos)})

    @classmethod
    def adapt_template(cls, config: InContextConfig, template: Template) -> Template:
        hard = template.without_soft()
        if not config.demonstrations:
            return hard
        return Template(hard.source, (Text(config.demonstrations + config.separator), *hard.segments))
