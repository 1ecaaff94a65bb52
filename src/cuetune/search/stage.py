"""What a searcher sees while it runs: the data (train to learn from, dev to select on), the
scorer, the log, its settings and seed, and `consider`, which scores a candidate and logs it.

Searchers never touch the test split: the search loads its data with `data.test` unset.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cuetune.config import RunConfig
from cuetune.data.examples import Example
from cuetune.engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from cuetune.engine.progress import Ticker
from cuetune.errors import CuetuneError
from cuetune.search.candidates import Candidate, Record, SearchLog
from cuetune.search.scoring import Scorer
from cuetune.search.settings import SearchSettings

log = logging.getLogger("cuetune.search")


@dataclass
class Stage:
    name: str
    """`<index>-<searcher>`: the log's stage field and the state file's name."""
    cfg: RunConfig
    settings: SearchSettings
    labels: list[str]
    train: list[Example]
    scorer: Scorer
    log: SearchLog
    folder: Path
    seed: int
    loaded: object
    progress: Callable[[str, int, int], None] | None = None
    started: float = field(default_factory=time.perf_counter)
    done: int = 0
    total: int = 0
    warnings: list[str] = field(default_factory=list)
    hints: dict = field(default_factory=dict)
    """The named task's baselines and cue phrases (resources/baselines.yaml)."""
    ticker: Ticker | None = None

    @property
    def state_dir(self) -> Path:
        """Where a stage that learns (RL, gradient) keeps its resumable state."""
        return self.folder / "state" / self.name

    def save_state(self, loop: dict, tensors: dict | None = None, optimizer=None, gen=None) -> None:
        """The stage's state in the training checkpoint's format (safetensors + JSON, no pickle),
        written atomically: a kill leaves the previous state whole."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        rng = {"gen": gen.get_state()} if gen is not None else {}
        opt = optimizer.state_dict() if optimizer is not None else {"state": {}, "param_groups": []}
        save_checkpoint(self.state_dir, Checkpoint({**loop, "scorings": self.scorer.scorings},
                                                   dict(tensors or {}), None, opt, {}, rng))

    def load_state(self, module=None, optimizer=None, gen=None) -> dict | None:
        """The saved loop state (None: none saved), restoring the module, optimiser and
        generator in place."""
        ckpt = load_checkpoint(self.state_dir)
        if ckpt is None:
            return None
        if module is not None:
            module.load_state_dict(ckpt.adapter)
        if optimizer is not None:
            optimizer.load_state_dict(ckpt.optimizer)
        if gen is not None:
            gen.set_state(ckpt.rng["gen"])
        loop = dict(ckpt.state)
        self.scorer.scorings = max(self.scorer.scorings, loop.pop("scorings"))
        return loop

    def plan(self, total: int) -> None:
        """How many units (candidates or steps) this stage will take, for the progress bar and
        the progress lines."""
        self.total = total
        self.ticker = Ticker(log, f"search {self.name}", total)
        log.info("search %s: %d to score", self.name, total)
        self._tick(0)

    def advance(self, n: int = 1) -> None:
        self._tick(n)

    def _tick(self, n: int) -> None:
        self.done += n
        if self.ticker is not None:
            self.ticker.tick(self.done)
        if self.progress:
            self.progress(self.name, self.done, self.total)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning("%s: %s", self.name, message)

    def consider(self, cand: Candidate, how: str, step: int = 0, extra: dict | None = None,
                 tick: bool = True, generated: bool = True) -> list[Record]:
        """Score `cand` on dev (each calibration mode) and log it; a generated candidate that
        cannot be encoded (a word the tokenizer cannot take) is skipped with a warning, one of
        yours is an error."""
        try:
            scored = self.scorer.score(cand)
        except CuetuneError as exc:
            if not generated:
                raise
            self.warn(f"skipped {cand.short()}: {exc}")
            scored = []
        records = []
        for variant, score, metrics, _ in scored:
            rec = Record(self.name, how, variant, score, metrics, step,
                         time.perf_counter() - self.started, self.scorer.scorings, dict(extra or {}))
            self.log.add(rec)
            records.append(rec)
        if tick:
            self.advance()
        return records


def stage_index(rec: Record) -> int:
    """0 for baselines, i for the i-th searcher's stage (`<i>-<name>`)."""
    head = rec.stage.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


def best_of(records: list[Record]) -> Record | None:
    """Highest dev score; ties go to the earliest logged (simpler prompts come first). A record
    that must clear a bar to count (`needs`: found label words against the words they would
    replace, search.labels.keep_yours) and does not is passed over."""
    best = None
    for rec in records:
        if "needs" in rec.extra and rec.dev <= rec.extra["needs"]:
            continue
        if best is None or rec.dev > best.dev:
            best = rec
    return best
