"""Prompt methods, one module each, registered by name with `register`.

A method is a `Method` subclass with its own config section (a `MethodConfig` subclass) and
the hooks in `methods.method`; nothing outside this package names a method.
"""

from __future__ import annotations

from cuetune.config import METHOD_CONFIGS, MethodConfig, TrainConfig
from cuetune.errors import ConfigError, did_you_mean
from cuetune.methods.full import Full, Head, PromptFinetune
from cuetune.methods.in_context import InContext
from cuetune.methods.lora import Lora
from cuetune.methods.method import Method
from cuetune.methods.mixture import Mixture
from cuetune.methods.prefix import Prefix
from cuetune.methods.ptuning import PTuning
from cuetune.methods.soft import SoftPrompt
from cuetune.methods.two_stage import TwoStage
from cuetune.methods.zero_shot import ZeroShot
from cuetune.prompt.templates import parse

REGISTRY: dict[str, type[Method]] = {}


def register(method_cls: type[Method]) -> type[Method]:
    """Make a method available as `method.name: <its config's name>`."""
    name = method_cls.config_class.model_fields["name"].default
    REGISTRY[name] = method_cls
    METHOD_CONFIGS[name] = method_cls.config_class
    return method_cls


def get_method(name: str) -> type[Method]:
    if name not in REGISTRY:
        raise ConfigError(f"method.name: unknown method {name!r};"
                          f"{did_you_mean(name, REGISTRY) or ''} known: {sorted(REGISTRY)}")
    return REGISTRY[name]


def check_settings(method: MethodConfig, template: str, train: TrainConfig) -> None:
    """Refuse a new run that sets a key its method would ignore, naming the key and why:
    a setting without an effect is a silent misconfiguration (a user asking for 10 soft tokens
    whose template says {soft:20} trains 20). `template`: `prompt.template` as written."""
    unused = get_method(method.name).unused_settings(method, parse(template))
    sections = {"method": method, "train": train}
    given = {f"{name}.{k}" for name, section in sections.items()  # an explicit null is unset
             for k in section.model_fields_set if getattr(section, k) is not None}
    wrong = [f"{key}: has no effect with method {method.name} ({why}); remove it"
             for key, why in unused.items() if key in given]
    if wrong:
        raise ConfigError("; ".join(wrong))


for _cls in (SoftPrompt, Prefix, PTuning, Lora, PromptFinetune, Full, Head, TwoStage, ZeroShot, InContext,
             Mixture):
    register(_cls)

__all__ = ["REGISTRY", "Method", "check_settings", "get_method", "register"]
