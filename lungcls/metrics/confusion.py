"""Per-class metrics, missed disease (`fn_to_normal`), the `metrics.json` summary of a stage and
the names every metric is logged under.

Everything here works on a confusion matrix (rows = true class, columns = predicted class), so the
training module, evaluation, the comparison tool, W&B logging and the tests compute the numbers
the same way and name them the same way (`metric_key`). No torch is needed: pass
`tensor.cpu().numpy()`.

Convention for undefined values (the same everywhere in lungcls): a ratio whose denominator is 0 is
`None` (JSON `null`), never NaN and never a silent 0, so that "no data" cannot be mistaken for
"always wrong" when runs are compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lungcls.errors import LungclsError

__all__ = ["summarize_confusion", "flat_metrics", "metric_key", "metric_direction", "PER_CLASS_METRICS"]

# The per-class numbers of a summary, logged as `{stage}/{metric}/{Class}`.
PER_CLASS_METRICS = ("precision", "recall", "f1", "specificity")


def metric_key(stage: str, metric: str, class_name: str | None = None) -> str:
    """The logged name of a metric: `test/acc`, `val/recall/COVID`, `test/fn_to_normal_total`."""
    return f"{stage}/{metric}" if class_name is None else f"{stage}/{metric}/{class_name}"


def metric_direction(name: str) -> str | None:
    """``max`` for metrics where larger is better (accuracy, F1, recall, precision, specificity,
    AUROC), ``min`` for counts of errors and losses, None when the name says neither."""
    lowered = name.lower()
    if any(word in lowered for word in ("fn_to_normal", "missed", "loss", "ece", "brier")):
        return "min"
    if any(word in lowered for word in ("acc", "f1", "recall", "precision", "specificity", "auroc")):
        return "max"
    return None


def _ratio(num: int, den: int) -> float | None:
    """num / den as a plain float, or None when the denominator is 0 (undefined)."""
    return float(num) / float(den) if den > 0 else None


def check_class_names(class_names: Sequence[str]) -> list[str]:
    names = [str(c) for c in class_names]
    if len(set(names)) != len(names):
        dupes = sorted({c for c in names if names.count(c) > 1})
        raise ValueError(f"class_names must be unique; repeated: {dupes}")
    return names


def as_confusion(confusion: Any, n_classes: int) -> np.ndarray:
    """Validate a confusion matrix and return it as an int64 [K, K] array."""
    arr = np.asarray(confusion)
    if arr.size == 0 and n_classes == 0:
        return np.zeros((0, 0), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"confusion matrix must be square (K x K), got shape {tuple(arr.shape)}")
    if arr.shape[0] != n_classes:
        raise ValueError(
            f"confusion matrix is {arr.shape[0]}x{arr.shape[1]} but {n_classes} class names were "
            "given; pass one name per row/column, in label-id order"
        )
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"confusion matrix must hold numbers, got dtype {arr.dtype}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError("confusion matrix must hold whole counts (no fractions, NaN or inf)")
    arr = arr.astype(np.int64)
    if np.any(arr < 0):
        raise ValueError("confusion matrix counts must be >= 0, found a negative count")
    return arr


def _per_class(cm: np.ndarray, names: list[str]) -> dict[str, dict[str, Any]]:
    """Each class against the rest: precision, recall, F1, specificity and support."""
    total = int(cm.sum())
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    tp = np.diag(cm)

    per_class: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(names):
        tp_k, sup_k, pred_k = int(tp[k]), int(support[k]), int(predicted[k])
        fp_k = pred_k - tp_k
        tn_k = total - sup_k - fp_k
        precision = _ratio(tp_k, pred_k)
        recall = _ratio(tp_k, sup_k)
        # 2TP / (support + predicted) equals 2PR/(P+R) where both are defined, and is 0 for a
        # class that has images but is never predicted (recall 0): a model that ignores a class
        # must not get a better macro F1 for it. Only a class with no images has no F1.
        f1 = 2.0 * tp_k / (sup_k + pred_k) if sup_k > 0 else None
        per_class[name] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "specificity": _ratio(tn_k, tn_k + fp_k),
            "support": sup_k,
        }
    return per_class


def summarize_confusion(
    confusion: Any,
    class_names: Sequence[str],
    normal_class: str | None = "Normal",
) -> dict[str, Any]:
    """Summarise a confusion matrix into what `metrics.json` stores for one stage.

    `confusion[i][j]` counts images of true class i predicted as class j (list, numpy, or a torch
    tensor converted with `.cpu().numpy()`). Returns

        {"accuracy", "macro_f1",
         "per_class": {Class: {"precision", "recall", "f1", "specificity", "support"}},
         "fn_to_normal": {Class: int | None}, "confusion_matrix": [[int]], "class_names": [...]}

    `fn_to_normal[C]` is the number of images of true class C predicted as `normal_class` (missed
    disease), for every class but the normal one (None for a class with no images: nothing to miss
    is not "none missed"); `normal_class=None` gives `{}`.

    Undefined values are `None`, not NaN or 0, so a class absent from a split is never reported as
    a class the model always gets wrong:
    - precision is None for a class never predicted, recall for a class with no support,
      specificity when every image belongs to the class;
    - F1 is None only for a class with no support; a class with images that is never predicted
      has F1 0.0 (its recall is 0), as in scikit-learn;
    - macro_f1 is the mean F1 over the classes present in the split (None if none is), which
      differs from scikit-learn only by leaving out classes with no support;
    - accuracy is None when the matrix holds no images.
    All numbers are plain Python floats/ints, so `json.dumps` works on the result.
    """
    names = check_class_names(class_names)
    cm = as_confusion(confusion, len(names))
    if normal_class is not None and normal_class not in names:
        raise LungclsError(
            f"normal class {normal_class!r} is not one of the classes {names}; set "
            "dataset.normal_class to one of them (or null to skip the missed-disease count)"
        )

    total = int(cm.sum())
    tp = np.diag(cm)
    per_class = _per_class(cm, names)

    defined_f1 = [v["f1"] for v in per_class.values() if v["f1"] is not None]
    macro_f1 = float(sum(defined_f1) / len(defined_f1)) if defined_f1 else None

    fn_to_normal: dict[str, int | None] = {}
    if normal_class is not None:
        j = names.index(normal_class)
        fn_to_normal = {name: int(cm[k, j]) if cm[k].sum() else None for k, name in enumerate(names) if k != j}

    return {
        "accuracy": _ratio(int(tp.sum()), total),
        "macro_f1": macro_f1,
        "per_class": per_class,
        "fn_to_normal": fn_to_normal,
        "confusion_matrix": [[int(x) for x in row] for row in cm],
        "class_names": names,
    }


def flat_metrics(summary: dict[str, Any], stage: str) -> dict[str, float | int]:
    """Flatten a `summarize_confusion` result into the logger keys of the design.

    Keys: `{stage}/acc`, `{stage}/macro_f1`, `{stage}/precision|recall|f1|specificity/{Class}`,
    `{stage}/fn_to_normal/{Class}` and `{stage}/fn_to_normal_total` (sum over the disease classes
    with images; absent when there is no normal class). An undefined (None) metric is left out
    rather than logged as 0, so dashboards show a gap instead of a false "always wrong".
    """
    out: dict[str, float] = {}

    def put(value: Any, metric: str, class_name: str | None = None) -> None:
        if value is not None:  # counts stay whole numbers, ratios are floats
            out[metric_key(stage, metric, class_name)] = int(value) if isinstance(value, int) else float(value)

    put(summary.get("accuracy"), "acc")
    put(summary.get("macro_f1"), "macro_f1")
    for name, m in summary.get("per_class", {}).items():
        for metric in PER_CLASS_METRICS:
            put(m.get(metric), metric, name)
    fn = summary.get("fn_to_normal") or {}
    for name, count in fn.items():
        put(count, "fn_to_normal", name)
    if fn:  # disease images predicted normal, over the classes the split has (0 when it has none)
        put(sum(int(v) for v in fn.values() if v is not None), "fn_to_normal_total")
    return out
