"""Prompt methods, one module each, registered by name with `register`."""

from __future__ import annotations

from cuetune.errors import ConfigError, did_you_mean

REGISTRY: dict[str, type] = {}


def register(method_cls: type) -> type:
    """Make a method available as `method.name: <its config's name>`."""
    REGISTRY[method_cls.config_class.model_fields["name"].default] = method_cls
    return method_cls


def get(name: str) -> type:
    if name not in REGISTRY:
        raise ConfigError(f"method.name: unknown method {name!r};"
                          f"{did_you_mean(name, REGISTRY) or ''} known: {sorted(REGISTRY)}")
    return REGISTRY[name]


def config_class(name: str) -> type:
    return get(name).config_class


def _register_builtin() -> None:
    from cuetune.methods.full import Full, Head, PromptFinetune
    from cuetune.methods.in_context import InContext
    from cuetune.methods.lora import Lora
    from cuetune.methods.prefix import Prefix
    from cuetune.methods.ptuning import PTuning
    from cuetune.methods.soft import SoftPrompt
    from cuetune.methods.two_stage import TwoStage
    from cuetune.methods.zero_shot import ZeroShot

    for cls in (SoftPrompt, Prefix, PTuning, Lora, PromptFinetune, Full, Head, TwoStage,
                ZeroShot, InContext):
        register(cls)


_register_builtin()
