"""Metrics (scikit-learn) and plots (matplotlib) for classification runs."""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from cuetune.atomic import atomic_write


def classification_metrics(labels: list[str], y_true, probs: torch.Tensor) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1, confusion matrix and mean NLL."""
    y_true = np.asarray(y_true)
    y_pred = probs.argmax(-1).numpy()
    idx = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=idx, zero_division=0)
    picked = probs[torch.arange(len(y_true)), torch.as_tensor(y_true)].clamp_min(1e-12)
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=idx, average="macro", zero_division=0)),
        "nll": float(-picked.log().mean()),
        "per_class": {labels[i]: {"precision": float(p[i]), "recall": float(r[i]),
                                  "f1": float(f[i]), "support": int(s[i])} for i in idx},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=idx).tolist(),
        "labels": list(labels),
    }


def _save_png(fig, path) -> None:
    import matplotlib.pyplot as plt

    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def plot_curves(log_rows: list[dict], path, metric: str = "accuracy") -> None:
    """Training loss per step and the dev metric per evaluation, on two axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in log_rows if "loss" in r]
    losses = [r["loss"] for r in log_rows if "loss" in r]
    evals = [(r["step"], r[f"dev_{metric}"]) for r in log_rows if f"dev_{metric}" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, color="tab:blue", lw=1, label="train loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss", color="tab:blue")
    if evals:
        ax2 = ax.twinx()
        ax2.plot(*zip(*evals, strict=True), "o-", color="tab:orange", label=f"dev {metric}")
        ax2.set_ylabel(f"dev {metric}", color="tab:orange")
        ax2.set_ylim(0, 1)
    ax.set_title("training curves")
    _save_png(fig, path)


def plot_confusion(metrics: dict, path, title: str = "test confusion matrix") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(metrics["confusion_matrix"])
    labels, font = drawable(metrics["labels"])
    size = max(3.5, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
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
    _save_png(fig, path)


def drawable(labels: list[str]) -> tuple[list[str], str | None]:
    """Tick labels the plot can draw, and the font to draw them with: the default font when it
    has every glyph, else an installed font that has them (Chinese labels need a CJK font),
    else the labels' numbers (`#0`, `#1`, ...; eval.json names them), never empty boxes."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

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


def finite(x: float) -> bool:
    return not (math.isnan(x) or math.isinf(x))
