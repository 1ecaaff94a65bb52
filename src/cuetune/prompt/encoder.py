"""Turn (template, example) into token ids for a model family.

Layout per family (see cuetune.families): causal models see the prompt up to the answer and read the
label word from the last position; masked models see a mask token at the answer; seq2seq
models see a sentinel there. Inputs are tokenised once, truncated by an explicit policy that
never cuts the template or the answer slot, and padded on the right.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cuetune.config import DataConfig, PromptConfig
from cuetune.data.examples import Example, check_text
from cuetune.errors import TemplateError
from cuetune.prompt.templates import Slot, Soft, Template, Text

log = logging.getLogger(__name__)

CHAT_PLACEHOLDER = "\u0000CUETUNE_USER\u0000"
CONTENT_FREE = ("N/A", "", "[MASK]")
"""Contextual calibration's content-free inputs (Zhao et al. 2021); their mean prediction is
the prompt's bias."""


def content_free_examples(pair: bool) -> list[Example]:
    """The content-free inputs, in both slots of a pair (`pair`: the template reads
    {text_pair})."""
    return [Example(t, t if pair else None) for t in CONTENT_FREE]


@dataclass
class Encoded:
    input_ids: list[int]
    soft_index: list[int]
    """Per position: index of the soft token placed there, or -1."""
    answer_pos: int
    label: int | None
    truncated: bool = False
    target: list[int] | None = None
    """Generation, teacher-forced: the answer tokens to predict (end-of-text included)."""
    target_pos: list[int] | None = None
    """Where the hidden state that predicts each target token is: in `input_ids` for a causal
    model, in the decoder sequence ([start] + decoder_ids) for seq2seq."""
    decoder_ids: list[int] | None = None
    """Seq2seq teacher forcing: the decoder's inputs after its start token."""
    refs: tuple[str, ...] = ()
    views: tuple[Encoded, ...] | None = None
    """Several encodings of one example (a mixture's prompts): rows of one batch, one label."""


@dataclass(frozen=True)
class SoftSpec:
    count: int
    init_ids: tuple[int, ...] | None
    """Token ids whose embeddings initialise this block (from {soft:"words"})."""


def _special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer wraps a sequence in (e.g. [CLS] ... [SEP])."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return full[:start], full[start + len(bare):]
    return [], []


class Encoder(Protocol):
    """What the engine and the methods read of an encoder: `PromptEncoder` encodes one
    template; a mixture's encodes each input once per prompt (`methods.mixture.Views`)."""

    template: Template
    answer_space: bool
    """Whether the label words are read after a space (they are encoded with one)."""
    shared_len: int
    """Leading tokens every row shares (the fast path computes them once); 0: none."""
    views: int
    """Rows per input."""
    num_soft: int

    def encode(self, examples: list[Example], what: str = "examples",
               with_target: bool = True) -> list[Encoded]: ...

    def use_demonstrations(self, demos) -> None: ...

    def pieces(self) -> list[dict]: ...


