"""Text augmentation for few-shot training: extra noisy copies of each training example.

With 16 examples per class a model can memorise the training set within a few steps; noisy
copies make memorising harder. Kinds (word level, seeded, labels unchanged):

- `token_dropout`: each word is dropped with probability p (at least one word stays);
- `swap`: round(p * words) random pairs of neighbouring words are swapped (at least one).

Whether either helps is measured, not assumed: see docs/RESULTS.md (the guards study).
"""

from __future__ import annotations

import random
from dataclasses import replace

from cuetune.config import AugmentConfig
from cuetune.data.examples import Example


def _token_dropout(words: list[str], p: float, rng: random.Random) -> list[str]:
    kept = [w for w in words if rng.random() >= p]
    return kept or [rng.choice(words)]


def _swap(words: list[str], p: float, rng: random.Random) -> list[str]:
    words = list(words)
    for _ in range(max(1, round(p * len(words)))):
        if len(words) < 2:
            break
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    return words


KINDS = {"token_dropout": _token_dropout, "swap": _swap}


def augment(examples: list[Example], cfg: AugmentConfig, seed: int) -> list[Example]:
    """The examples followed by `cfg.copies` noisy copies of each (none for kind `none`)."""
    if cfg.kind == "none":
        return list(examples)
    noise, rng = KINDS[cfg.kind], random.Random(seed)

    def noisy(text: str | None) -> str | None:
        return " ".join(noise(text.split(), cfg.p, rng)) if text and text.split() else text

    copies = [replace(ex, text=noisy(ex.text), text_pair=noisy(ex.text_pair))
              for _ in range(cfg.copies) for ex in examples]
    return list(examples) + copies
