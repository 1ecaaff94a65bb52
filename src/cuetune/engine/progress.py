"""Progress as log lines, for where no progress bar draws (a log file, CI, a pipe).

Long loops (inference over a split, training, a search stage) report through the `cuetune`
loggers at INFO; `cuetune`'s command line shows those lines when its output is not a terminal
(`cli._progress_lines`), and a terminal gets its live bars instead. Library users see them
when they turn INFO on for `cuetune`.
"""

from __future__ import annotations

import logging
import time

EVERY = 10.0
"""Seconds between two lines of one loop."""


class Ticker:
    """One loop's progress: `tick(done)` writes a line when `EVERY` seconds have passed since
    the last, and one when a loop that wrote any ends. A loop shorter than that writes nothing
    (a dev evaluation inside training, a search candidate), a long one a line every few
    seconds, never one a step."""

    def __init__(self, log: logging.Logger, what: str, total: int, every: float | None = None):
        self.log, self.what, self.total = log, what, total
        self.every = EVERY if every is None else every
        self.start = self.last = time.perf_counter()
        self.wrote = False

    def tick(self, done: int, detail: str = "") -> None:
        now = time.perf_counter()
        if now - self.last < self.every and not (done >= self.total and self.wrote):
            return
        self.last, self.wrote = now, True
        self.log.info("%s: %d of %d%s (%.0f s)", self.what, done, self.total,
                      f", {detail}" if detail else "", now - self.start)
