"""Confidence intervals for every number a split's summary reports, and paired intervals for the
difference between two models scored on the same images.

A test split of a few hundred images per class makes a one-point accuracy difference or a handful of
missed COVID images noise-sized; the intervals say how large. Proportions (accuracy, precision,
recall, specificity, the share of a disease class predicted Normal) get the Wilson score interval
(scipy): unlike a percentile bootstrap it does not collapse to zero width when a small class is all
right or all wrong (0 of 4 missed is not certainty). F1 scores, which have no closed form, get a
percentile bootstrap stratified by true class: each resample draws every class's images from that
class, as many as the split has, so every resample holds the split's classes in the split's
numbers. An unstratified resample of a split with 3 Normal films drops Normal one time in twenty,
and its macro F1, averaged over the classes left, jumps (0.455 [0.410, 0.957]); stratified, the
interval is of the macro F1 over the classes the split has. The images of ``resamples`` samples are
drawn at once and each sample's confusion matrix is one slice of a single ``bincount``, so 1,000
resamples of a 2,000-image split take a fraction of a second (seeded, reproducible). A number
undefined in most resamples, or with no images to count, gets no interval (``None``), never a
made-up one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lungcls.metrics.confusion import PER_CLASS_METRICS

METHOD = "wilson score (proportions), percentile bootstrap stratified by class (F1)"
BOOTSTRAP = "percentile bootstrap"
_MIN_DEFINED = 0.5  # share of resamples in which a number must be defined to get an interval


def resample_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, n] image indices drawn with replacement (seeded)."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def stratified_indices(labels: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """[resamples, n] image indices drawn with replacement within each true class (seeded): every
    resample has each class's images in the split's numbers."""
    rng = np.random.default_rng(seed)
    out = np.empty((resamples, len(labels)), dtype=np.int64)
    start = 0
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        out[:, start:start + len(members)] = members[rng.integers(0, len(members), size=(resamples, len(members)))]
        start += len(members)
    return out


def resampled_confusions(labels: np.ndarray, preds: np.ndarray, k: int, idx: np.ndarray) -> np.ndarray:
    """[R, K, K] confusion matrices of the resamples ``idx`` (one bincount for all of them)."""
    r = idx.shape[0]
    cells = labels[idx] * k + preds[idx] + (np.arange(r) * k * k)[:, None]
    return np.bincount(cells.ravel(), minlength=r * k * k).reshape(r, k, k)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def confusion_statistics(cm: np.ndarray, class_names: Sequence[str], normal_class: str | None) -> dict[str, np.ndarray]:
    """The summary's numbers for a stack of confusion matrices [R, K, K]: arrays of length R, NaN
    where undefined (the same definitions as ``summarize_confusion``)."""
    total = cm.sum(axis=(1, 2))
    support = cm.sum(axis=2)
    predicted = cm.sum(axis=1)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    fp = predicted - tp
    tn = total[:, None] - support - fp
    f1 = np.where(support > 0, _ratio(2.0 * tp, support + predicted), np.nan)
    with np.errstate(invalid="ignore"):
        macro_f1 = np.nanmean(np.where(support > 0, f1, np.nan), axis=1) if len(class_names) else np.full(len(cm), np.nan)
    out: dict[str, np.ndarray] = {"accuracy": _ratio(tp.sum(axis=1), total), "macro_f1": macro_f1}
    values = {"precision": _ratio(tp, predicted), "recall": _ratio(tp, support), "f1": f1,
              "specificity": _ratio(tn, tn + fp)}
    for k, name in enumerate(class_names):
        for metric in PER_CLASS_METRICS:
            out[f"{metric}/{name}"] = values[metric][:, k]
    if normal_class is not None and normal_class in class_names:
        j = list(class_names).index(normal_class)
        for k, name in enumerate(class_names):
            if k != j:
                out[f"fn_to_normal_rate/{name}"] = _ratio(cm[:, k, j], support[:, k])
    return out


def percentile_interval(values: np.ndarray, level: float) -> list[float] | None:
    """[lo, hi] over the resamples where the value is defined; None when it mostly is not."""
    defined = values[~np.isnan(values)]
    if len(values) == 0 or len(defined) < _MIN_DEFINED * len(values):
        return None
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(defined, [alpha, 1.0 - alpha])
    return [float(lo), float(hi)]


def wilson_interval(successes: int, total: int, level: float) -> list[float] | None:
    """Wilson score interval of successes / total (scipy's ``binomtest``); None for total 0."""
    from scipy.stats import binomtest

    if total <= 0:
        return None
    ci = binomtest(int(successes), int(total)).proportion_ci(confidence_level=level, method="wilson")
    return [float(ci.low), float(ci.high)]


def _proportion_intervals(cm: np.ndarray, class_names: Sequence[str], normal_class: str | None, level: float) -> dict[str, Any]:
    """accuracy, per-class precision / recall / specificity and fn_to_normal_rate from counts."""
    total = int(cm.sum())
    support, predicted, tp = cm.sum(axis=1), cm.sum(axis=0), np.diag(cm)
    out: dict[str, Any] = {"accuracy": wilson_interval(int(tp.sum()), total, level)}
    for k, name in enumerate(class_names):
        fp, tn = int(predicted[k] - tp[k]), int(total - support[k] - (predicted[k] - tp[k]))
        out[f"precision/{name}"] = wilson_interval(int(tp[k]), int(predicted[k]), level)
        out[f"recall/{name}"] = wilson_interval(int(tp[k]), int(support[k]), level)
        out[f"specificity/{name}"] = wilson_interval(tn, tn + fp, level)
    if normal_class is not None and normal_class in class_names:
        j = list(class_names).index(normal_class)
        for k, name in enumerate(class_names):
            if k != j:
                out[f"fn_to_normal_rate/{name}"] = wilson_interval(int(cm[k, j]), int(support[k]), level)
    return out


def bootstrap_ci(labels: Any, preds: Any, class_names: Sequence[str], normal_class: str | None = "Normal",
                 resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """What ``metrics.json[split]["ci"]`` stores: ``accuracy``, ``macro_f1``, per-class
    ``precision``/``recall``/``specificity``/``f1`` and per disease class ``fn_to_normal_rate``
    (the share of its images predicted as the normal class), each ``[lo, hi]`` or None."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(preds, dtype=np.int64)
    k = len(class_names)
    record: dict[str, Any] = {"level": float(level), "resamples": int(resamples), "method": METHOD, "seed": int(seed)}
    cm = np.bincount(y * k + p, minlength=k * k).reshape(k, k) if len(y) else np.zeros((k, k), dtype=np.int64)
    interval = _proportion_intervals(cm, class_names, normal_class, level)
    if len(y) and resamples >= 1:
        stats = confusion_statistics(resampled_confusions(y, p, k, stratified_indices(y, resamples, seed)), class_names, normal_class)
        interval["macro_f1"] = percentile_interval(stats["macro_f1"], level)
        interval.update({f"f1/{c}": percentile_interval(stats[f"f1/{c}"], level) for c in class_names})
    record["accuracy"] = interval.get("accuracy")
    record["macro_f1"] = interval.get("macro_f1")
    record["per_class"] = {c: {m: interval.get(f"{m}/{c}") for m in PER_CLASS_METRICS} for c in class_names}
    record["fn_to_normal_rate"] = {key.split("/", 1)[1]: v for key, v in interval.items() if key.startswith("fn_to_normal_rate/")}
    return record


def paired_difference_ci(values_a: Any, values_b: Any, resamples: int = 1000, level: float = 0.95,
                         seed: int = 0) -> dict[str, Any]:
    """Mean of ``a - b`` over the same images with a paired bootstrap interval (images resampled
    together, so the comparison sees each image once for both models)."""
    a = np.asarray(values_a, dtype=np.float64)
    b = np.asarray(values_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("paired values must be two 1-D arrays over the same images")
    if len(a) == 0:
        return {"difference": None, "ci": None, "level": level, "resamples": resamples, "method": BOOTSTRAP}
    diff = a - b
    means = diff[resample_indices(len(diff), resamples, seed)].mean(axis=1)
    return {"difference": float(diff.mean()), "ci": percentile_interval(means, level), "level": float(level),
            "resamples": int(resamples), "method": BOOTSTRAP}
