"""The template language.

A template is literal text with slots in braces:

    {text}            the input text (required)
    {text_pair}       the second text of a sentence pair (optional)
    {answer}          where the label word goes (alias: {mask}); required for classification
    {soft:20}         20 trainable soft tokens
    {soft:"It was"}   soft tokens initialised from these words (one token per word piece)
    {{ and }}         literal braces

Parsed by a small scanner (never eval); errors name the column.
"""

from __future__ import annotations

from dataclasses import dataclass

from cuetune.errors import TemplateError, did_you_mean

SLOTS = ("text", "text_pair", "answer", "soft")
ALIASES = {"mask": "answer", "text_a": "text", "text_b": "text_pair"}


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Slot:
    name: str  # "text", "text_pair" or "answer"


@dataclass(frozen=True)
class Soft:
    count: int
    init_words: str | None = None
    """Initialise from these words' embeddings; the count is then their token count."""


Segment = Text | Slot | Soft


@dataclass(frozen=True)
class Template:
    source: str
    segments: tuple[Segment, ...]

    def has(self, name: str) -> bool:
        return any(isinstance(s, Slot) and s.name == name for s in self.segments)

    @property
    def soft_segments(self) -> list[Soft]:
        return [s for s in self.segments if isinstance(s, Soft)]

    def without_soft(self) -> Template:
        """The hard template alone: soft slots removed, whitespace around them tidied."""
        kept: list[Segment] = []
        for seg in self.segments:
            if isinstance(seg, Soft):
                continue
            if isinstance(seg, Text) and kept and isinstance(kept[-1], Text):
                kept[-1] = Text(kept[-1].text + seg.text)
            else:
                kept.append(seg)
        if kept and isinstance(kept[0], Text):
            stripped = kept[0].text.lstrip()
            kept = ([Text(stripped)] if stripped else []) + kept[1:]
        return Template(self.source, tuple(kept))

    def render(self, example, word: str) -> str:
        """The hard template filled with an example's texts and an answer word (soft slots
        dropped): how a labelled example reads as a demonstration."""
        parts = []
        for seg in self.without_soft().segments:
            if isinstance(seg, Text):
                parts.append(seg.text)
            elif seg.name == "answer":
                parts.append(word)
            else:
                parts.append(getattr(example, seg.name) or "")
        return "".join(parts).strip()

    def with_leading_soft(self, count: int) -> Template:
        return Template(self.source, (Soft(count), Text(" "), *self.segments))

    def check(self, need_answer: bool = True) -> Template:
        """Each required slot exactly once; raise a TemplateError naming what to add."""
        for name in ("text", "text_pair", "answer"):
            n = sum(isinstance(s, Slot) and s.name == name for s in self.segments)
            if n > 1:
                raise TemplateError(f"template {self.source!r}: {{{name}}} appears {n} times")
        if not self.has("text"):
            raise TemplateError(f"template {self.source!r}: no {{text}} slot; add one")
        if need_answer and not self.has("answer"):
            raise TemplateError(
                f"template {self.source!r}: no {{answer}} slot; add one where the label word goes"
            )
        return self


def parse(source: str) -> Template:
    """Parse a template string into segments."""
    if not isinstance(source, str):
        raise TemplateError(f"template must be a string, got {type(source).__name__}")
    segments: list[Segment] = []
    buf: list[str] = []
    i, n = 0, len(source)
    while i < n:
        ch = source[i]
        if ch == "{" and source.startswith("{{", i):
            buf.append("{")
            i += 2
        elif ch == "}" and source.startswith("}}", i):
            buf.append("}")
            i += 2
        elif ch == "}":
            raise TemplateError(f"template {source!r}: column {i + 1}: unmatched '}}'; write '}}}}'")
        elif ch == "{":
            if buf:
                segments.append(Text("".join(buf)))
                buf = []
            seg, i = _slot(source, i)
            segments.append(seg)
        else:
            buf.append(ch)
            i += 1
    if buf:
        segments.append(Text("".join(buf)))
    return Template(source, tuple(segments))


def _slot(source: str, start: int) -> tuple[Segment, int]:
    """Read one `{...}` slot starting at `start`; return it and the index after '}'."""
    i = start + 1
    j = i
    while j < len(source) and (source[j].isalnum() or source[j] == "_"):
        j += 1
    name = source[i:j]
    col = f"template {source!r}: column {start + 1}"
    name = ALIASES.get(name, name)
    if name not in SLOTS:
        hint = did_you_mean(name, list(SLOTS) + list(ALIASES))
        raise TemplateError(f"{col}: unknown slot {{{source[i:j]}}};{hint or ' use ' + ', '.join(SLOTS)}")
    if j < len(source) and source[j] == "}":
        if name == "soft":
            raise TemplateError(f"{col}: {{soft}} needs a count or words, e.g. {{soft:20}}")
        return Slot(name), j + 1
    if j >= len(source) or source[j] != ":":
        raise TemplateError(f"{col}: expected '}}' to close {{{name}")
    if name != "soft":
        raise TemplateError(f"{col}: {{{name}}} takes no argument")
    arg, k = _soft_arg(source, j + 1, col)
    if k >= len(source) or source[k] != "}":
        raise TemplateError(f"{col}: expected '}}' after the soft-token argument")
    return arg, k + 1


def _soft_arg(source: str, i: int, col: str) -> tuple[Soft, int]:
    if i < len(source) and source[i] == '"':
        out: list[str] = []
        k = i + 1
        while k < len(source) and source[k] != '"':
            if source[k] == "\\" and k + 1 < len(source):
                k += 1
            out.append(source[k])
            k += 1
        if k >= len(source):
            raise TemplateError(f"{col}: unterminated quoted words in soft slot")
        words = "".join(out)
        if not words.strip():
            raise TemplateError(f"{col}: soft slot words are empty")
        return Soft(0, words), k + 1
    k = i
    while k < len(source) and source[k].isdigit():
        k += 1
    if k == i:
        raise TemplateError(f'{col}: soft slot needs a count or "words", e.g. {{soft:20}}')
    count = int(source[i:k])
    if not 1 <= count <= 1000:
        raise TemplateError(f"{col}: soft token count must be 1..1000, got {count}")
    return Soft(count), k
