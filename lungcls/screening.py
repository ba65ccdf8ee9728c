"""Binary screening view of a multi-class model: one positive class (e.g. COVID) vs everything else.

A screening user asks "how many positives do we miss, and at what cost in false alarms?", which the
argmax decision of a multi-class model does not answer. The score of an image is the predicted
probability of the positive class; an image is called positive when `score >= threshold`.
Reported on test:
- the argmax decision (positive iff the positive class wins), the model as trained;
- a fixed threshold (`evaluate.threshold`), when given;
- the highest threshold whose *validation* sensitivity reaches `evaluate.target_sensitivity`,
  chosen on val and then applied to test, so the test numbers are an honest estimate.
Undefined values are None (JSON null), as in `lungcls.metrics`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from lungcls.errors import LungclsError

__all__ = ["screening_report", "operating_point"]


def _check_arrays(probs: Any, labels: Any, n_classes: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2 or p.shape[1] != n_classes:
        raise ValueError(
            f"{split}_probs must have shape [N, {n_classes}] (one column per class), "
            f"got {tuple(p.shape)}"
        )
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{split}_probs contains NaN or inf")
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise ValueError(f"{split}_labels must have shape [{p.shape[0]}], got {tuple(y.shape)}")
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{split}_labels must be integer class ids in [0, {n_classes - 1}]")
    return p, y.astype(np.int64)


def operating_point(
    is_positive: np.ndarray, called_positive: np.ndarray, threshold: float | None
) -> dict[str, Any]:
    """Counts, sensitivity and specificity of one binary decision (None where undefined)."""
    t = np.asarray(is_positive, dtype=bool)
    c = np.asarray(called_positive, dtype=bool)
    tp = int(np.sum(t & c))
    fn = int(np.sum(t & ~c))
    tn = int(np.sum(~t & ~c))
    fp = int(np.sum(~t & c))
    return {
        "threshold": None if threshold is None else float(threshold),
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "tp": tp,
        "fn": fn,
        "tn": tn,
        "fp": fp,
    }


def _threshold_for_sensitivity(is_positive: np.ndarray, score: np.ndarray, target: float) -> float:
    """Highest threshold t with sensitivity(score >= t) >= target; the val set must hold positives."""
    from sklearn.metrics import roc_curve

    with warnings.catch_warnings():
        # No negatives on val makes the FPR undefined; only the TPR is used here.
        warnings.simplefilter("ignore")
        # drop_intermediate=False keeps every threshold, so the first one reaching the target is
        # really the highest (dropped collinear points could hide it).
        _, tpr, thresholds = roc_curve(is_positive, score, drop_intermediate=False)
    # roc_curve's thresholds decrease and its TPR increases; the target is at most 1 and the last
    # threshold (the lowest score) calls every image positive, so a match always exists.
    idx = int(np.argmax(tpr >= target - 1e-12))
    return float(thresholds[idx])


def _target_sensitivity_point(names: Sequence[str], pos: int, truth: np.ndarray, score: np.ndarray,
                              val_probs: Any | None, val_labels: Any | None, target_sensitivity: float) -> dict[str, Any]:
    """The highest threshold reaching `target_sensitivity` on val, and what it gives on test."""
    target: dict[str, Any] = {"target": target_sensitivity, "threshold": None, "val": None, "test": None, "reason": None}
    if val_probs is None:
        target["reason"] = (
            "no validation predictions given; the threshold is chosen on val so that test stays "
            "unseen"
        )
        return target
    p_val, y_val = _check_arrays(val_probs, val_labels, len(names), "val")
    val_truth = y_val == pos
    if not val_truth.any():
        target["reason"] = (
            f"the validation split has no {names[pos]!r} images, so its sensitivity is "
            "undefined and no threshold can be chosen"
        )
        return target
    t = _threshold_for_sensitivity(val_truth, p_val[:, pos], target_sensitivity)
    target["threshold"] = t
    target["val"] = operating_point(val_truth, p_val[:, pos] >= t, t)
    target["test"] = operating_point(truth, score >= t, t)
    return target


def screening_report(
    class_names: Sequence[str],
    positive_class: str,
    test_probs: Any,
    test_labels: Any,
    val_probs: Any | None = None,
    val_labels: Any | None = None,
    threshold: float | None = None,
    target_sensitivity: float = 0.95,
) -> dict[str, Any]:
    """Sensitivity / specificity of `positive_class` vs the rest, at argmax and at thresholds.

    `*_probs` are softmax outputs [N, C] in `class_names` order, `*_labels` integer class ids [N].
    Returns plain JSON-serialisable types:

        {"positive_class", "class_names", "n_test", "n_test_positive",
         "test_roc_auc": float | None,            # None when test holds only one side
         "argmax": point,                         # positive iff argmax == positive class
         "fixed_threshold": point | None,         # None when `threshold` is None
         "target_sensitivity": {"target", "threshold", "val": point, "test": point,
                                "reason": None}   # or threshold/val/test None and a reason}

    where point = {"threshold", "sensitivity", "specificity", "tp", "fn", "tn", "fp"} and an image
    is called positive when its positive-class probability is >= threshold.
    """
    from sklearn.metrics import roc_auc_score

    names = [str(c) for c in class_names]
    if positive_class not in names:
        raise LungclsError(
            f"screening positive class {positive_class!r} is not one of the classes {names}; "
            "set it to one of them"
        )
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise LungclsError(f"evaluate.threshold must be a probability in [0, 1], got {threshold}")
    if not 0.0 < float(target_sensitivity) <= 1.0:
        raise LungclsError(
            f"evaluate.target_sensitivity must be in (0, 1], got {target_sensitivity}"
        )
    if (val_probs is None) != (val_labels is None):
        raise ValueError("pass both val_probs and val_labels, or neither")

    pos = names.index(positive_class)
    p_test, y_test = _check_arrays(test_probs, test_labels, len(names), "test")
    truth = y_test == pos
    score = p_test[:, pos]

    auc = None
    if truth.any() and (~truth).any():
        auc = float(roc_auc_score(truth, score))

    fixed = None
    if threshold is not None:
        fixed = operating_point(truth, score >= float(threshold), float(threshold))

    target = _target_sensitivity_point(names, pos, truth, score, val_probs, val_labels, float(target_sensitivity))
    return {
        "positive_class": positive_class,
        "class_names": names,
        "n_test": int(truth.size),
        "n_test_positive": int(truth.sum()),
        "test_roc_auc": auc,
        "argmax": operating_point(truth, np.argmax(p_test, axis=1) == pos, None),
        "fixed_threshold": fixed,
        "target_sensitivity": target,
    }
