"""A searched prompt (`Candidate`) and the search log (`prompts.jsonl`).

The log is the search's memory: every scored candidate is one JSON line, appended and flushed
as soon as it is scored, with how it was found and its dev score. A rerun of the same search
reads it back and scores nothing twice, which is what makes a search resumable; candidates are
keyed by their prompt fields, so a prompt two searchers find is scored once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from cuetune import atomic
from cuetune.errors import ConfigError


@dataclass(frozen=True)
class Candidate:
    """The prompt fields a search varies; `prompt()` is a run config's `prompt` section."""

    template: str
    words: tuple[tuple[str, tuple[str, ...]], ...]
    """label -> its words, in label order."""
    calibrate: bool = False
    chat: bool = False
    instruction: str | None = None
    demos: tuple[tuple[str, object], ...] | None = None
    """`prompt.demonstrations` settings (sorted items, no pool: the run fills it)."""
    fold_words: tuple | None = None
    """k-fold selection: per fold, the label words learned without that fold (as `words`);
    None: the same words on every fold. `words` are then those learned from all the data."""

    @classmethod
    def from_prompt(cls, prompt: dict, labels: list[str]) -> Candidate:
        verbalizer = prompt.get("verbalizer") or {label: [label] for label in labels}
        words = tuple((label, tuple([verbalizer[label]] if isinstance(verbalizer[label], str)
                                    else verbalizer[label])) for label in labels)
        demos = prompt.get("demonstrations")
        demos = None if demos is None else tuple(sorted((k, v) for k, v in demos.items()
                                                        if k != "pool" and v is not None))
        return cls(prompt["template"], words, bool(prompt.get("calibrate", False)),
                   bool(prompt.get("chat", False)), prompt.get("instruction"), demos)

    def prompt(self) -> dict:
        return {"template": self.template, "verbalizer": {label: list(ws) for label, ws in self.words},
                "calibrate": self.calibrate, "chat": self.chat, "instruction": self.instruction,
                "demonstrations": None if self.demos is None else dict(self.demos)}

    def key(self) -> str:
        extra = {} if self.fold_words is None else {"fold_words": self.fold_words}
        return json.dumps({**self.prompt(), **extra}, sort_keys=True, ensure_ascii=False)

    def on_fold(self, fold: int) -> Candidate:
        """The prompt scored on held-out fold `fold` (its words learned without it)."""
        if self.fold_words is None:
            return self
        return replace(self, words=self.fold_words[fold], fold_words=None)

    def with_words(self, words: dict[str, list[str]], per_fold: list[dict] | None = None) -> Candidate:
        def as_tuple(w):
            return tuple((label, tuple(w[label])) for label, _ in self.words)

        folds = None if per_fold is None else tuple(as_tuple(w) for w in per_fold)
        return replace(self, words=as_tuple(words), fold_words=folds)

    def with_template(self, template: str, chat: bool | None = None,
                      instruction: str | None = None) -> Candidate:
        return replace(self, template=template, chat=self.chat if chat is None else chat,
                       instruction=self.instruction if chat is None else instruction)

    def calibrated(self, on: bool) -> Candidate:
        return replace(self, calibrate=on)

    def with_demos(self, demos: dict | None) -> Candidate:
        return replace(self, demos=None if demos is None else tuple(sorted(demos.items())))

    def short(self) -> str:
        words = " / ".join(",".join(ws) for _, ws in self.words)
        extra = (" +cal" if self.calibrate else "") + (" [chat]" if self.chat else "")
        if self.demos is not None:
            d = dict(self.demos)
            extra += f" +demos({d.get('select', 'similar')} x{d.get('per_class', 1)})"
        instr = f"{self.instruction!r} " if self.instruction else ""
        return f"{instr}{self.template!r} -> {words}{extra}"


@dataclass
class Record:
    stage: str
    """`<index>-<searcher>`, or `baseline`."""
    how: str
    """How the searcher found it, in a few words."""
    candidate: Candidate
    dev: float
    """The selection score (dev metric, or mean over folds)."""
    metrics: dict
    step: int = 0
    seconds: float = 0.0
    scorings: int = 0
    """Model scorings of one prompt on one example the stage had spent when this was logged."""
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        folds = self.candidate.fold_words
        extra = {} if folds is None else {"fold_words": [{lab: list(ws) for lab, ws in f} for f in folds]}
        return {"stage": self.stage, "how": self.how, "step": self.step, "dev": self.dev,
                "metrics": self.metrics, "prompt": self.candidate.prompt(),
                "seconds": round(self.seconds, 2), "scorings": self.scorings, **extra, **self.extra}

    @classmethod
    def from_json(cls, row: dict, labels: list[str]) -> Record:
        known = {"stage", "how", "step", "dev", "metrics", "prompt", "seconds", "scorings", "fold_words"}
        cand = Candidate.from_prompt(row["prompt"], labels)
        if row.get("fold_words") is not None:
            cand = cand.with_words(dict(cand.words), row["fold_words"])
        return cls(row["stage"], row["how"], cand, row["dev"],
                   row["metrics"], row.get("step", 0), row.get("seconds", 0.0), row.get("scorings", 0),
                   {k: v for k, v in row.items() if k not in known})


class SearchLog:
    """`prompts.jsonl`: read back on start, appended (and flushed) per scored candidate."""

    def __init__(self, path: Path, labels: list[str]):
        self.path = path
        self.records: list[Record] = []
        self.scores: dict[str, tuple[float, dict]] = {}
        self._seen: set[tuple[str, str, int]] = set()
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = Record.from_json(json.loads(line), labels)
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                if n == len(lines):
                    self._drop_last_line(lines)  # cut by a crash mid-write: scored again
                    break
                raise ConfigError(f"{path}:{n}: not a search log line ({exc}); remove the "
                                  "file to start the search afresh") from None
            self._remember(rec)
        self._file = None

    def _drop_last_line(self, lines: list[str]) -> None:
        atomic.write_text(self.path, "".join(line + "\n" for line in lines[:-1]))

    def _remember(self, rec: Record) -> None:
        self.records.append(rec)
        self.scores[rec.candidate.key()] = (rec.dev, rec.metrics)
        self._seen.add((rec.stage, rec.candidate.key(), rec.step))

    def known(self, cand: Candidate) -> tuple[float, dict] | None:
        return self.scores.get(cand.key())

    def add(self, rec: Record) -> None:
        """Append a record unless this stage logged this candidate at this step already."""
        if (rec.stage, rec.candidate.key(), rec.step) in self._seen:
            return
        self._remember(rec)
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open, closed in close())
        self._file.write(json.dumps(rec.to_json(), ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
