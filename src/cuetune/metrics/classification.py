"""Classification metrics (scikit-learn): accuracy, macro-F1, per class, confusion, NLL."""

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


def finite(x: float) -> bool:
    return not (math.isnan(x) or math.isinf(x))
