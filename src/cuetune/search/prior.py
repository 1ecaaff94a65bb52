"""A prior toward meaning for the label-word search.

On a user's own task, with 16 examples a class, the search's words fit the training set by
chance: `worse / eye`, `voltage / willing`, `improvement / believed` (issue 42). Two checks
keep a found word only where it could mean its class:
- **a real word**: its frequency in the language (wordfreq's Zipf scale, `min_zipf`; 3 is
  once per million words) keeps out fragments and rare tokens;
- **related to its class**: a sentence encoder (all-MiniLM-L6-v2, shipped as a package) puts
  the word among the `related_top` share of the language's common words nearest its own
  class's anchor, and nearer that anchor than any other class's; the anchors are the label
  names where they are words, else each class's first current word. Nearer-than-the-others
  alone let nonsense through: a single word's similarity to "negative" and to "positive"
  differs by a few hundredths either way (*Michigan* / *Spanish* passed); the share is an
  absolute bar (docs/prompts.md has the figures).
Either check is skipped, with the reason logged, where it cannot apply (a language wordfreq
lacks, anchors that are codes, the encoder package absent).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache

import torch
from transformers import AutoModel, AutoTokenizer
from wordfreq import available_languages, top_n_list, zipf_frequency

from cuetune.errors import ModelError
from cuetune.families.pretrained import resolve
from cuetune.search.generic import names_as_words

log = logging.getLogger("cuetune.search")
ENCODER = "minilm-l6"


@dataclass
class WordPrior:
    language: str | None
    """wordfreq's language code; None: no frequency check."""
    min_zipf: float
    anchors: torch.Tensor | None
    """[C, D] unit vectors, one per class; None: no relatedness check."""
    bars: torch.Tensor | None = None
    """[C]: the similarity to each anchor that only the `related_top` share of common words
    reach."""

    def keeps(self, c: int, word: str) -> bool:
        if self.language is not None and zipf_frequency(word, self.language) < self.min_zipf:
            return False
        if self.anchors is None:
            return True
        sims = self.anchors @ embed((word,))[0]  # [C]
        if self.bars is not None and sims[c] < self.bars[c]:
            return False
        return len(sims) < 2 or bool(sims[c] > torch.cat([sims[:c], sims[c + 1:]]).max())


def build(labels: list[str], words: dict[str, list[str]], language: str, min_zipf: float,
          related: bool, texts: list[str], related_top: float = 1.0) -> WordPrior:
    """The prior for a search over `labels` (`words`: each class's current words; `texts`:
    training inputs, for `language: auto`; `related_top`: the share of common words a found
    word must be among, by similarity to its class's anchor; 1: no such bar)."""
    lang = _language(language, texts)
    anchors = bars = None
    if related:
        names = names_as_words(labels)
        first = {label: ws[0] for label, ws in words.items()}
        anchor_words = ([names[label][0] for label in labels] if names is not None
                        else [first[label] for label in labels])
        if names is None and not all(w.replace(" ", "").isalpha() for w in anchor_words):
            log.info("label-word prior: the label names and words (%s) are codes, not words: no "
                     "relatedness check", ", ".join(anchor_words))
        else:
            try:
                anchors = embed(tuple(anchor_words))
                if related_top < 1:
                    sims = anchors @ _common(lang or "en").T  # [C, R]
                    bars = sims.quantile(1 - related_top, dim=1)
            except ModelError as exc:
                log.info("label-word prior: no relatedness check (%s)", exc)
    return WordPrior(lang, min_zipf, anchors, bars)


COMMON = 5000
"""Common words the relatedness bar is set against (wordfreq's most frequent, letters only)."""


@cache
def _common(language: str) -> torch.Tensor:
    """Embeddings of the language's most frequent words [R, D] (~10 s on one core, once)."""
    words = [w for w in top_n_list(language, 3 * COMMON) if w.isalpha()][:COMMON]
    return torch.cat([embed(tuple(words[i:i + 500])) for i in range(0, len(words), 500)])


def _language(language: str, texts: list[str]) -> str | None:
    if language == "auto":  # English where the inputs are mostly ASCII letters
        letters = [ch for t in texts for ch in t if ch.isalpha()]
        ascii_share = sum(ch.isascii() for ch in letters) / max(1, len(letters))
        if ascii_share < 0.9:
            log.info("label-word prior: inputs are not mostly English; no frequency check (set "
                     "search.labels.language to a wordfreq language code)")
            return None
        return "en"
    if language not in available_languages():
        log.info("label-word prior: wordfreq has no list for %r; no frequency check", language)
        return None
    return language


@cache
def _encoder():
    path, _ = resolve(ENCODER)
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


@cache
def embed(words: tuple[str, ...]) -> torch.Tensor:
    """Mean-pooled, unit-length MiniLM embeddings of short texts: [N, 384]."""
    tok, model = _encoder()
    batch = tok(list(words), padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state  # [N, T, 384]
    mask = batch["attention_mask"][..., None].to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
