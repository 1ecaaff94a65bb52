"""The `search:` section of a search config: which searchers run, in what order, with what
budget. Everything else in the file is an ordinary run config (model, data, prompt, method,
train), so `best.yaml` is that config with the prompt the search chose.

A named task (`search.task: sst-2`) fills `data` and `prompt` from the bench task table for
one (K, seed) split, so a search on a benchmark needs no file paths.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cuetune.config import Strict


class LabelSearch(Strict):
    """LM-BFF's automatic label words (Gao et al. 2021, section 5.1)."""

    top_k: int = Field(20, ge=1, le=500)
    """Candidate words per class: the tokens the model itself puts most mass on after the
    template, summed over that class's training examples."""
    assignments: int = Field(10, ge=1, le=200)
    """Joint assignments (one word per class), the best by training score, scored on dev."""
    words: dict[str, list[str]] = {}
    """Your own candidate words per label (any number of tokens), tried beside the found ones."""
    vocab_top: int = Field(10000, ge=10)
    """Candidate words come from the first `vocab_top` token ids (BPE vocabularies list common
    pieces first): with 16 examples a class, rare tokens fit the training set by chance."""
    min_zipf: float = Field(3.0, ge=0, le=8)
    """A found word must be this frequent in the language (wordfreq's Zipf scale: 3 is once per
    million words; 0: no check), so fragments and rare tokens are not offered (search.prior)."""
    language: str = "auto"
    """wordfreq's language code for `min_zipf`; `auto`: English where the training inputs are
    mostly ASCII letters, else no frequency check."""
    related: bool = True
    """A found word must be related to its own class (MiniLM similarity to the label names, or
    to each class's current word where the names are codes): nearer it than any other class,
    and among the `related_top` share of common words nearest it."""
    related_top: float = Field(0.05, gt=0, le=1)
    """The share of the language's 5,000 commonest words a found word must be among, by
    similarity to its class (1: only the nearer-than-the-others check). 0.05 keeps *bad*,
    *worse*, *terrible* for "negative" and *who*, *person* for "human"; it stops *Michigan*
    (22%) and *stars* (12%), which passed before (docs/prompts.md)."""
    keep_yours: bool = True
    """Found words replace the words the stage started from only when they beat them on dev
    by more than one standard error of that dev score (the selection's noise); summary.json's
    `label_words` says by how much they did or did not."""


class PoolSearch(Strict):
    """Templates generated from the input type, cue phrases and answer positions."""

    templates: list[str] = []
    """Your own candidate templates, always scored."""
    input_cues: list[str] = []
    """Phrases before the input (beside the generic ones and the task's)."""
    answer_cues: list[str] = []
    """Phrases before the answer (beside the generic ones and the task's)."""
    chat: bool = True
    """Also try each pattern as a chat-template instruction, where the tokenizer has a chat
    template."""
    max_candidates: int = Field(60, ge=1, le=2000)
    """Patterns scored at most; the generated list is cut after your own templates."""


class TokenSearch(Strict):
    """Discrete prompt tokens written into the template (RL, gradient, random and model-sampled
    search share the layout and budget)."""

    num_tokens: int = Field(3, ge=1, le=20)
    position: Literal["after", "before"] = "after"
    """`after` the input: the input's keys and values are computed once per batch and each
    candidate costs only its own tokens (causal models). `before`: in front of the input."""
    vocab_top: int = Field(5000, ge=10)
    """Tokens are drawn from the first `vocab_top` ids that decode to a word or punctuation."""
    steps: int = Field(100, ge=1)
    samples: int = Field(8, ge=1, le=256)
    """Prompts per step (RL: sampled from the policy; gradient: replacement candidates)."""
    batch_size: int = Field(16, ge=1)
    """Training examples each candidate is scored on per step."""
    eval_every: int = Field(10, ge=1)
    """Steps between dev scorings (each logs one candidate) and state saves."""


class RLSearch(TokenSearch):
    """RLPrompt-style (Deng et al. 2022) policy over discrete prompt tokens."""

    lr: float = Field(1e-3, gt=0)
    hidden: int = Field(256, ge=8)
    """Width of the policy MLP over the frozen model's hidden states."""
    entropy: float = Field(0.1, ge=0)
    """Entropy bonus: keeps the policy from collapsing onto one prompt early (docs/prompts.md
    has what lower values did)."""


class DemoSearch(Strict):
    """Demonstrations (LM-BFF) tried on the best prompt: each entry is a
    `prompt.demonstrations` section (pool left out: the run fills it)."""

    options: list[dict] = [{"select": "similar", "per_class": 1}, {"select": "random", "per_class": 1},
                           {"select": "similar", "per_class": 2}]


class SearchSettings(Strict):
    searchers: list[str] = ["labels", "pool", "labels"]
    """Stages, in order; each starts from the best prompt so far. Registered: labels, pool, rl,
    gradient, random, sampled, demos."""
    chain: bool = True
    """Each stage starts from the best prompt so far; false: every stage starts from the best
    baseline, so searchers can be compared from the same start at the same budget."""
    task: str | None = None
    data_root: str = "../shared/data"
    k: int = Field(16, ge=1)
    seed: int = 13
    """The split seed of a named task, and the seed of every searcher."""
    selection: Literal["dev", "kfold"] = "dev"
    """`dev`: candidates are scored on the dev split. `kfold`: by k-fold cross-validation over
    train+dev (see docs/prompts.md); the token searchers (rl, gradient, random, sampled) are
    refused with it, as they would run once per fold."""
    folds: int = Field(4, ge=2, le=20)
    baselines: bool = True
    """Score the baselines first: the generic plain wordings (`search.generic`) for any task,
    and a named task's frozen hand baselines (resources/baselines.yaml)."""
    own_task: bool = False
    """Search a named task as if it were your own: its data and label names only, no task
    baselines, cue phrases or hand label words; the search starts from the plain
    `Text: {text}\nLabel: {answer}` with the label names as words. The bench's honest row."""
    combine: int = Field(1, ge=1, le=8)
    """`best.yaml` combines up to `combine` top prompts with distinct templates, each with its
    own label words and calibration, as a mixture of prompts (`search.combination`); members
    score within one standard error of the best on dev, and the combination replaces the single
    best only if its own dev score is no further below; `single.yaml` keeps the single best.
    1: `best.yaml` is the single best prompt. It changes the outputs only, so an existing
    search folder resumes with another value."""
    calibrate: Literal["both", "off", "on"] = "both"
    """Score each candidate raw, contextually calibrated, or both (one forward serves both)."""
    out: str = "search/default"
    labels: LabelSearch = LabelSearch()
    pool: PoolSearch = PoolSearch()
    rl: RLSearch = RLSearch()
    gradient: TokenSearch = TokenSearch(steps=30)
    random: TokenSearch = TokenSearch()
    sampled: TokenSearch = TokenSearch()
    demos: DemoSearch = DemoSearch()
