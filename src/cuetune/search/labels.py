"""Label-word search, after LM-BFF (Gao et al. 2021, section 5.1).

1. With the current best template, the model's log-probabilities over the whole vocabulary at
   the answer position are computed once for every training example (and once for the
   content-free inputs, for calibrated ranking).
2. Candidate words per class: half by LM-BFF's criterion (the summed log-probability over that
   class's examples), half by contrast (the class's mean log-probability less the other
   classes'), which finds words that separate the classes when one word is likely everywhere.
   Only tokens among the first `vocab_top` ids that are a whole alphabetic word on their own
   (the word, encoded as the verbalizer encodes it, gives back exactly that token) are kept,
   and on a causal model only those after which the model expects a new word with
   probability >= 0.5 after a short sentence (`word_ends`), so no word fragment wins on 16
   examples a class by chance. In scripts written without spaces (Chinese, Japanese, Thai) any
   next character may start a word (`starts_word`). docs/prompts.md has what each filter caught.
3. Joint assignments (one word per class, all distinct) are ranked by training accuracy (ties:
   by the gold label's mean log-probability among the chosen words), read off the stored
   log-probabilities without running the model again: exhaustively when there
   are at most 50,000, otherwise by coordinate ascent from the per-class best words.
4. The best `assignments` are scored on dev through the real pipeline, with your own words
   (`search.labels.words`, any number of tokens) beside them.
With k-fold selection, steps 1-3 run on all of train+dev (the words logged and written to
best.yaml) and once without each fold; the r-th candidate is scored on each fold with the r-th
assignment learned without it.
"""

from __future__ import annotations

import itertools
import math
import unicodedata
from collections.abc import Callable

import torch

from cuetune.search import prior
from cuetune.search.candidates import Candidate
from cuetune.search.scoring import answer_logprobs
from cuetune.search.stage import Stage

EXHAUSTIVE = 50_000


def run(stage: Stage, best: Candidate) -> None:
    settings = stage.settings.labels
    scorer = stage.scorer
    _check_cap(stage, best)
    keep = prior.build(stage.labels, {label: list(ws) for label, ws in best.words}, settings.language,
                       settings.min_zipf, settings.related, [e.text for e in stage.train],
                       settings.related_top).keeps
    if scorer.folds:  # k-fold: words learned on all the data, and without each fold
        ranked = _ranked(stage, best, scorer.dev, scorer.dev, keep)
        per_fold = [_ranked(stage, best, scorer.rest(f), scorer.rest(f), keep)
                    for f in range(len(scorer.folds))]
    else:
        ranked, per_fold = _ranked(stage, best, stage.train, None, keep), None
    if ranked is None or (per_fold and any(r is None for r in per_fold)):
        return
    n = min(settings.assignments, len(ranked))
    stage.plan(n + (1 if settings.words else 0))
    extra = _needs(stage, best) if settings.keep_yours else {}
    for r in range(n):
        acc, chosen = ranked[r]
        folds = None if per_fold is None else [f[min(r, len(f) - 1)][1] for f in per_fold]
        how = f"label words, rank {r + 1} (train acc {acc:.3f})"
        stage.consider(best.with_words(chosen, folds), how, extra=extra)
    if settings.words:
        mine = {label: settings.words.get(label) or [w for w in dict(best.words)[label]]
                for label in stage.labels}
        stage.consider(best.with_words(mine, [mine] * len(scorer.folds) if scorer.folds else None),
                       "your label words")


def _needs(stage: Stage, best: Candidate) -> dict:
    """What found words must beat to replace the starting words: the start's dev score plus one
    standard error of it, sqrt(p(1-p)/n) on n selection examples ({}: the start was never
    scored)."""
    known = stage.log.known(best)
    if known is None:
        return {}
    p, n = known[0], len(stage.scorer.dev)
    return {"needs": round(p + math.sqrt(p * (1 - p) / n), 6), "start_dev": p}


