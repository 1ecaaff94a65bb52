"""Template pool: patterns generated from the input type (one text or a pair), cue phrases
before the input and before the answer, and the answer's position, plus your own templates.

Every pattern keeps the current best label words. Generated patterns are shuffled with the
search seed and cut at `search.pool.max_candidates`; yours and the task's baselines come first
and are never cut. With a chat tokenizer each input cue is also tried as a chat-template
instruction (the answer is read at the start of the assistant's reply), label words then
capitalised too, as instruction-tuned models answer.
"""

from __future__ import annotations

import random
from dataclasses import replace

from cuetune.search.candidates import Candidate
from cuetune.search.generic import capitalised
from cuetune.search.stage import Stage

INPUT_CUES = ["", "Text: ", "Input: ", "Sentence: "]
ANSWER_CUES = ["It was", "Answer:", "Label:", "This is"]
PAIR_CUES = [("", "Question: "), ("Premise: ", "Hypothesis: "), ("Sentence 1: ", "Sentence 2: ")]
PAIR_ANSWER_CUES = ["Answer:", "Yes or No? Answer:", "Does the first imply the second?"]
SEPARATORS = [" ", "\n"]


def run(stage: Stage, best: Candidate) -> None:
    settings = stage.settings.pool
    task_cues = stage.hints.get("cues", {})
    task_templates = [b["template"] for b in stage.hints.get("baselines", {}).values() if not b.get("chat")]
    family = stage.loaded.family
    pair = stage.cfg.data.text_pair_column is not None
    generated = patterns(pair, family.answer_is_next,
                         [_lead(c) for c in _merge(INPUT_CUES, task_cues.get("input", []),
                                                   settings.input_cues)],
                         _merge(PAIR_ANSWER_CUES if pair else ANSWER_CUES,
                                task_cues.get("answer", []), settings.answer_cues))
    random.Random(stage.seed).shuffle(generated)
    mine = list(dict.fromkeys(settings.templates + task_templates))
    start = replace(best, calibrate=False, chat=False, instruction=None)  # words (and per-fold words) kept
    plain = [replace(start, template=t) for t in mine]
    plain += [replace(start, template=t) for t in generated if t not in mine]
    chats = []
    if settings.chat and family.answer_is_next and getattr(stage.loaded.tokenizer, "chat_template", None):
        instruction = task_cues.get("instruction") or _instruction(best)
        folds = None if best.fold_words is None else [capitalised(dict(f)) for f in best.fold_words]
        for cue in map(_lead, _merge(INPUT_CUES, task_cues.get("input", []), settings.input_cues)):
            chats.append(Candidate(f"{cue}{{text}}{' {text_pair}' if pair else ''} {{answer}}",
                                   best.words, chat=True, instruction=instruction, demos=best.demos)
                         .with_words(capitalised(dict(best.words)), folds))
    budget = max(settings.max_candidates, len(mine))
    chosen = plain[:budget]
    chosen += chats[: max(0, settings.max_candidates - len(chosen))]
    stage.plan(len(chosen))
    for i, cand in enumerate(chosen):
        how = "your template" if i < len(settings.templates) else "pool pattern"
        stage.consider(cand, how, generated=i >= len(settings.templates))


def patterns(pair: bool, answer_last: bool, input_cues: list[str], answer_cues: list[str]) -> list[str]:
    """Templates from cue phrases. `answer_last`: the model reads the answer after the input
    (causal); otherwise patterns with the answer first are added (masked, seq2seq)."""
    out = []
    for cue in answer_cues:
        for sep in SEPARATORS:
            if pair:
                for first, second in PAIR_CUES:
                    out.append(f"{first}{{text}}{sep}{second}{{text_pair}}{sep}{cue} {{answer}}")
            else:
                for lead in input_cues:
                    out.append(f"{lead}{{text}}{sep}{cue} {{answer}}")
                    if not answer_last:
                        out.append(f"{cue} {{answer}}.{sep}{lead}{{text}}")
    return list(dict.fromkeys(out))


def _merge(*lists: list[str]) -> list[str]:
    return list(dict.fromkeys(item for items in lists for item in items))


def _lead(cue: str) -> str:
    """An input cue as it sits before the input: `Review:` -> `Review: `."""
    return cue if not cue or cue[-1].isspace() else cue + " "


def _instruction(best: Candidate) -> str:
    options = [ws[0] for _, ws in best.words]
    listed = ", ".join(options[:-1]) + f" or {options[-1]}" if len(options) > 1 else options[0]
    return f"Answer with one word: {listed}."