class PromptEncoder:
    """Encodes examples with one template for one tokenizer and family."""

    views = 1
    """Rows per input (a mixture's encoder gives one per prompt)."""

    def __init__(self, template: Template, tokenizer, family, *,
                 instruction: str | None = None, chat: bool = False, max_length: int = 256,
                 target_length: int | None = None):
        self.template = template.check(need_answer=True)
        self.tok = tokenizer
        self.family = family
        self.answer_next = family.answer_is_next
        self.chat = chat
        self.max_length = max_length
        self.target_length = target_length
        """Generation (answer tokens kept); None for classification."""
        if target_length is not None and tokenizer.eos_token_id is None:
            raise TemplateError("generation needs an end-of-text token; this tokenizer has none")
        self.truncated_count = 0
        self.demos = None
        """`demonstrations.Demonstrations`, set by `use_demonstrations`: per-input examples."""
        self.demos_dropped = 0
        """Inputs that lost a demonstration to data.max_length."""
        segs = list(template.segments)
        answer_at = next(i for i, s in enumerate(segs) if isinstance(s, Slot) and s.name == "answer")
        if self.answer_next:
            if any(isinstance(s, Slot) and s.name != "answer" for s in segs[answer_at:]):
                raise TemplateError(
                    f"template {template.source!r}: a causal model reads the answer after the "
                    "input, so put {text} (and {text_pair}) before {answer}"
                )
            segs = segs[: answer_at + 1]  # what follows the answer is never seen
        if chat and not self.answer_next:
            raise TemplateError("prompt.chat: chat templates need a causal (decoder) model")
        if chat and not getattr(tokenizer, "chat_template", None):
            raise TemplateError("prompt.chat: this tokenizer has no chat template; set chat: false")
        self._demos_at = 0
        """Segments before the demonstrations: the instruction, when it is a plain literal."""
        if instruction and not chat:
            segs = [Text(instruction.rstrip() + "\n"), *segs]
            self._demos_at = 1
        self.instruction = instruction if chat else None
        before = segs[answer_at - 1] if answer_at > 0 else None
        self.answer_space = (not chat and isinstance(before, Text)
                             and before.text[-1:].isspace())
        self.segments = _move_spaces(segs)
        self.soft_specs = [self._soft_spec(s) for s in self.segments if isinstance(s, Soft)]
        self.num_soft = sum(s.count for s in self.soft_specs)
        self.prefix, self.suffix = _special_affixes(tokenizer)
        if chat:
            self.prefix, self.suffix = self._chat_affixes()
        elif self.answer_next:
            self.suffix = []
        self._literal_ids = {id(s): self._ids(s.text) for s in self.segments
                             if isinstance(s, Text)}
        self.shared_len = self._shared_len()
        self.fixed_length = len(self.prefix) + len(self.suffix) + self.num_soft + sum(
            len(v) for v in self._literal_ids.values()) + (0 if self.answer_next else 1)
        """Tokens every example takes besides its input text: special tokens, template words,
        soft tokens and (mask and span styles) the answer token."""

    def use_demonstrations(self, demos) -> None:
        """Put `demos.for_example(ex)` before each input; the prompt's shared start then ends
        where the demonstrations begin."""
        self.demos = demos
        self.shared_len = self._shared_len()

    def _demo_ids(self, ex: Example, need: int) -> list[int]:
        """The demonstrations' token ids for `ex`, least similar dropped until `need` more
        tokens fit data.max_length."""
        demos = self.demos.for_example(ex)
        while demos:
            ids = self._ids(self.demos.separator.join(demos) + self.demos.separator)
            if need + len(ids) <= self.max_length:
                return ids
            demos = demos[1:]
            self.demos_dropped += 1
        return []

    def _shared_len(self) -> int:
        """How many leading tokens are the same for every example (special tokens, instruction,
        soft blocks and template words before the first input slot). A causal model's states
        there do not depend on the input, so the engine computes them once per batch."""
        n, soft = len(self.prefix), iter(self.soft_specs)
        for i, seg in enumerate(self.segments):
            if self.demos is not None and i == self._demos_at:
                break
            if isinstance(seg, Soft):
                n += next(soft).count
            elif isinstance(seg, Text):
                n += len(self._literal_ids[id(seg)])
            else:
                break
        return n

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] if text else []

    def _soft_spec(self, seg: Soft) -> SoftSpec:
        if seg.init_words is None:
            return SoftSpec(seg.count, None)
        ids = self._ids(seg.init_words)
        if not ids:
            raise TemplateError(f"template soft words {seg.init_words!r} encode to no tokens")
        return SoftSpec(len(ids), tuple(ids))

    def _chat_affixes(self) -> tuple[list[int], list[int]]:
        content = (self.instruction.rstrip() + "\n\n" if self.instruction else "") + CHAT_PLACEHOLDER
        text = self.tok.apply_chat_template([{"role": "user", "content": content}],
                                            tokenize=False, add_generation_prompt=True)
        if CHAT_PLACEHOLDER not in text:
            raise TemplateError("prompt.chat: the chat template dropped the user message")
        head, tail = text.split(CHAT_PLACEHOLDER)
        return self._ids(head), self._ids(tail)

    def encode_one(self, ex: Example, with_target: bool = True) -> Encoded:
        """Token ids for one example. Generation examples with a target (and `with_target`)
        come teacher-forced: the answer tokens follow the prompt (causal) or feed the decoder
        (seq2seq); otherwise the prompt alone, as `generate` continues it."""
        enc = self._encode_prompt(ex)
        if self.target_length is None or ex.target is None or not with_target:
            return enc
        lead = " " if self.answer_space else ""
        target = self._ids(lead + ex.target)[: self.target_length] + [self.tok.eos_token_id]
        if self.answer_next:  # the last prompt token predicts the first answer token
            enc.target_pos = list(range(enc.answer_pos, enc.answer_pos + len(target)))
            enc.input_ids = enc.input_ids + target[:-1]
            enc.soft_index = enc.soft_index + [-1] * (len(target) - 1)
        else:  # the decoder reads [start, sentinel, answer...]; after the sentinel comes the answer
            enc.decoder_ids = [self._answer_token()] + target[:-1]
            enc.target_pos = list(range(1, len(target) + 1))
        enc.target = target
        return enc

    def _text_ids(self, ex: Example) -> dict[str, list[int]]:
        for name in ("text", "text_pair"):  # a lone surrogate would fail inside the tokenizer
            check_text(getattr(ex, name) or "", f"{ex.where or 'input'}: {name}")
        texts = {s.name: self._ids((" " if s.lead_space else "") + (getattr(ex, s.name) or ""))
                 for s in self.segments if isinstance(s, TextSlot)}
        texts.setdefault("text_pair", [])
        return texts

    def input_length(self, ex: Example) -> int:
        """Tokens the example's input texts take in this template, before any truncation."""
        return sum(len(ids) for ids in self._text_ids(ex).values())

    def _encode_prompt(self, ex: Example) -> Encoded:
        texts = self._text_ids(ex)
        demo_ids = [] if self.demos is None else self._demo_ids(
            ex, self.fixed_length + sum(len(v) for v in texts.values()))
        budget = self.max_length - self.fixed_length - len(demo_ids)
        if budget < 1:
            raise TemplateError(
                f"template {self.template.source!r} needs {self.fixed_length} tokens but "
                f"data.max_length is {self.max_length}; raise data.max_length or shorten the "
                "template"
            )
        truncated = _truncate(texts, budget)
        self.truncated_count += truncated
        ids, soft = list(self.prefix), [-1] * len(self.prefix)
        answer_pos, soft_block, soft_next = -1, 0, 0
        for i, seg in enumerate(self.segments):
            if i == self._demos_at and demo_ids:
                ids.extend(demo_ids)
                soft.extend([-1] * len(demo_ids))
            if isinstance(seg, Soft):
                count = self.soft_specs[soft_block].count
                ids.extend([self.tok.pad_token_id] * count)  # placeholders; the method fills them
                soft.extend(range(soft_next, soft_next + count))
                soft_block, soft_next = soft_block + 1, soft_next + count
                continue
            if isinstance(seg, Text):
                piece = self._literal_ids[id(seg)]
            elif isinstance(seg, TextSlot):
                piece = texts[seg.name]
            elif self.answer_next:  # the answer: predicted from the last prompt token
                answer_pos = len(ids) + len(self.suffix) - 1
                continue
            else:
                answer_pos = len(ids)
                piece = [self._answer_token()]
            ids.extend(piece)
            soft.extend([-1] * len(piece))
        ids.extend(self.suffix)
        soft.extend([-1] * len(self.suffix))
        if answer_pos < 0:
            raise TemplateError(f"template {self.template.source!r}: nothing before {{answer}}")
        return Encoded(ids, soft, answer_pos, ex.label, bool(truncated), refs=ex.refs)

    def pieces(self) -> list[dict]:
        """The prompt as another library must build it to get our token ids: fixed token ids
        (`{"ids", "text"}`) and input slots (`{"slot", "lead_space"}`: the slot's text, with a
        space before it when `lead_space`, tokenised without special tokens), in order, up to
        the answer. Soft blocks are left out: PEFT puts its virtual tokens before all of this.
        A causal model's answer is the token after the last piece; otherwise the piece with
        `"answer": true` holds its place."""
        out = [{"ids": list(self.prefix), "text": self.tok.decode(self.prefix)}] if self.prefix else []
        for seg in self.segments:
            if isinstance(seg, Text):
                ids = self._literal_ids[id(seg)]
                out.append({"ids": list(ids), "text": seg.text})
            elif isinstance(seg, TextSlot):
                out.append({"slot": seg.name, "lead_space": seg.lead_space})
            elif isinstance(seg, Slot) and not self.answer_next:
                out.append({"ids": [self._answer_token()], "answer": True})
        if self.suffix:
            out.append({"ids": list(self.suffix), "text": self.tok.decode(self.suffix)})
        return out

    def _answer_token(self) -> int:
        return self.family.answer_token_id(self.tok)

    def encode(self, examples: list[Example], what: str = "examples",
                   with_target: bool = True) -> list[Encoded]:
        before, dropped = self.truncated_count, self.demos_dropped
        if self.demos is not None:
            self.demos.prepare(examples)
        out = [self.encode_one(ex, with_target) for ex in examples]
        if self.demos_dropped > dropped:
            log.warning("%d demonstrations were left out of %d %s to fit data.max_length=%d "
                        "(the least similar first; inputs are kept whole where they fit)",
                        self.demos_dropped - dropped, len(examples), what, self.max_length)
        cut = self.truncated_count - before
        if cut:
            log.warning("%d of %d %s were truncated to data.max_length=%d (inputs cut at the end; "
                        "template and answer kept)", cut, len(examples), what, self.max_length)
        return out