def _check_cap(stage: Stage, best: Candidate) -> None:
    """Warn when the prompt's own words lie past `vocab_top`: the cap suits English BPE, where
    common words come first; on a multilingual vocabulary a search in another language would
    be offered only English words (docs/prompts.md)."""
    tok, cap = stage.loaded.tokenizer, stage.settings.labels.vocab_top
    ids = [tok(w, add_special_tokens=False)["input_ids"][:1] for ws in dict(best.words).values() for w in ws]
    first = [i[0] for i in ids if i]
    if first and min(first) >= cap:
        stage.warn(f"your label words are token ids {min(first)} and above, past search.labels.vocab_top="
                   f"{cap}: candidates come only from the first {cap} ids, mostly English on "
                   f"multilingual tokenizers; to search words in your prompt's language set "
                   f"search.labels.vocab_top={len(tok)} (the whole vocabulary)")


def _ranked(stage: Stage, best: Candidate, examples, pool,
            keep: Callable[[int, str], bool]) -> list[tuple[float, dict]] | None:
    """Assignments {label: [word]} by accuracy on `examples`, best first (None: a class has no
    candidate word). `pool`: where demonstrations come from (None: the training split);
    `keep(class, word)`: the prior's check."""
    settings, batch = stage.settings.labels, stage.cfg.train.eval_batch_size
    pipe = stage.scorer.pipeline(best, pool)
    logp = answer_logprobs(pipe, examples, batch)  # [N, V]
    stage.scorer.scorings += len(examples)
    if best.calibrate:  # rank as calibrated scoring will read them: p / p_cf
        free = answer_logprobs(pipe, pipe.content_free_examples(), batch)
        logp = logp - free.exp().mean(0).clamp_min(1e-30).log()
    gold = torch.tensor([e.label for e in examples])
    words = [candidate_tokens(logp[:, :settings.vocab_top], gold, c, settings.top_k, pipe, keep)
             for c in range(len(stage.labels))]
    if any(not w for w in words):
        empty = stage.labels[next(c for c, w in enumerate(words) if not w)]
        stage.warn(f"no whole-word candidates for label '{empty}' (no training example, the "
                   "tokenizer has no whole-word tokens there, or none passed the prior: "
                   "search.labels.min_zipf, related); label search skipped")
        return None
    tok = pipe.loaded.tokenizer
    return [(acc, {stage.labels[c]: [tok.decode([t]).strip()] for c, t in enumerate(assignment)})
            for acc, assignment in rank_assignments(logp, gold, words)]


def candidate_tokens(logp: torch.Tensor, gold: torch.Tensor, c: int, k: int, pipe,
                     keep: Callable[[int, str], bool] | None = None) -> list[int]:
    """Up to k whole-word token ids for class c: LM-BFF's summed log-probability and the
    contrast with the other classes, alternately; `keep(c, word)`: the prior's check."""
    mine = gold == c
    if not mine.any():
        return []
    summed = logp[mine].sum(0)  # [V]
    others = logp[~mine].mean(0) if (~mine).any() else torch.zeros_like(summed)
    contrast = logp[mine].mean(0) - others
    out: list[int] = []
    orders = [summed.argsort(descending=True).tolist(), contrast.argsort(descending=True).tolist()]
    pos = [0, 0]
    checked = 0
    while len(out) < k and checked < 20 * k and any(p < len(o) for p, o in zip(pos, orders, strict=True)):
        which = len(out) % 2 if pos[len(out) % 2] < len(orders[len(out) % 2]) else 1 - len(out) % 2
        t = orders[which][pos[which]]
        pos[which] += 1
        if t in out:
            continue
        checked += 1
        # the prior first: a lookup and a small encoder's embedding, where whole_word runs the
        # model once per token (with the prior refusing most words, that order was 90% of a
        # label stage: 497 forwards, 130 s of a 160 s stage on a 16-example task)
        if (keep is None or keep(c, pipe.loaded.tokenizer.decode([t]).strip())) and whole_word(t, pipe):
            out.append(t)
    return out


