"""Metrics for generated text against one or more references per input.

BLEU and chrF come from sacrebleu (corpus level, its standard tokenisation), ROUGE-L from
rouge-score (the best reference per input, averaged). Exact match and token F1 follow the
SQuAD answer normalisation (lower case, no punctuation or articles, single spaces) and take the
best reference. Every score is 0-100.
"""

from __future__ import annotations

import re
import string
from collections import Counter

import sacrebleu

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: 'The  Cat!' -> 'cat'."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def generation_metrics(predictions: list[str], references: list[tuple[str, ...] | list[str]]) -> dict:
    """Scores of `predictions` against their references (several per input allowed)."""
    from rouge_score import rouge_scorer  # here: it imports nltk, seconds no classification run needs

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference sets")
    if not predictions:
        raise ValueError("no predictions to score")
    if any(not refs for refs in references):
        raise ValueError("every input needs at least one reference")
    width = max(len(r) for r in references)
    streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    pairs = zip(predictions, references, strict=True)
    rouges = [scorer.score_multi(list(refs), pred) for pred, refs in pairs]
    rouge = {key: [r[key].fmeasure for r in rouges] for key in ("rouge1", "rouge2", "rougeL")}
    exact = [max(float(normalize_answer(pred) == normalize_answer(r)) for r in refs)
             for pred, refs in zip(predictions, references, strict=True)]
    f1 = [max(token_f1(pred, r) for r in refs) for pred, refs in zip(predictions, references, strict=True)]
    n = len(predictions)
    return {
        "bleu": round(sacrebleu.corpus_bleu(predictions, streams).score, 4),
        "chrf": round(sacrebleu.corpus_chrf(predictions, streams).score, 4),
        "rouge_1": round(100 * sum(rouge["rouge1"]) / n, 4),
        "rouge_2": round(100 * sum(rouge["rouge2"]) / n, 4),
        "rouge_l": round(100 * sum(rouge["rougeL"]) / n, 4),
        "exact_match": round(100 * sum(exact) / n, 4),
        "token_f1": round(100 * sum(f1) / n, 4),
        "n": n,
        "references_per_input": round(sum(len(r) for r in references) / n, 3),
    }
