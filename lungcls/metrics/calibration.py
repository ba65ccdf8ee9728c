"""Calibration: whether a model's probabilities mean what they say.

A screening threshold, a "possible missed disease" flag or a probability shown to a clinician is only
as good as the model's calibration, which accuracy does not show. ``calibration`` gives the expected
calibration error (torchmetrics, top-label, equal-width bins) and the multiclass Brier score;
``fit_temperature`` finds the temperature that minimises the validation NLL (Guo et al. 2017), which
changes the probabilities but never the predicted class.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def brier_score(probs: Any, labels: Any) -> float | None:
    """Mean over images of sum_c (p_c - [c == label])^2 (0 is perfect, 2 is worst)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if not len(y):
        return None
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def calibration(probs: Any, labels: Any, bins: int = 15) -> dict[str, Any]:
    """``{"ece", "bins", "brier"}``; None values for an empty split."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    p = np.asarray(probs, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64)
    if not len(y):
        return {"ece": None, "bins": int(bins), "brier": None}
    ece = multiclass_calibration_error(torch.from_numpy(p), torch.from_numpy(y), num_classes=p.shape[1], n_bins=int(bins), norm="l1")
    return {"ece": float(ece), "bins": int(bins), "brier": brier_score(p, y)}


def reliability_bins(probs: Any, labels: Any, bins: int = 15) -> dict[str, np.ndarray]:
    """Per confidence bin (top-label): mean confidence, accuracy and image count, for the diagram."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    confidence = p.max(axis=1) if len(p) else np.zeros(0)
    correct = (p.argmax(axis=1) == y).astype(float) if len(p) else np.zeros(0)
    which = np.clip((confidence * bins).astype(int), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "edges": np.linspace(0, 1, bins + 1),
            "confidence": np.bincount(which, confidence, minlength=bins) / count,
            "accuracy": np.bincount(which, correct, minlength=bins) / count,
            "count": count,
        }


def scale_temperature(probs: Any, temperature: float) -> np.ndarray:
    """Probabilities re-softmaxed at ``temperature`` (log-probabilities are logits up to a constant)."""
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)) / float(temperature)
    logp -= logp.max(axis=1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(probs: Any, labels: Any) -> float:
    """The temperature in [0.05, 20] minimising the NLL of ``labels`` (a 1-D bounded search)."""
    from scipy.optimize import minimize_scalar

    y = np.asarray(labels, dtype=np.int64)
    if not len(y):
        return 1.0

    def nll(log_t: float) -> float:
        q = scale_temperature(probs, float(np.exp(log_t)))
        return float(-np.log(np.clip(q[np.arange(len(y)), y], 1e-12, 1.0)).mean())

    best = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(best.x))
