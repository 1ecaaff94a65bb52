"""Model families, one module each, registered by name with `register`.

Adding a family is one module with a `Family` subclass (where the answer is, its special
tokens, its decoding state, what it supports) and one `register(...)` call below; the contract
suite then asks for a tiny model of it (tests/test_contract.py).
"""

from __future__ import annotations

from cuetune.errors import ModelError
from cuetune.families.causal import Causal
from cuetune.families.family import Family
from cuetune.families.masked import Masked
from cuetune.families.seq2seq import Seq2Seq

REGISTRY: dict[str, type[Family]] = {}


def register(family_cls: type[Family]) -> type[Family]:
    REGISTRY[family_cls.name] = family_cls
    return family_cls


def get(name: str) -> Family:
    """A fresh family object by name (its `setup` still reads a tokenizer's special tokens)."""
    if name not in REGISTRY:
        raise ModelError(f"unknown model family {name!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[name]()


def family_for(config, hint: str | None = None) -> Family:
    """The family of a transformers config (or the one `hint` names): the first registered
    family that claims it, the fallback (causal) last."""
    if hint is not None:
        return get(hint)
    for cls in sorted(REGISTRY.values(), key=lambda c: c.fallback):
        if cls.detect(config):
            return cls()
    raise ModelError(f"no model family claims model type {config.model_type!r}")


for _cls in (Causal, Masked, Seq2Seq):
    register(_cls)

__all__ = ["Family", "REGISTRY", "family_for", "get", "register"]
