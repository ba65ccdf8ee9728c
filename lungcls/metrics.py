"""Per-class metrics, missed disease (`fn_to_normal`) and the `metrics.json` summary of a stage.

Everything here works on a confusion matrix (rows = true class, columns = predicted class) or on
plain numpy arrays of probabilities, so the training module, the evaluation entry point, the
comparison tool and the tests all compute the numbers the same way. No torch is needed: pass
`tensor.cpu().numpy()`.

Convention for undefined values (the same everywhere in lungcls): a ratio whose denominator is 0 is
`None` (JSON `null`), never NaN and never a silent 0, so that "no data" cannot be mistaken for
"always wrong" when runs are compared.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lungcls.errors import LungclsError

__all__ = [
    "summarize_confusion",
    "flat_metrics",
    "class_probability_ci",
    "plot_confusion_matrix",
]


def _ratio(num: int, den: int) -> float | None:
    """num / den as a plain float, or None when the denominator is 0 (undefined)."""
    return float(num) / float(den) if den > 0 else None


def _check_class_names(class_names: Sequence[str]) -> list[str]:
    names = [str(c) for c in class_names]
    if len(set(names)) != len(names):
        dupes = sorted({c for c in names if names.count(c) > 1})
        raise ValueError(f"class_names must be unique; repeated: {dupes}")
    return names


def _as_confusion(confusion: Any, n_classes: int) -> np.ndarray:
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
         "fn_to_normal": {Class: int}, "confusion_matrix": [[int]], "class_names": [...]}

    `fn_to_normal[C]` is the number of images of true class C predicted as `normal_class` (missed
    disease), for every class but the normal one; `normal_class=None` gives `{}`.

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
    names = _check_class_names(class_names)
    cm = _as_confusion(confusion, len(names))
    if normal_class is not None and normal_class not in names:
        raise LungclsError(
            f"normal class {normal_class!r} is not one of the classes {names}; set "
            "dataset.normal_class to one of them (or null to skip the missed-disease count)"
        )

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

    defined_f1 = [v["f1"] for v in per_class.values() if v["f1"] is not None]
    macro_f1 = float(sum(defined_f1) / len(defined_f1)) if defined_f1 else None

    fn_to_normal: dict[str, int] = {}
    if normal_class is not None:
        j = names.index(normal_class)
        fn_to_normal = {name: int(cm[k, j]) for k, name in enumerate(names) if k != j}

    return {
        "accuracy": _ratio(int(tp.sum()), total),
        "macro_f1": macro_f1,
        "per_class": per_class,
        "fn_to_normal": fn_to_normal,
        "confusion_matrix": [[int(x) for x in row] for row in cm],
        "class_names": names,
    }


def flat_metrics(summary: dict[str, Any], stage: str) -> dict[str, float]:
    """Flatten a `summarize_confusion` result into the logger keys of the design.

    Keys: `{stage}/acc`, `{stage}/macro_f1`, `{stage}/precision|recall|f1|specificity/{Class}`,
    `{stage}/fn_to_normal/{Class}` and `{stage}/fn_to_normal_total` (sum over disease classes;
    absent when there is no normal class). An undefined (None) metric is left out rather than
    logged as 0, so dashboards show a gap instead of a false "always wrong".
    """
    out: dict[str, float] = {}

    def put(key: str, value: Any) -> None:
        if value is not None:
            out[f"{stage}/{key}"] = float(value)

    put("acc", summary.get("accuracy"))
    put("macro_f1", summary.get("macro_f1"))
    for name, m in summary.get("per_class", {}).items():
        for metric in ("precision", "recall", "f1", "specificity"):
            put(f"{metric}/{name}", m.get(metric))
    fn = summary.get("fn_to_normal") or {}
    for name, count in fn.items():
        put(f"fn_to_normal/{name}", count)
    if fn:
        put("fn_to_normal_total", sum(int(v) for v in fn.values()))
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

    names = _check_class_names(class_names)
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


def plot_confusion_matrix(
    confusion: Any,
    class_names: Sequence[str],
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Write a PNG with the counts and the row-normalised matrix (each row's diagonal = recall).

    Both panels matter: counts show how many images a cell is about, row shares make classes of
    different sizes comparable. Rows with no images show "-" in the normalised panel. Uses
    a bare `Figure` (no pyplot, no display), so nothing stays open. Returns the written path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = _check_class_names(class_names)
    cm = _as_confusion(confusion, len(names))
    k = len(names)
    support = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(support > 0, cm / np.maximum(support, 1), np.nan)

    side = max(4.0, 1.1 * k + 2.5)
    fig = Figure(figsize=(2 * side + 1.0, side + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    panels = [
        (cm.astype(float), "counts", lambda v: f"{int(v)}", None),
        (share, "row-normalised (recall per row)", lambda v: f"{v:.2f}", (0.0, 1.0)),
    ]
    for ax, (data, sub, fmt, lim) in zip(axes, panels):
        vmin, vmax = lim if lim else (0.0, max(float(np.nanmax(data)) if data.size else 0.0, 1.0))
        im = ax.imshow(np.ma.masked_invalid(data), cmap="Blues", vmin=vmin, vmax=vmax)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(sub)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
        ax.set_xticklabels(names, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticklabels(names)
        mid = (vmin + vmax) / 2.0
        for i in range(k):
            for j in range(k):
                v = data[i, j]
                if np.isnan(v):  # a true class with no images: no share to show
                    ax.text(j, i, "-", ha="center", va="center", fontsize=9, color="gray")
                    continue
                ax.text(j, i, fmt(v), ha="center", va="center", fontsize=9,
                        color="white" if v > mid else "black")
    if title:
        fig.suptitle(title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    fig.clear()
    return out
