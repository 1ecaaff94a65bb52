"""In-context learning baseline (Brown et al. 2020; LM-BFF's demonstrations): k training
examples per class, rendered with the template and their label word, put before each input.
Nothing is trained.

The demonstrations are sampled once per run from the training split, and put in a random
order, with `method.seed` (by default the run's `train.seed`), and stored in the method
config, so the saved run reloads with exactly the same prompt. The order matters as much as
the choice (a small model can answer with the first demonstration's label; docs/RESULTS.md,
Chinese reviews), so seeds vary it, not only the examples.

They must fit `data.max_length` beside the input. The input is given the room that
`fit_inputs` of the training inputs need (a quantile of their token lengths, 0.9 by default:
nine in ten fit whole, longer ones are cut as any over-long input is); the demonstrations
share the rest evenly, each drawn only from training examples short enough for its share.
Drawing short examples rather than cutting long ones keeps every demonstration whole and
every class represented; on long-input tasks (RTE) it biases demonstrations towards short
examples, which is the price of a fixed context.
"""

from __future__ import annotations

import math
import random
from typing import Literal

from pydantic import Field

from cuetune.config import MethodConfig
from cuetune.errors import ConfigError
from cuetune.methods.method import Method, MethodContext
from cuetune.prompt.encoder import PromptEncoder
from cuetune.prompt.templates import Template, Text
from cuetune.prompt.verbalizers import Verbalizer


class InContextConfig(MethodConfig):
    name: Literal["in-context"] = "in-context"
    per_class: int = Field(1, ge=1, le=64)
    seed: int | None = None
    """Draws the demonstrations and their order; None: the run's `train.seed`."""
    separator: str = "\n"
    fit_inputs: float = Field(0.9, gt=0.0, le=1.0)
    """The share of training inputs that must fit whole beside the demonstrations."""
    demonstrations: str | None = None
    """Filled from the training data when the run starts; set it to fix your own."""


class InContext(Method):
    config_class = InContextConfig
    generates = False
    trains = False
    merge_refusal = "nothing was trained: its demonstrations are prompt text, not weights"
    demonstrations_refusal = "puts its own demonstrations (method.per_class)"

    @classmethod
    def prepare_config(cls, config: InContextConfig, context: MethodContext) -> InContextConfig:
        cfg, splits = config, context.splits
        if cfg.demonstrations is not None or not splits.labels:
            return cfg  # no labels: generation data, which build() refuses with the reason
        max_length, template = context.max_length, context.template

        def encoder(demos: list[str]) -> PromptEncoder:
            filled = cfg.model_copy(update={"demonstrations": cfg.separator.join(demos)})
            return context.make_encoder(cls.adapt_template(filled, template))

        plain = encoder([])
        room = _quantile([plain.input_length(e) for e in splits.train], cfg.fit_inputs)
        share = (max_length - plain.fixed_length - room) // (cfg.per_class * len(splits.labels))
        why = (f"{max(share, 0)} tokens each: data.max_length={max_length} less {plain.fixed_length} "
               f"for the template and {room} for the input, which {cfg.fit_inputs:g} of training "
               "inputs fit")
        words = Verbalizer(splits.labels, context.verbalizer).words
        pools = _pools(cfg, splits, template, words, context.loaded.tokenizer, share, why)
        rng = random.Random(context.seed if cfg.seed is None else cfg.seed)
        demos = [d for pool in pools for d in rng.sample(pool, min(cfg.per_class, len(pool)))]
        rng.shuffle(demos)
        while demos and encoder(demos).fixed_length + room > max_length:
            demos.remove(max(demos, key=len))  # tokens merge across joins: rarely one too many
        return cfg.model_copy(update={"demonstrations": cfg.separator.join(demos)})

    @classmethod
    def adapt_template(cls, config: InContextConfig, template: Template) -> Template:
        hard = template.without_soft()
        if not config.demonstrations:
            return hard
        return Template(hard.source, (Text(config.demonstrations + config.separator), *hard.segments))


def _quantile(values: list[int], q: float) -> int:
    """The smallest value that at least a share `q` of `values` do not exceed (0 if none)."""
    if not values:
        return 0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _pools(cfg: InContextConfig, splits, template: Template, words: dict[str, list[str]], tokenizer,
           share: int, why: str) -> list[list[str]]:
    """Per label, the training examples rendered as demonstrations that fit `share` tokens."""
    pools: list[list[str]] = [[] for _ in splits.labels]
    present = {ex.label for ex in splits.train}  # a class with no training example gets no demo
    for ex in splits.train:
        demo = template.render(ex, words[splits.labels[ex.label]][0])
        if len(tokenizer(demo + cfg.separator, add_special_tokens=False)["input_ids"]) <= share:
            pools[ex.label].append(demo)
    for index, (label, pool) in enumerate(zip(splits.labels, pools, strict=True)):
        if not pool and index in present:
            raise ConfigError(
                f"method.per_class={cfg.per_class}: no training example of label {label!r} fits "
                f"as a demonstration ({why}); raise data.max_length, or lower method.per_class "
                "or method.fit_inputs")
    return pools
