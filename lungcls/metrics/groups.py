"""Metrics per group of any column (a source, a site, a manifest column such as sex or age band):
under-diagnosis concentrates in some groups, and one overall recall hides it. Each group gets its
per-class recall, rate of disease called Normal and specificity, each with a Wilson interval, and
the largest gap between two groups is named."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lungcls.metrics.bootstrap import wilson_interval

__all__ = ["group_metrics", "group_lines"]


def _rate(k: int, n: int, level: float) -> dict[str, Any]:
    return {"rate": k / n if n else None, "count": k, "images": n, "interval": wilson_interval(k, n, level)}


def _one_group(labels: np.ndarray, preds: np.ndarray, class_names: Sequence[str], normal: int | None, level: float) -> dict[str, Any]:
    out: dict[str, Any] = {"images": int(labels.size), "recall": {}, "fn_to_normal_rate": {}, "specificity": {}}
    for k, name in enumerate(class_names):
        mine = labels == k
        out["recall"][name] = _rate(int((preds[mine] == k).sum()), int(mine.sum()), level)
        others = ~mine
        out["specificity"][name] = _rate(int((preds[others] != k).sum()), int(others.sum()), level)
        if normal is not None and k != normal:
            out["fn_to_normal_rate"][name] = _rate(int((preds[mine] == normal).sum()), int(mine.sum()), level)
    return out


def _largest_gaps(per_group: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per metric and class: the two groups furthest apart (groups without the class left out)."""
    gaps: dict[str, Any] = {}
    first = next(iter(per_group.values()), None)
    if first is None:
        return gaps
    for metric in ("recall", "fn_to_normal_rate", "specificity"):
        for name in first[metric]:
            values = {g: r[metric][name]["rate"] for g, r in per_group.items() if r[metric][name]["rate"] is not None}
            if len(values) < 2:
                continue
            low, high = min(values, key=values.get), max(values, key=values.get)
            gaps[f"{metric}/{name}"] = {"gap": values[high] - values[low], "low": low, "high": high}
    top = max(gaps.items(), key=lambda kv: kv[1]["gap"], default=None)
    return {"largest": None if top is None else {"metric": top[0], **top[1]}, "per_metric": gaps}


def group_metrics(labels: Any, preds: Any, groups: Sequence[str], class_names: Sequence[str],
                  normal_class: str | None, level: float = 0.95) -> dict[str, Any]:
    """``{"groups": {group: {"images", "recall", "fn_to_normal_rate", "specificity"}}, "gaps": {...}}``;
    each rate is ``{"rate", "count", "images", "interval"}``."""
    y, p, g = np.asarray(labels, int), np.asarray(preds, int), np.asarray(groups, dtype=object)
    normal = list(class_names).index(normal_class) if normal_class in class_names else None
    per_group = {str(name): _one_group(y[g == name], p[g == name], class_names, normal, level) for name in sorted(set(g.tolist()))}
    return {"groups": per_group, "gaps": _largest_gaps(per_group)}


def _fmt(rate: dict[str, Any]) -> str:
    if rate["rate"] is None:
        return "n/a"
    lo, hi = rate["interval"]
    return f"{rate['rate']:.3f} [{lo:.3f}, {hi:.3f}]"


def group_lines(column: str, report: dict[str, Any], normal_class: str | None) -> list[str]:
    """One console line per group, and one for the largest gap."""
    lines = []
    for name, r in report["groups"].items():
        recall = ", ".join(f"{c} {_fmt(v)}" for c, v in r["recall"].items() if v["images"])
        line = f"{column}={name} ({r['images']} images): recall {recall or 'n/a'}"
        missed = ", ".join(f"{c} {_fmt(v)}" for c, v in r["fn_to_normal_rate"].items() if v["images"])
        if normal_class and missed:
            line += f" | called {normal_class}: {missed}"
        if normal_class in r["specificity"] and r["recall"][normal_class]["images"]:
            line += f" | {normal_class} kept {_fmt(r['recall'][normal_class])}"
        lines.append(line)
    top = report["gaps"].get("largest")
    if top:
        lines.append(f"largest gap by {column}: {top['metric']} {top['gap']:.3f} ({top['low']} vs {top['high']})")
    return lines