def whole_word(token: int, pipe) -> bool:
    """Whether `token` alone is a word that encodes back to just itself as a label word and,
    on a causal model, one the model expects to end there (not a fragment like *lect*)."""
    tok = pipe.loaded.tokenizer
    if token in set(tok.all_special_ids):
        return False
    word = tok.decode([token]).strip()
    if not word.isalpha():
        return False
    lead = " " if pipe.encoder.answer_space else ""
    if tok(lead + word, add_special_tokens=False)["input_ids"] != [token]:
        return False
    return not pipe.loaded.family.answer_is_next or word_ends(token, pipe) >= 0.5


_BOUNDARIES: dict[int, torch.Tensor] = {}


def word_ends(token: int, pipe) -> float:
    """The model's probability, after `token` read as the next word of a short sentence ("It
    was", then a newline for a token with no leading space), that the next token starts a new
    word (a space, punctuation or the end). Read inside a sentence, not alone at the start of
    a text, where fragments also look finished (docs/prompts.md)."""
    tok, model = pipe.loaded.tokenizer, pipe.loaded.model
    key = id(tok)
    if key not in _BOUNDARIES:  # which tokens start a word when written after "a"
        a = tok("a", add_special_tokens=False)["input_ids"][-1]
        head = len(tok.decode([a]))
        tails = [t[head:] for t in tok.batch_decode([[a, t] for t in range(len(tok))])]
        ends = [starts_word(t) for t in tails]
        for special in tok.all_special_ids:
            ends[special] = special == tok.eos_token_id
        _BOUNDARIES[key] = torch.tensor(ends)
    context = "It was" if tok.decode([token])[:1].isspace() else "It was\n"
    ids = ([tok.bos_token_id] if tok.bos_token_id is not None else [])
    ids += tok(context, add_special_tokens=False)["input_ids"] + [token]
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, -1].float()
    probs = logits[: len(_BOUNDARIES[key])].softmax(-1).cpu()
    return probs[_BOUNDARIES[key]].sum().item()


UNSEGMENTED = ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR")
"""Scripts written without spaces between words (Unicode name prefixes): there every character
may begin a word, so a token followed by one is not a fragment."""


def starts_word(tail: str) -> bool:
    """Whether text that follows a token begins a new word: the end, a space, punctuation, or a
    character of a script written without spaces (there a model goes on writing the next
    character, and every Chinese label word would look like a fragment)."""
    if not tail or tail[0].isspace() or not tail[0].isalnum():
        return True
    return unicodedata.name(tail[0], "").startswith(UNSEGMENTED)


def rank_assignments(logp: torch.Tensor, gold: torch.Tensor,
                     words: list[list[int]]) -> list[tuple[float, tuple]]:
    """Assignments (one distinct token per class) by training accuracy, best first."""
    total = 1
    for w in words:
        total *= len(w)
    if total <= EXHAUSTIVE:
        combos = [a for a in itertools.product(*words) if len(set(a)) == len(a)]
    else:
        combos = _coordinate_ascent(logp, gold, words)
    if not combos:
        return []
    ids = torch.tensor(combos)  # [A, L]
    scores = logp[:, ids]  # [N, A, L]
    acc = (scores.argmax(-1) == gold[:, None]).float().mean(0)  # [A]
    fit = scores.log_softmax(-1).gather(2, gold.view(-1, 1, 1).expand(-1, len(combos), 1)).mean(0)[:, 0]
    order = sorted(range(len(combos)), key=lambda i: (-acc[i].item(), -fit[i].item(), i))
    return [(acc[i].item(), combos[i]) for i in order]


def _coordinate_ascent(logp, gold, words, rounds: int = 4) -> list[tuple]:
    """Assignments visited while improving one class's word at a time (too many to enumerate)."""
    current = []
    for w in words:
        current.append(next((t for t in w if t not in current), w[0]))
    seen = {tuple(current)}
    for _ in range(rounds):
        improved = False
        for c, options in enumerate(words):
            trials = [tuple(current[:c] + [t] + current[c + 1:]) for t in options]
            trials = [a for a in trials if len(set(a)) == len(a)]
            seen.update(trials)
            accs = [(logp[:, list(a)].argmax(-1) == gold).float().mean().item() for a in trials]
            best = trials[max(range(len(trials)), key=lambda i: accs[i])]
            if list(best) != current:
                current, improved = list(best), True
        if not improved:
            break
    return sorted(seen)
