"""Scoring candidate prompts as text, through the pipeline a run builds (zero-shot method), so a
searched prompt's dev score is exactly what `cuetune train best.yaml` with `zero-shot` reports.

Every candidate is scored raw and, when asked, contextually calibrated: calibration divides the
same probabilities by the prompt's content-free distribution, so both come from one forward.

With k-fold selection the score is the mean over k stratified folds of train+dev: on each
fold the candidate is scored with what was learned without that fold (its per-fold label
words; demonstrations drawn from the other folds), which is cross-validation of how the
candidate was made, not of a prompt fixed after seeing every fold.
The search log is consulted first: a candidate scored before (by this search or an interrupted
run of it) is never scored again.
"""

from __future__ import annotations

import random

import torch

from cuetune.config import RunConfig, variant
from cuetune.data.examples import Example
from cuetune.engine.inference import run_batches
from cuetune.engine.pipeline import TINY, Pipeline, build
from cuetune.metrics.classification import classification_metrics
from cuetune.prompt.demonstrations import with_pool
from cuetune.search.candidates import Candidate, SearchLog


class Scorer:
    def __init__(self, cfg: RunConfig, loaded, labels: list[str], dev: list[Example], log: SearchLog,
                 modes: tuple[bool, ...] = (False, True), train: list[Example] | None = None):
        self.cfg, self.loaded, self.labels, self.dev, self.log = cfg, loaded, labels, dev, log
        self.train = train or []
        """The pool candidates with demonstrations draw them from."""
        self.modes = modes
        """Calibration off / on: which variants of each candidate are scored."""
        self.metric = cfg.train.metric
        self.scorings = 0
        """Prompt-on-example scorings this scorer ran (cached candidates cost none)."""
        self.folds: list[list[int]] | None = None
        """k-fold selection (`use_folds`): example indices of each fold of `dev`, which then
        holds train+dev."""

    def use_folds(self, examples: list[Example], k: int, seed: int) -> None:
        """Select by k-fold cross-validation over `examples` (train+dev): stratified folds."""
        rng = random.Random(seed)
        folds: list[list[int]] = [[] for _ in range(k)]
        at = 0
        for label in sorted({e.label for e in examples}):
            members = [i for i, e in enumerate(examples) if e.label == label]
            rng.shuffle(members)
            for i in members:
                folds[at % k].append(i)
                at += 1
        self.dev, self.folds = examples, [sorted(f) for f in folds]

    def rest(self, fold: int) -> list[Example]:
        """The examples outside `fold`: what is learned for scoring on it."""
        held = set(self.folds[fold])
        return [e for i, e in enumerate(self.dev) if i not in held]

    def pipeline(self, cand: Candidate, pool: list[Example] | None = None) -> Pipeline:
        cfg = variant(self.cfg, prompt={**cand.prompt(), "calibrate": False}, method={"name": "zero-shot"})
        return build(with_pool(cfg, self.train if pool is None else pool), self.labels, self.loaded)

    def variants(self, cand: Candidate) -> list[Candidate]:
        return [cand.calibrated(on) for on in self.modes]

    def score(self, cand: Candidate) -> list[tuple[Candidate, float, dict, bool]]:
        """[(variant, dev score, metrics, newly scored)] for each calibration mode."""
        variants = self.variants(cand)
        known = [self.log.known(v) for v in variants]
        if all(k is not None for k in known):
            return [(v, k[0], k[1], False) for v, k in zip(variants, known, strict=True)]
        parts = self.folds or [list(range(len(self.dev)))]
        per_fold = []  # per fold: (raw probs, content-free, gold)
        for f, idx in enumerate(parts):
            examples = [self.dev[i] for i in idx]
            fold_cand, pool = (cand.on_fold(f), self.rest(f)) if self.folds else (cand, None)
            raw, content_free = self.probs(fold_cand, examples, pool)
            per_fold.append((raw, content_free, [e.label for e in examples]))
        out = []
        for v in variants:
            scores = []
            for raw, content_free, gold in per_fold:
                probs = calibrate(raw, content_free) if v.calibrate else raw
                full = classification_metrics(self.labels, gold, probs)
                scores.append({k: full[k] for k in ("accuracy", "macro_f1")})
            metrics = {k: round(sum(s[k] for s in scores) / len(scores), 6) for k in ("accuracy", "macro_f1")}
            if self.folds:
                metrics["fold_std"] = round(float(torch.tensor([s[self.metric] for s in scores]).std()), 6)
            out.append((v, metrics[self.metric], metrics, True))
        return out

    def combined(self, prompt: dict, method: dict) -> dict | None:
        """Dev metrics of a combination's run sections (None with k-fold selection: its
        members' words were learned per fold)."""
        if self.folds:
            return None
        pipe = build(with_pool(variant(self.cfg, prompt=prompt, method=method), self.train), self.labels,
                     self.loaded)
        items = pipe.encoder.encode(self.dev, "search examples")
        probs = pipe.label_probs(items, self.cfg.train.eval_batch_size)
        self.scorings += len(self.dev) * len(method["prompts"])
        full = classification_metrics(self.labels, [e.label for e in self.dev], probs)
        return {k: full[k] for k in ("accuracy", "macro_f1")}

    def probs(self, cand: Candidate, examples: list[Example],
              pool: list[Example] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw label probabilities [N, L] and the content-free distribution [L] (`pool`: where
        demonstrations come from, default the training split)."""
        pipe = self.pipeline(cand, pool)
        items = pipe.encoder.encode(examples, "search examples")
        probs = pipe.label_probs(items, self.cfg.train.eval_batch_size)
        self.scorings += len(examples)
        return probs, pipe.content_free_probs()


def calibrate(probs: torch.Tensor, content_free: torch.Tensor) -> torch.Tensor:
    """Zhao et al.'s contextual calibration, in logs: p / p_cf renormalised."""
    return (probs.clamp_min(TINY).log() - content_free.clamp_min(TINY).log()).softmax(-1)


def answer_logprobs(pipe: Pipeline, examples: list[Example], batch_size: int) -> torch.Tensor:
    """Log-probabilities of every vocabulary token at the answer position [N, V] (what the
    model would put there with no verbalizer), in the examples' order."""
    model = pipe.model
    items = pipe.encoder.encode(examples, "search examples")
    out = None

    def step(batch, _):
        hidden = model.family.run(model.base, model.inputs(batch))  # [B, H]
        logits = model.family.token_logits(model.base, hidden, None)
        return logits.reshape(hidden.size(0), -1).log_softmax(-1).float().cpu()

    for idx, logprobs in run_batches(model, items, pipe.loaded.tokenizer.pad_token_id, batch_size, step):
        if out is None:
            out = torch.empty(len(items), logprobs.size(-1))
        out[idx] = logprobs
    return out
