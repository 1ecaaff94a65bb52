"""Demonstrations (LM-BFF, Gao et al. 2021, section 6): labelled training examples put in
context before each input, for every method, in training and in prediction.

Per input and per class, `per_class` examples of that class come from the pool (the run's
training examples, saved in its config): by sentence-embedding similarity to the input
(`similar`, LM-BFF's filtering: the nearest ones, by cosine of mean-pooled MiniLM embeddings)
or drawn at random with a seed and the input's text (`random`: the same input always gets the
same ones). A training example is never its own demonstration. Each is rendered with the hard
template and its label's first word; the least similar come first, so the nearest sits next to
the input. When demonstrations and input do not fit `data.max_length`, demonstrations are
dropped (least similar first) before any input token is cut; the encoder counts such inputs.
"""

from __future__ import annotations

import hashlib
import random

import torch
from transformers import AutoModel, AutoTokenizer

from cuetune.config import DemoConfig, RunConfig
from cuetune.data.examples import Example
from cuetune.errors import ConfigError
from cuetune.families.pretrained import resolve
from cuetune.prompt.templates import Template

_EMBEDDERS: dict[str, tuple] = {}
"""Loaded sentence encoders by name (model, tokenizer, embeddings by text): loading MiniLM
takes a second; runs share it."""


def with_pool(cfg: RunConfig, train: list[Example]) -> RunConfig:
    """The config with its demonstration pool filled from the training split (unchanged when
    there are no demonstrations or the pool is set already)."""
    demos = cfg.prompt.demonstrations
    if demos is None or demos.pool is not None:
        return cfg
    rows = [{"text": e.text, "text_pair": e.text_pair, "label": e.label} for e in train]
    if len(rows) > demos.max_pool:
        rows = random.Random(demos.seed).sample(rows, demos.max_pool)
    demos = demos.model_copy(update={"pool": rows})
    return cfg.model_copy(update={"prompt": cfg.prompt.model_copy(update={"demonstrations": demos})})


class Demonstrations:
    def __init__(self, cfg: DemoConfig, template: Template, labels: list[str], words: dict[str, list[str]]):
        if cfg.pool is None:
            raise ConfigError("prompt.demonstrations: no pool of training examples; it is filled "
                              "when a run starts (cuetune.train, cuetune search)")
        self.cfg, self.separator = cfg, cfg.separator
        self.pool = [Example(r["text"], r.get("text_pair"), int(r["label"])) for r in cfg.pool]
        self.rendered = [template.render(ex, words[labels[ex.label]][0]) for ex in self.pool]
        self.by_label = [[i for i, ex in enumerate(self.pool) if ex.label == c] for c in range(len(labels))]
        self.vectors = self.embed(self.pool) if cfg.select == "similar" else None  # [P, D]
        self._query: dict[tuple, torch.Tensor] = {}

    def prepare(self, examples: list[Example]) -> None:
        """Embed the inputs about to be encoded, in one batch (similar selection)."""
        if self.vectors is None:
            return
        todo = [e for e in dict.fromkeys((e.text, e.text_pair) for e in examples) if e not in self._query]
        if todo:
            vectors = self.embed([Example(t, p) for t, p in todo])
            self._query.update(zip(todo, vectors, strict=True))

    def for_example(self, ex: Example) -> list[str]:
        """The rendered demonstrations for `ex`, least similar (or first drawn) first."""
        own = (ex.text, ex.text_pair)
        chosen: list[tuple[float, int]] = []
        if self.vectors is not None:
            self.prepare([ex])
            sims = self.vectors @ self._query[own]  # [P]
            for members in self.by_label:
                ranked = sorted((m for m in members if (self.pool[m].text, self.pool[m].text_pair) != own),
                                key=lambda m: -sims[m].item())
                chosen += [(sims[m].item(), m) for m in ranked[: self.cfg.per_class]]
            chosen.sort()
        else:
            digest = hashlib.sha256(f"{self.cfg.seed}\0{ex.text}\0{ex.text_pair}".encode()).digest()
            rng = random.Random(digest)
            for members in self.by_label:
                others = [m for m in members if (self.pool[m].text, self.pool[m].text_pair) != own]
                chosen += [(0.0, m) for m in rng.sample(others, min(self.cfg.per_class, len(others)))]
            rng.shuffle(chosen)
        return [self.rendered[m] for _, m in chosen]

    def embed(self, examples: list[Example]) -> torch.Tensor:
        """Normalised mean-pooled sentence embeddings [N, D] (pairs: the two texts joined);
        kept per text, as a search builds many prompts over the same examples."""
        model, tok, seen = _embedder(self.cfg.embedder)
        texts = [e.text + (" " + e.text_pair if e.text_pair else "") for e in examples]
        todo = list(dict.fromkeys(t for t in texts if t not in seen))
        with torch.inference_mode():
            for start in range(0, len(todo), 64):
                chunk = todo[start:start + 64]
                batch = tok(chunk, padding=True, truncation=True, max_length=256, return_tensors="pt")
                hidden = model(**batch).last_hidden_state  # [B, T, D]
                mask = batch["attention_mask"][..., None].float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                seen.update(zip(chunk, torch.nn.functional.normalize(pooled, dim=-1), strict=True))
        return torch.stack([seen[t] for t in texts]) if texts else torch.zeros(0, 1)


def _embedder(name: str):
    if name not in _EMBEDDERS:
        path, _ = resolve(name)
        _EMBEDDERS[name] = (AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path), {})
    return _EMBEDDERS[name]
