"""The result files of a run folder: ``metrics.json`` (a summary per split), ``predictions.csv``
and ``confusion_matrix.png``, written the same way by training and by ``lungcls-evaluate``.

Files are written to a temporary name and renamed into place, so a crash never leaves a half
written ``metrics.json`` that a comparison would read as a result.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lungcls.metrics import class_probability_ci, source_lines, summarize_by_source, summarize_confusion
from lungcls.metrics.bootstrap import bootstrap_ci
from lungcls.metrics.calibration import calibration
from lungcls.metrics.settings import StatsSettings, stats_settings
from lungcls.runs.figures import plot_confusion_matrix, plot_reliability
from lungcls.runs.files import replacing, write_text_atomic
from lungcls.metrics.predictions import Predictions

def check_stats(stats: Mapping[str, Any] | StatsSettings | None) -> dict[str, Any]:
    """``stats.*`` (defaults from conf/stats/default.yaml), checked before any training (one line naming the key)."""
    return dataclasses.asdict(stats_settings(stats))


def confusion_from(pred: Predictions, n_classes: int) -> np.ndarray:
    idx = pred.labels * n_classes + pred.preds
    return np.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def summarize_predictions(pred: Predictions, class_names: Sequence[str], normal_class: str | None,
                          stats: Mapping[str, Any] | None = None, sources: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What ``metrics.json`` stores for one split: ``summarize_confusion``, ``probability_ci``,
    bootstrap intervals of every number (``ci``), ``calibration`` (ECE, Brier), and ``per_source``
    when ``sources`` maps image paths to their source."""
    st = check_stats(stats)
    summary = summarize_confusion(confusion_from(pred, len(class_names)), class_names, normal_class)
    summary["probability_ci"] = (class_probability_ci(pred.probs, pred.labels, class_names, confidence=float(st["level"]))
                                 if len(pred.labels) else {})
    summary["ci"] = bootstrap_ci(pred.labels, pred.preds, class_names, normal_class, resamples=int(st["resamples"]),
                                 level=float(st["level"]), seed=int(st["seed"]))
    summary["calibration"] = calibration(pred.probs, pred.labels, bins=int(st["calibration_bins"]))
    if sources is not None:
        names = [sources.get(p, "(none)") for p in pred.paths]
        summary["per_source"] = summarize_by_source(pred.labels, pred.preds, names, class_names, normal_class)
    return summary


def write_atomic(path: Path, text: str) -> None:
    """``path`` written through a temporary file renamed into place (``lungcls.runs.files``)."""
    write_text_atomic(path, text)


def write_predictions_csv(path: Path, pred: Predictions, class_names: Sequence[str]) -> None:
    """``path,label,pred,prob_<Class>...``, one row per image."""
    with replacing(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "pred"] + [f"prob_{c}" for c in class_names])
        for p, y, yhat, pr in zip(pred.paths, pred.labels, pred.preds, pred.probs):
            w.writerow([p, class_names[y], class_names[yhat]] + [f"{v:.6f}" for v in pr])


def write_results(
    run_dir: Path,
    predictions: dict[str, Predictions],
    class_names: Sequence[str],
    normal_class: str | None,
    report_split: str = "test",
    extra: dict[str, Any] | None = None,
    stats: Mapping[str, Any] | None = None,
    sources: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """metrics.json (a summary per split), and of ``report_split`` predictions.csv,
    confusion_matrix.png and reliability.png."""
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {
        split: summarize_predictions(p, class_names, normal_class, stats, sources) for split, p in predictions.items()
    }
    if "train" in predictions:
        null_untrained(metrics, predictions["train"].labels, class_names)
    metrics.update(extra or {})
    if report_split in predictions:
        pred = predictions[report_split]
        write_predictions_csv(run_dir / "predictions.csv", pred, class_names)
        title = f"{report_split} split ({len(pred.labels)} images)"
        plot_confusion_matrix(metrics[report_split]["confusion_matrix"], class_names, run_dir / "confusion_matrix.png", title=title)
        bins = check_stats(stats)["calibration_bins"]
        plot_reliability(pred.probs, pred.labels, run_dir / "reliability.png", bins=bins, title=title)
    write_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False))
    return metrics


def null_untrained(metrics: dict[str, Any], train_labels: np.ndarray, class_names: Sequence[str]) -> None:
    """A class with no training images (a held-out source took them all) was never learnt: on every
    split its recall and missed count are null, never a 0 that reads as "always wrong", and the
    split's ``untrained_classes`` names it."""
    if not len(train_labels):
        return
    trained = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=len(class_names))
    untrained = [c for c, n in zip(class_names, trained) if not n]
    for summary in metrics.values() if untrained else ():
        summary["untrained_classes"] = untrained
        ci = summary.get("ci") or {}
        for c in untrained:
            summary["per_class"][c]["recall"] = None
            if c in summary["fn_to_normal"]:
                summary["fn_to_normal"][c] = None
            if c in (ci.get("per_class") or {}):
                ci["per_class"][c]["recall"] = None
            if c in (ci.get("fn_to_normal_rate") or {}):
                ci["fn_to_normal_rate"][c] = None


def with_ci(value: float | None, interval: Sequence[float] | None, digits: int = 3) -> str:
    """``0.930 [0.910, 0.950]`` (the interval left out when there is none)."""
    if value is None:
        return "n/a"
    text = f"{value:.{digits}f}"
    return text + (f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]" if interval else "")


def summary_line(summary: dict[str, Any], normal_class: str | None) -> str:
    """``accuracy 0.850 [0.80, 0.90] | macro F1 0.849 [...] | predicted Normal: COVID 1, ...``."""
    acc, f1 = summary.get("accuracy"), summary.get("macro_f1")
    ci = summary.get("ci") or {}
    missed = ", ".join(f"{c} {n}" for c, n in (summary.get("fn_to_normal") or {}).items() if n is not None) or "n/a"
    parts = [f"accuracy {with_ci(acc, ci.get('accuracy'))}" if acc is not None else "no images"]
    if f1 is not None:
        parts.append(f"macro F1 {with_ci(f1, ci.get('macro_f1'))}")
    if normal_class:
        parts.append(f"predicted {normal_class}: {missed}")
    return " | ".join(parts)


def print_summary(split: str, summary: dict[str, Any], normal_class: str | None, images: int | None = None) -> None:
    """The console summary of a split: one line, then one per source when the data names them."""
    head = f"{split}: {images} images |" if images is not None else split
    print(f"{head} {summary_line(summary, normal_class)}" if summary["accuracy"] is not None else f"{split} split is empty")
    if summary.get("per_source"):
        print(f"{split} by source:")
        for line in source_lines(summary["per_source"], normal_class):
            print(f"  {line}")
