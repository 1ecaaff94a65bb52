"""Verbalizers: label -> label words, and how label words are scored.

Scoring (documented in docs/prompts.md): at the answer position we compute logits only for the
tokens of the label words. A word of several tokens is scored from its tokens' logits at that
one position, by `multi_token`: `first` (first token only), `mean` (default) or `max`; or by
`chain`, the chain rule: the sum of its tokens' log-probabilities, each read after the ones
before it (`engine.PromptModel.chain_scores`). A label with several words gets the log-sum-exp
of its words' scores, so P(label | x) is the softmax mass of its words among all label words.
"""

from __future__ import annotations

import torch

from cuetune.errors import VerbalizerError, did_you_mean


class Verbalizer:
    def __init__(self, labels: list[str], words: dict[str, str | list[str]] | None = None,
                 multi_token: str = "mean"):
        self.labels = list(labels)
        self.multi_token = multi_token
        words = words or {label: [label] for label in self.labels}
        for key in words:
            if key not in self.labels:
                raise VerbalizerError(
                    f"prompt.verbalizer.{key}: not a label;"
                    f"{did_you_mean(key, self.labels) or ''} labels are {self.labels}")
        self.words: dict[str, list[str]] = {}
        for label in self.labels:
            if label not in words:
                raise VerbalizerError(f"prompt.verbalizer: no words for label '{label}'; add them")
            value = words[label]
            listed = [value] if isinstance(value, str) else list(value)
            if not listed or any(not isinstance(w, str) or not w.strip() for w in listed):
                raise VerbalizerError(f"prompt.verbalizer.{label}: needs non-empty words")
            self.words[label] = list(dict.fromkeys(w.strip() for w in listed))

    def bind(self, tokenizer, leading_space: bool) -> Verbalizer:
        """Encode the words with `tokenizer`; check each encodes and labels are distinct."""
        seqs: list[tuple[int, ...]] = []
        owner: list[int] = []
        for li, label in enumerate(self.labels):
            for wi, word in enumerate(self.words[label]):
                ids = tuple(tokenizer((" " if leading_space else "") + word,
                                      add_special_tokens=False)["input_ids"])
                field = f"prompt.verbalizer.{label}[{wi}]"
                if not ids:
                    raise VerbalizerError(f"{field}: {word!r} encodes to no tokens; use another word")
                if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
                    raise VerbalizerError(f"{field}: {word!r} does not encode (unknown token); "
                                          "use a word in the model's vocabulary")
                seqs.append(ids)
                owner.append(li)
        key = (lambda s: s[:1]) if self.multi_token == "first" else (lambda s: s)
        seen: dict = {}
        for seq, li in zip(seqs, owner, strict=True):
            other = seen.setdefault(key(seq), li)
            if other != li:
                raise VerbalizerError(
                    f"prompt.verbalizer: labels '{self.labels[other]}' and '{self.labels[li]}' "
                    f"share the word tokens {list(key(seq))}; pick distinct words")
        unique = sorted({t for s in seqs for t in s})
        index = {t: i for i, t in enumerate(unique)}
        width = max(len(s) for s in seqs)
        self.token_ids = torch.tensor(unique)  # [V']: the only output rows ever computed
        self.word_pos = torch.tensor([[index[t] for t in s] + [0] * (width - len(s)) for s in seqs])
        self.word_mask = torch.tensor([[1.0] * len(s) + [0.0] * (width - len(s)) for s in seqs])
        self.word_label = torch.tensor(owner)  # [W]
        self.word_ids = seqs
        return self

    def label_logits(self, token_logits: torch.Tensor) -> torch.Tensor:
        """token_logits [B, V'] over `token_ids` -> label scores [B, L]."""
        pos = self.word_pos.to(token_logits.device)
        mask = self.word_mask.to(token_logits.device)
        per_token = token_logits[:, pos]  # [B, W, maxlen]
        if self.multi_token == "first":
            words = per_token[:, :, 0]
        elif self.multi_token == "mean":
            words = (per_token * mask).sum(-1) / mask.sum(-1)
        else:
            words = per_token.masked_fill(mask == 0, float("-inf")).max(-1).values
        return self.labels_from_words(words)

    def labels_from_words(self, words: torch.Tensor) -> torch.Tensor:
        """Word scores [B, W] -> label scores [B, L]: log-sum-exp over each label's words."""
        owner = self.word_label.to(words.device)
        return torch.stack([torch.logsumexp(words[:, owner == li], dim=1)
                            for li in range(len(self.labels))], dim=1)  # [B, L]

    def to_json(self) -> dict:
        return {"labels": self.labels, "words": self.words, "multi_token": self.multi_token}
