"""Metrics computed from predicted probabilities rather than from a confusion matrix: mean
cross-entropy, one-vs-rest AUROC per class, and the mean predicted probability of the true class
with its interval. The same functions score a run's kept model, `lungcls-evaluate` and predictions
from any other path, so a number means the same thing wherever it is reported.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lungcls.metrics.confusion import check_class_names, metric_key

__all__ = ["class_probability_ci", "auroc_per_class", "loss_and_auroc"]


def auroc_per_class(probs: Any, labels: Any, class_names: Sequence[str]) -> dict[str, float]:
    """One-vs-rest AUROC (torchmetrics, as logged during training) for every class that has both
    positives and negatives among `labels`; other classes have no AUROC and are left out."""
    from torchmetrics.functional.classification import multiclass_auroc

    p = torch.as_tensor(np.asarray(probs, dtype=np.float32))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if not len(y):
        return {}
    with warnings.catch_warnings():  # classes without images have no AUROC: left out below, not 0
        warnings.filterwarnings("ignore", message=".*(positive|negative) samples.*")
        values = multiclass_auroc(p, y, num_classes=len(class_names), average=None, validate_args=False)
    present = torch.bincount(y, minlength=len(class_names))
    return {
        name: float(v)
        for name, v, n in zip(class_names, values.tolist(), present.tolist())
        if 0 < n < len(y) and v == v
    }


def loss_and_auroc(probs: Any, labels: Any, class_names: Sequence[str], stage: str) -> dict[str, float]:
    """`{stage}/loss` (mean cross-entropy of the probabilities) and `{stage}/auroc/{Class}`."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if not len(y):
        return {}
    p_true = p[np.arange(len(y)), y]
    out = {metric_key(stage, "loss"): float(-np.log(np.clip(p_true, 1e-12, 1.0)).mean())}
    out.update({metric_key(stage, "auroc", c): v for c, v in auroc_per_class(p, y, class_names).items()})
    return out


def class_probability_ci(
    probs: Any,
    labels: Any,
    class_names: Sequence[str],
    confidence: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """Mean predicted probability of the true class, per true class, with a Student-t interval.

    For each class C: over the images whose label is C, the mean of `probs[:, C]` and the
    two-sided `confidence` interval mean +/- t_{(1+confidence)/2, n-1} * s / sqrt(n) (s = sample
    standard deviation). This is how the reference study reported confidence per class; unlike
    accuracy it shows how sure the model is when it is right. The interval is not clipped to
    [0, 1]. Returns `{C: {"mean", "ci_low", "ci_high", "n"}}`; the mean is None for n = 0 and the
    interval is None for n < 2.
    """
    from scipy import stats

    names = check_class_names(class_names)
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2 or p.shape[1] != len(names):
        raise ValueError(
            f"probs must have shape [N, {len(names)}] (one column per class), got {tuple(p.shape)}"
        )
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise ValueError(f"labels must have shape [{p.shape[0]}], got {tuple(y.shape)}")
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= len(names)):
        raise ValueError(f"labels must be integer class ids in [0, {len(names) - 1}]")

    out: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(names):
        x = p[y == k, k]
        n = int(x.size)
        mean = float(x.mean()) if n else None
        lo = hi = None
        if n >= 2:
            sem = float(x.std(ddof=1)) / math.sqrt(n)
            half = float(stats.t.ppf((1.0 + confidence) / 2.0, n - 1)) * sem
            lo, hi = mean - half, mean + half
        out[name] = {"mean": mean, "ci_low": lo, "ci_high": hi, "n": n}
    return out


