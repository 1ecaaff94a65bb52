"""Generic baselines: the plain prompts a user would write for any classification task.

A named benchmark task brings frozen hand baselines and cue phrases; a user's own task brings
only its label names and, perhaps, a prompt and words of its own. Without baselines of its own
kind, a search on such a task picked label words that fit 32 dev sentences by chance and lost
to a plain wording it never tried (issue 42, docs/prompts.md). So every search scores these
first, like the named tasks' frozen ones:

- `Text: {text}\nLabel: {answer}` and `{text}\nAnswer: {answer}` (pairs: both texts, labelled);
- your first input and answer cue phrases (`search.pool`), when you give them;
- a chat instruction that lists the labels, where the tokenizer has a chat template;

each with your label words, and with the label names as words where the names are words
(`not_entailment` reads `not entailment`; codes such as `0` or `POS` are not tried). Your own
prompt with the label names as words is tried too.
"""

from __future__ import annotations

import re

from cuetune.data.tasks import Task
from cuetune.search.candidates import Candidate

_WORD = re.compile(r"[^\W\d_]+(?: [^\W\d_]+)*")
"""Letters, in one or more space-separated words: a name a language model can read."""


def names_as_words(labels: list[str]) -> dict[str, list[str]] | None:
    """label -> [its name as a word], or None where some name is not a word (a code, a number,
    an abbreviation in capitals) or two names read the same."""
    words = {}
    for label in labels:
        word = " ".join(label.replace("_", " ").replace("-", " ").split())
        if not _WORD.fullmatch(word) or (word.isupper() and len(word) > 1):
            return None
        words[label] = [word.lower()]
    return words if len({w[0] for w in words.values()}) == len(labels) else None


def plain_templates(pair: bool, input_cue: str | None = None,
                    answer_cue: str | None = None) -> dict[str, str]:
    """The plain wordings, by name; the first is the one a new user's search starts from."""
    if pair:
        out = {"Text/Label": "Text 1: {text}\nText 2: {text_pair}\nLabel: {answer}",
               "Answer": "{text}\n{text_pair}\nAnswer: {answer}"}
    else:
        out = {"Text/Label": "Text: {text}\nLabel: {answer}", "Answer": "{text}\nAnswer: {answer}"}
    if input_cue or answer_cue:
        lead = _cue(input_cue or "Text:")
        answer = _cue(answer_cue or "Label:").rstrip()
        pair_part = "\n{text_pair}" if pair else ""
        out["your cues"] = f"{lead}{{text}}{pair_part}\n{answer} {{answer}}"
    return out


def own_task_prompt(task: Task) -> dict:
    """The prompt a new user would start from on a named task treated as their own: the first
    plain wording, the class names as words (the labels themselves where they are names)."""
    pair = task.data.get("text_pair_column") is not None
    return {"template": next(iter(plain_templates(pair).values())),
            "verbalizer": dict(task.names) if task.names else None, **(task.prompt_extra or {})}


def instruction(labels: list[str], words: dict[str, list[str]]) -> str:
    """A chat instruction that names the classes (by their first words)."""
    options = [words[label][0] for label in labels]
    return f"Classify the text. Answer with one of: {', '.join(options)}."


def baselines(start: Candidate, labels: list[str], pair: bool, chat: bool,
              input_cue: str | None = None, answer_cue: str | None = None) -> dict[str, Candidate]:
    """name -> candidate: the plain wordings with each word set (`start`'s words, then the label
    names where they are words and differ), `start`'s template with the names as words, and a
    chat instruction listing the labels (`chat`: the tokenizer has a chat template and the
    model reads the answer next)."""
    own = {label: list(ws) for label, ws in start.words}
    named = names_as_words(labels)
    word_sets = {"your words": own}
    if named is not None and named != own:
        word_sets["label names"] = named
    plain = Candidate(start.template, start.words, demos=start.demos)
    out: dict[str, Candidate] = {}
    for name, template in plain_templates(pair, input_cue, answer_cue).items():
        for which, words in word_sets.items():
            out[f"generic {name}, {which}"] = plain.with_template(template).with_words(words)
    if "label names" in word_sets:
        out["your template, label names"] = plain.with_words(word_sets["label names"])
    if chat:
        body = "{text} {text_pair} {answer}" if pair else "{text} {answer}"
        for which, words in word_sets.items():
            cand = plain.with_template(body, chat=True, instruction=instruction(labels, words))
            out[f"generic chat instruction, {which}"] = cand.with_words(capitalised(words))
    return out


def capitalised(words: dict[str, list[str]] | dict[str, tuple[str, ...]]) -> dict[str, list[str]]:
    """Each label's words and their capitalised forms (chat replies start with a capital)."""
    return {label: list(dict.fromkeys(w for word in ws for w in (word, word.capitalize())))
            for label, ws in words.items()}


def _cue(cue: str) -> str:
    """A cue phrase as it sits before its slot: `Review` -> `Review: `, `Review:` -> `Review: `."""
    cue = cue.strip()
    if cue and cue[-1].isalnum():
        cue += ":"
    return cue + " "