def encoder_for(prompt: PromptConfig, data: DataConfig, loaded) -> Callable[[Template], PromptEncoder]:
    """Encoders of any template for a run: its prompt settings (instruction, chat), its length
    limits and task (generation keeps `max_target_length` answer tokens), its tokenizer and
    family (`loaded`: a `LoadedModel`). Methods get this, not the run config, to build theirs."""
    target = data.max_target_length if data.task == "generation" else None

    def make(template: Template) -> PromptEncoder:
        return PromptEncoder(template, loaded.tokenizer, loaded.family, instruction=prompt.instruction,
                             chat=prompt.chat, max_length=data.max_length, target_length=target)

    return make


@dataclass(frozen=True)
class TextSlot:
    name: str  # "text" or "text_pair"
    lead_space: bool


def _move_spaces(segs: list) -> list:
    """Move a literal's trailing whitespace onto the slot after it.

    BPE tokenizers encode " word" as one token but "x " + "word" with an extra space token, so
    "Review: {text}" becomes "Review:" + " <text>". Before {answer} the space is dropped and
    the verbalizer's words carry it instead (PromptEncoder.answer_space); before soft tokens it
    means nothing and is dropped.
    """
    out: list = []
    space = False
    for i, seg in enumerate(segs):
        nxt = segs[i + 1] if i + 1 < len(segs) else None
        if isinstance(seg, Text) and isinstance(nxt, Slot | Soft):
            stripped = seg.text.rstrip()
            space = stripped != seg.text
            if stripped:
                out.append(Text(stripped))
            continue
        if isinstance(seg, Slot) and seg.name != "answer":
            out.append(TextSlot(seg.name, space))
        else:
            out.append(seg)
        space = False
    return out


def _truncate(texts: dict[str, list[int]], budget: int) -> int:
    """Cut the longer text first until both fit `budget`; return 1 if anything was cut."""
    a, b = len(texts["text"]), len(texts["text_pair"])
    if a + b <= budget:
        return 0
    half = budget // 2
    if b == 0 or a <= half:
        b = budget - min(a, budget)
        a = min(a, budget)
    elif b <= half:
        a = budget - b
    else:
        a, b = budget - half, half
    texts["text"] = texts["text"][:a]
    texts["text_pair"] = texts["text_pair"][:b]
    return 1


