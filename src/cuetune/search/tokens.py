"""Prompts of discrete tokens written into a template, scored as token ids (RL, gradient, random
and model-sampled search).

The current best template gets `num_tokens` searched tokens after its last input slot
(`position: after`) or before its first (`before`). Scoring a batch of S candidates on B
training examples gives label log-probabilities [S, B, L] two ways, equal up to rounding
(tested):
- generic (every family): the template with a `{soft:n}` block, the block's embeddings set to
  each candidate's token embeddings, S x B rows in one forward;
- cached (causal models, `after`): the examples run once up to the end of their input
  (`CausalState`); the cache is repeated for the S candidates and each row appends only the
  candidate's tokens and the template's rest. The input is most of a prompt, so this is the
  difference between a few tokens and the whole prompt per candidate.
The text a candidate becomes (`text`) is what the search logs and dev-scores, through the same
pipeline as every other candidate. Demonstrations are left out of token search (put them on
afterwards with the `demos` searcher).
"""

from __future__ import annotations

import torch

from cuetune.engine.forward import PromptModel
from cuetune.errors import ConfigError
from cuetune.families.causal import CausalState
from cuetune.methods.zero_shot import ZeroShot, ZeroShotConfig
from cuetune.prompt.batch import collate
from cuetune.prompt.encoder import Encoded, encoder_for
from cuetune.prompt.templates import parse
from cuetune.search.candidates import Candidate

INPUT_SLOTS = ("{text_pair}", "{text}")


def split_template(template: str, position: str) -> tuple[str, str]:
    """(head, tail) around the searched tokens' place."""
    if "{text}" not in template:  # e.g. the alias {text_a}: the split reads the source text
        raise ConfigError(f"template {template!r}: token search places its tokens beside the "
                          "{text} slot; write it as {text} (and {text_pair}), not an alias")
    if position == "before":
        at = template.find("{text}")
        return template[:at], template[at:]
    at = max(template.rfind(s) + len(s) for s in INPUT_SLOTS if s in template)
    return template[:at], template[at:]


def search_vocab(tokenizer, top: int) -> torch.Tensor:
    """Ids among the first `top` that decode to a word or punctuation on one line (no special
    tokens, no control or byte-fragment pieces)."""
    special = set(tokenizer.all_special_ids)
    keep = []
    for i in range(min(top, len(tokenizer))):
        if i in special:
            continue
        piece = tokenizer.decode([i])
        if piece.strip() and piece.isprintable() and "\ufffd" not in piece and "{" not in piece \
                and "}" not in piece:
            keep.append(i)
    if not keep:
        raise ConfigError(f"search vocab_top={top}: no usable tokens among them; raise it")
    return torch.tensor(keep)


