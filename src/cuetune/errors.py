"""User-facing errors.

Every error a user can cause (bad config, bad data, bad template, wrong adapter) is a
`CuetuneError` whose message is one line: *where* (file and line, or config field) and *what to
do*. The CLI prints it without a traceback; library code never calls `exit()`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CuetuneError(Exception):
    """A problem the user can fix; the message names the place and the fix."""


class ConfigError(CuetuneError):
    pass


class DataError(CuetuneError):
    pass


class TemplateError(CuetuneError):
    pass


class VerbalizerError(CuetuneError):
    pass


class ModelError(CuetuneError):
    pass


class ArtifactError(CuetuneError):
    pass


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return " did you mean 'x'?" for the closest choice, or "" when nothing is close."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" did you mean '{match[0]}'?" if match else ""
