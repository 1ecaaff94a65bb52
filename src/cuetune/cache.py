"""Where cuetune keeps what it makes once and reads many times: base models converted from
GGUF (`families.pretrained`) and task files converted from their published layout
(`data.tasks`). Never inside the repository or a run folder."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$CUETUNE_CACHE, else $XDG_CACHE_HOME/cuetune, else ~/.cache/cuetune."""
    if os.environ.get("CUETUNE_CACHE"):
        return Path(os.environ["CUETUNE_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "cuetune"