class TokenPrompts:
    def __init__(self, stage, best: Candidate, num_tokens: int, position: str):
        best = best.with_demos(None)  # tokens are searched on the prompt alone
        self.stage, self.best, self.n = stage, best, num_tokens
        pipe = stage.scorer.pipeline(best)
        self.loaded, self.verbalizer = pipe.loaded, pipe.verbalizer
        self.base, self.family = pipe.loaded.model, pipe.loaded.family
        self.tok = pipe.loaded.tokenizer
        self.head, self.tail = split_template(best.template, position)
        template = parse(f"{self.head}{{soft:{num_tokens}}}{self.tail}")
        prompt = stage.cfg.prompt.model_copy(update=best.prompt())
        self.encoder = encoder_for(prompt, stage.cfg.data, pipe.loaded)(template)
        method = ZeroShot(ZeroShotConfig(), pipe.loaded, self.encoder, stage.labels)
        self.model = PromptModel(pipe.loaded, method, self.verbalizer, 0)
        self.cached = self.family.shares_prefix and position == "after" and not best.chat
        self.embedding = self.base.get_input_embeddings()

    def text(self, ids: list[int]) -> Candidate:
        """The candidate as a template string (braces escaped)."""
        words = self.tok.decode(ids).replace("{", "{{").replace("}", "}}")
        if self.head.endswith("}") and not words[:1].isspace():
            words = " " + words  # after an input slot: not glued to the input's last word
        if self.tail.startswith("{") and not words[-1:].isspace():
            words += " "  # before an input slot: the slot's text gets its leading space
        return self.best.with_template(f"{self.head}{words}{self.tail}", self.best.chat,
                                       self.best.instruction)

    def label_logprobs(self, ids: torch.Tensor, items: list[Encoded]) -> torch.Tensor:
        """Candidates ids [S, n] on encoded examples -> label log-probabilities [S, B, L]."""
        with torch.inference_mode():
            if self.cached:
                return self._cached(ids, items)
            return self.from_embeddings(self.embedding(ids.to(self.model.device)), items)

    def from_embeddings(self, prompts: torch.Tensor, items: list[Encoded]) -> torch.Tensor:
        """Prompt embeddings [S, n, H] on encoded examples -> [S, B, L], through the generic
        path (differentiable: gradient search reads the embeddings' gradient)."""
        S, B = prompts.size(0), len(items)
        batch = {k: v.to(self.model.device) for k, v in collate(items, self.tok.pad_token_id).items()}
        rep = {k: v.repeat(S, *([1] * (v.dim() - 1))) for k, v in batch.items()}  # row = s * B + b
        inputs = self.model.inputs(rep)
        soft = rep["soft_index"]  # [S*B, T]
        rows = prompts.repeat_interleave(B, 0)  # [S*B, n, H]
        filled = rows.gather(1, soft.clamp(min=0)[..., None].expand(-1, -1, rows.size(-1)))
        embeds = inputs.inputs_embeds
        inputs.inputs_embeds = torch.where((soft >= 0)[..., None], filled.to(embeds.dtype), embeds)
        hidden = self.family.run(self.base, inputs)  # [S*B, H]
        return self._labels(hidden).view(S, B, -1)

    def _cached(self, ids: torch.Tensor, items: list[Encoded]) -> torch.Tensor:
        S, B = ids.size(0), len(items)
        cut = items[0].soft_index.index(0)
        tail = items[0].input_ids[cut + self.n: items[0].answer_pos + 1]
        heads = [Encoded(e.input_ids[:e.soft_index.index(0)], [-1] * e.soft_index.index(0),
                         e.soft_index.index(0) - 1, e.label) for e in items]
        batch = {k: v.to(self.model.device) for k, v in collate(heads, self.tok.pad_token_id, "left").items()}
        state = CausalState(self.model, batch, self.n + len(tail))
        state.select(torch.arange(B, device=self.model.device).repeat(S))  # row = s * B + b
        rest = torch.tensor(tail, dtype=torch.long, device=self.model.device).expand(S * B, -1)
        tokens = torch.cat([ids.to(self.model.device).repeat_interleave(B, 0), rest], 1)
        return self._labels(state.extend(tokens)).view(S, B, -1)

    def _labels(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.family.token_logits(self.base, hidden, self.verbalizer.token_ids.to(hidden.device))
        return self.verbalizer.label_logits(logits).log_softmax(-1)


def reward(logprobs: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """RLPrompt's reward: the gold label's probability less the best wrong one's [S, B]."""
    probs = logprobs.exp()  # [S, B, L]
    gold_p = probs.gather(2, gold.view(1, -1, 1).expand(probs.size(0), -1, 1)).squeeze(2)
    wrong = probs.scatter(2, gold.view(1, -1, 1).expand(probs.size(0), -1, 1), -1.0)
    return gold_p - wrong.max(2).values


def training_steps(stage, prompts: TokenPrompts, settings, gen: torch.Generator, done: int):
    """(step, encoded batch, gold labels [B]) for the steps after `done`, each batch drawn from
    the training split with `gen` (which the caller's state saves, so a resumed search draws
    the same batches)."""
    items = prompts.encoder.encode(stage.train, "search batch")
    gold = torch.tensor([e.label for e in stage.train])
    stage.plan(settings.steps)
    stage.advance(done)
    for step in range(done + 1, settings.steps + 1):
        pick = torch.randperm(len(items), generator=gen)[: settings.batch_size]
        yield step, [items[i] for i in pick.tolist()], gold[pick]
