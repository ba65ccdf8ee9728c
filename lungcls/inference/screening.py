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

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lungcls.errors import LungclsError
from lungcls.inference.checkpoints import checkpoint_sha256

__all__ = ["screening_report", "operating_point", "possible_missed_disease", "load_screening_thresholds", "ScreeningThreshold"]


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


def _check_settings(names: list[str], positive_class: str, threshold: float | None, target_sensitivity: float,
                    val_probs: Any | None, val_labels: Any | None) -> None:
    """One line for a setting the report cannot use, before any number is computed."""
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
    _check_settings(names, positive_class, threshold, target_sensitivity, val_probs, val_labels)

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


# --------------------------------------------------------------------------- using a trained model


def possible_missed_disease(probs: Any, class_names: Sequence[str], normal_class: str | None, margin: float) -> np.ndarray:
    """Per image: the normal class wins, but by less than ``margin`` over the most likely disease
    class: the prediction a screening reader should not take as "nothing there"."""
    p = np.asarray(probs, dtype=np.float64)
    if normal_class not in class_names or margin <= 0 or len(class_names) < 2 or p.size == 0:
        return np.zeros(len(p), dtype=bool)
    k = list(class_names).index(normal_class)
    lead = p[:, k] - np.delete(p, k, axis=1).max(axis=1)
    return (p.argmax(axis=1) == k) & (lead < margin)


@dataclass(frozen=True)
class ScreeningThreshold:
    """The positive-class threshold an evaluation chose on val for one checkpoint."""

    positive_class: str
    threshold: float
    target_sensitivity: float
    val_sensitivity: float | None
    source: str  # the evaluation's metrics.json

    def flags(self, probs: Any, class_names: Sequence[str]) -> np.ndarray:
        """Per image: called positive (probability of the positive class >= the threshold)."""
        return np.asarray(probs)[:, list(class_names).index(self.positive_class)] >= self.threshold


def read_evaluation(source: Any, how: str) -> tuple[Path, dict[str, Any]]:
    """An evaluation's metrics.json (its run folder or the file), or one line naming the command
    (``lungcls-evaluate ... <how>``) that writes one."""
    path = Path(str(source)).expanduser().resolve()
    path = path / "metrics.json" if path.is_dir() else path
    try:
        return path, json.loads(path.read_text())
    except (OSError, ValueError):
        raise LungclsError(f"{source} is not an evaluation (no readable metrics.json); give the run folder of "
                           f"lungcls-evaluate ... {how}") from None


def _read_evaluation(source: str | Path) -> tuple[Path, dict[str, Any]]:
    path, metrics = read_evaluation(source, "evaluate.positive_class=<Class>")
    chosen = (metrics.get("screening") or {}).get("target_sensitivity") or {}
    if not metrics.get("checkpoint") or not metrics.get("screening"):
        raise LungclsError(f"{path} has no screening view; run lungcls-evaluate ckpt=... evaluate.positive_class=<Class> and give its run folder")
    if chosen.get("threshold") is None:
        raise LungclsError(f"{path} chose no threshold ({chosen.get('reason') or 'unknown reason'}); evaluate with a val split that holds positives")
    return path, metrics


def load_screening_thresholds(evaluations: Any, checkpoints: Sequence[Path]) -> dict[Path, ScreeningThreshold]:
    """Match each evaluation (run folder or metrics.json) to the checkpoint it evaluated: by content
    (SHA-256) where recorded, else by path. A threshold chosen for another model, or for this file
    before it changed, is refused: it would flag at the wrong operating point."""
    items = [] if evaluations in (None, "") else ([evaluations] if isinstance(evaluations, (str, Path)) else list(evaluations))
    hashes = {ckpt: checkpoint_sha256(ckpt) for ckpt in checkpoints} if items else {}
    found: dict[Path, ScreeningThreshold] = {}
    for item in items:
        path, metrics = _read_evaluation(item)
        recorded = metrics.get("checkpoint_sha256")
        by_path = [c for c in checkpoints if str(c) == str(Path(metrics["checkpoint"]).resolve())]
        match = [c for c in checkpoints if hashes[c] == recorded] if recorded else by_path
        if not match:
            changed = " (the file at that path has changed since; evaluate it again)" if recorded and by_path else ""
            raise LungclsError(f"{path} evaluated {metrics['checkpoint']}{changed}, which is not one of the checkpoints given; "
                               "give the evaluation of each checkpoint")
        s = metrics["screening"]
        chosen = s["target_sensitivity"]
        found[match[0]] = ScreeningThreshold(
            str(s["positive_class"]), float(chosen["threshold"]), float(chosen["target"]),
            (chosen.get("val") or {}).get("sensitivity"), str(path),
        )
    return found


def screening_line(report: dict[str, Any]) -> str:
    """The screening view in one console line: sensitivity / specificity at argmax and at the
    threshold chosen on val."""
    def point(p: dict[str, Any] | None) -> str:
        if not p:
            return "n/a"
        sens = "n/a" if p["sensitivity"] is None else f"{p['sensitivity']:.3f}"
        spec = "n/a" if p["specificity"] is None else f"{p['specificity']:.3f}"
        return f"sensitivity {sens}, specificity {spec}"

    target = report["target_sensitivity"]
    chosen = (f"at the val-chosen threshold {target['threshold']:.3f} (target {target['target']:.2f}): {point(target['test'])}"
              if target.get("threshold") is not None else f"no val threshold ({target.get('reason')})")
    return f"screening {report['positive_class']} vs the rest: argmax {point(report['argmax'])}; {chosen}"
