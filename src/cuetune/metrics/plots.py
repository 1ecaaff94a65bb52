"""The figures runs and reports write: training curves, confusion matrices, and `save_png`.

Figures are built with `matplotlib.figure.Figure`, never pyplot: no backend is chosen and no
global figure state is touched, so importing cuetune in a notebook leaves its plots alone.
"""

from __future__ import annotations

import numpy as np
from matplotlib import font_manager
from matplotlib.figure import Figure
from matplotlib.ft2font import FT2Font

from cuetune.atomic import atomic_write


def save_png(fig: Figure, path) -> None:
    """Write a figure as PNG atomically (a kill mid-write leaves the previous image)."""
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))


def plot_curves(log_rows: list[dict], path, metric: str = "accuracy") -> None:
    """Training loss per step and the dev metric per evaluation, on two axes."""
    steps = [r["step"] for r in log_rows if "loss" in r]
    losses = [r["loss"] for r in log_rows if "loss" in r]
    evals = [(r["step"], r[f"dev_{metric}"]) for r in log_rows if f"dev_{metric}" in r]
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot(steps, losses, color="tab:blue", lw=1, label="train loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss", color="tab:blue")
    if evals:
        ax2 = ax.twinx()
        ax2.plot(*zip(*evals, strict=True), "o-", color="tab:orange", label=f"dev {metric}")
        ax2.set_ylabel(f"dev {metric}", color="tab:orange")
        ax2.set_ylim(0, 1)
    ax.set_title("training curves")
    save_png(fig, path)


def plot_confusion(metrics: dict, path, title: str = "test confusion matrix") -> None:
    """The test confusion matrix with counts, its tick labels drawable (`drawable`)."""
    cm = np.asarray(metrics["confusion_matrix"])
    labels, font = drawable(metrics["labels"])
    size = max(3.5, 0.6 * len(labels) + 2)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontfamily=font)
    ax.set_yticks(range(len(labels)), labels, fontfamily=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = cm.max() if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > top / 2 else "black")
    ax.set_title(f"{title} (acc {metrics['accuracy']:.3f})")
    save_png(fig, path)


def drawable(labels: list[str]) -> tuple[list[str], str | None]:
    """Tick labels the plot can draw, and the font to draw them with: the default font when it
    has every glyph, else an installed font that has them (Chinese labels need a CJK font),
    else the labels' numbers (`#0`, `#1`, ...; eval.json names them), never empty boxes."""
    chars = {ord(c) for label in labels for c in label if not c.isspace()}

    def covers(path: str) -> bool:
        try:
            font = FT2Font(path)
        except (OSError, RuntimeError):
            return False
        return all(font.get_char_index(c) for c in chars)

    if covers(font_manager.findfont(font_manager.FontProperties())):
        return list(labels), None
    for entry in font_manager.fontManager.ttflist:
        if covers(entry.fname):
            return list(labels), entry.name
    return [f"#{i}" for i in range(len(labels))], None


