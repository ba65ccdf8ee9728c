"""Metrics per image source: when a data set mixes sources (hospitals, scanners, public
collections), one overall accuracy can hide that a model is right on one source and wrong on
another, or that it reads the source instead of the lungs. Each source gets the numbers of
``summarize_confusion`` that show such a gap at once: its image count, accuracy, per-class recall
and ``fn_to_normal``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lungcls.metrics.confusion import summarize_confusion

__all__ = ["summarize_by_source", "source_lines"]


def summarize_by_source(labels: Sequence[int], preds: Sequence[int], sources: Sequence[str],
                        class_names: Sequence[str], normal_class: str | None) -> dict[str, dict[str, Any]]:
    """``{source: {"images", "accuracy", "recall": {Class: value or None}, "fn_to_normal": {Class: n},
    "support": {Class: n}}}``, sources in sorted order."""
    labels, preds, sources = np.asarray(labels, int), np.asarray(preds, int), np.asarray(sources, dtype=object)
    k = len(class_names)
    out: dict[str, dict[str, Any]] = {}
    for source in sorted(set(sources.tolist())):
        keep = sources == source
        cm = np.bincount(labels[keep] * k + preds[keep], minlength=k * k).reshape(k, k)
        summary = summarize_confusion(cm, class_names, normal_class)
        out[str(source)] = {
            "images": int(keep.sum()),
            "accuracy": summary["accuracy"],
            "recall": {c: summary["per_class"][c]["recall"] for c in class_names},
            "support": {c: summary["per_class"][c]["support"] for c in class_names},
            "fn_to_normal": summary["fn_to_normal"],
        }
    return out


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def source_lines(per_source: dict[str, dict[str, Any]], normal_class: str | None) -> list[str]:
    """One console line per source: ``Kermany (250 images): accuracy 0.980 | recall Normal 0.99 ...``."""
    lines = []
    for source, s in per_source.items():
        recall = ", ".join(f"{c} {_fmt(r)}" for c, r in s["recall"].items() if s["support"].get(c))
        parts = [f"{source} ({s['images']} images): accuracy {_fmt(s['accuracy'])}", f"recall {recall or 'n/a'}"]
        if normal_class and s["fn_to_normal"]:
            missed = ", ".join(f"{c} {n}" for c, n in s["fn_to_normal"].items() if s["support"].get(c))
            if missed:
                parts.append(f"predicted {normal_class}: {missed}")
        lines.append(" | ".join(parts))
    return lines
