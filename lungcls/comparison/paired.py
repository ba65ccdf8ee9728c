"""Paired comparison of runs scored on the same test images (``lungcls-compare --paired``).

Two backbones evaluated on the same split make correlated errors; comparing their accuracies as if
independent wastes most of the evidence. Against the top-ranked run, every other run on the same
images gets McNemar's exact test on correctness (the images one model gets right and the other
wrong) and paired bootstrap intervals of the accuracy difference and of the difference in disease
X-rays predicted Normal, with a sentence saying which differences are significant.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lungcls.metrics.bootstrap import paired_difference_ci


def read_predictions(run_dir: Path) -> dict[str, tuple[str, str]] | None:
    """``{image path: (label, prediction)}`` from a run's predictions.csv (its test split)."""
    path = Path(run_dir) / "predictions.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        return {r["path"]: (r["label"], r["pred"]) for r in csv.DictReader(f)}


def mcnemar_exact(a_right: np.ndarray, b_right: np.ndarray) -> dict[str, Any]:
    """McNemar's exact (binomial) test on the discordant images: ``a_only`` right only for a,
    ``b_only`` right only for b; p-value two-sided."""
    from scipy.stats import binomtest

    a_only = int(np.sum(a_right & ~b_right))
    b_only = int(np.sum(~a_right & b_right))
    n = a_only + b_only
    p = float(binomtest(min(a_only, b_only), n, 0.5).pvalue) if n else 1.0
    return {"a_only": a_only, "b_only": b_only, "p_value": min(p, 1.0)}


def compare_pair(a: dict, b: dict, missed: Sequence[str], normal: str, level: float, resamples: int, seed: int) -> dict[str, Any]:
    """Run ``a`` (the reference) against run ``b`` on the images both scored."""
    paths = sorted(a)
    labels = np.array([a[p][0] for p in paths])
    pa = np.array([a[p][1] for p in paths])
    pb = np.array([b[p][1] for p in paths])
    right_a, right_b = pa == labels, pb == labels
    disease = np.isin(labels, list(missed))
    miss_a = (disease & (pa == normal)).astype(float)
    miss_b = (disease & (pb == normal)).astype(float)
    acc = paired_difference_ci(right_b.astype(float), right_a.astype(float), resamples, level, seed)
    miss = paired_difference_ci(miss_b, miss_a, resamples, level, seed)
    n = len(paths)
    return {
        "images": n,
        "accuracy_difference": acc["difference"],
        "accuracy_difference_ci": acc["ci"],
        "missed_difference": None if miss["difference"] is None else miss["difference"] * n,
        "missed_difference_ci": None if miss["ci"] is None else [v * n for v in miss["ci"]],
        "mcnemar": mcnemar_exact(right_a, right_b),
    }


def _significant(ci: Sequence[float] | None) -> bool:
    return ci is not None and (ci[0] > 0 or ci[1] < 0)


def describe(name_a: str, name_b: str, result: dict[str, Any], level: float) -> str:
    """One sentence on what differs significantly between the reference ``a`` and ``b``."""
    acc, acc_ci = result["accuracy_difference"], result["accuracy_difference_ci"]
    miss, miss_ci = result["missed_difference"], result["missed_difference_ci"]
    p = result["mcnemar"]["p_value"]
    pct = f"{level:.0%}"
    acc_word = "significantly" if _significant(acc_ci) and p < 1 - level else "not significantly"
    miss_word = "significantly" if _significant(miss_ci) else "not significantly"
    acc_text = f"{acc:+.3f} [{acc_ci[0]:+.3f}, {acc_ci[1]:+.3f}]" if acc_ci else f"{acc:+.3f}"
    miss_text = f"{miss:+.0f} [{miss_ci[0]:+.1f}, {miss_ci[1]:+.1f}]" if miss_ci else f"{miss:+.0f}"
    return (
        f"{name_b} vs {name_a} on the same {result['images']} images: accuracy {acc_text} ({pct} paired bootstrap), "
        f"{acc_word} different (McNemar p = {p:.3g}); disease X-rays predicted Normal {miss_text}, {miss_word} different."
    )


def _members(row: dict) -> list[str]:
    """The runs behind a comparison row: itself, or the folds of a k-fold row."""
    return row["fold_runs"].split(" ") if row.get("fold_runs") else [row["run"]]


def _row_predictions(row: dict, runs_by_name: dict[str, dict]) -> dict[str, tuple[str, str]] | None:
    """A row's test predictions; for a k-fold row the folds' pooled out-of-fold predictions (every
    image once), so two cross-validated settings are compared on the whole data set."""
    merged: dict[str, tuple[str, str]] = {}
    for name in _members(row):
        part = read_predictions(runs_by_name[name]["path"]) if name in runs_by_name else None
        if not part:
            return None
        merged.update(part)
    return merged


def paired_rows(rows: Sequence[dict], runs_by_name: dict[str, dict], missed: Sequence[str], level: float = 0.95,
                resamples: int = 1000, seed: int = 0) -> tuple[list[dict], list[str]]:
    """Each ranked run against the top-ranked one: table rows and sentences. Runs on other images
    (another split or data set) are named and skipped: a paired test needs the same images."""
    ranked = [r for r in rows if r.get("rank") is not None]
    if len(ranked) < 2:
        return [], ["Paired comparison: fewer than two ranked runs."]
    top = ranked[0]
    ref = _row_predictions(top, runs_by_name)
    if not ref:
        return [], [f"Paired comparison: {top['run']} has no predictions.csv."]
    normal = runs_by_name[_members(top)[0]]["normal_class"]
    out, lines = [], [f"Paired comparison against the top-ranked run {top['run']}:"]
    for row in ranked[1:]:
        other = _row_predictions(row, runs_by_name)
        if not other or set(other) != set(ref) or any(other[p][0] != ref[p][0] for p in ref):
            lines.append(f"{row['run']}: not scored on the same test images as {top['run']}; no paired test.")
            continue
        result = compare_pair(ref, other, missed, normal, level, resamples, seed)
        lines.append(describe(top["run"], row["run"], result, level))
        out.append({
            "run": row["run"], "reference": top["run"], "images": result["images"],
            "accuracy_difference": result["accuracy_difference"],
            "accuracy_difference_lo": (result["accuracy_difference_ci"] or [None, None])[0],
            "accuracy_difference_hi": (result["accuracy_difference_ci"] or [None, None])[1],
            "mcnemar_p": result["mcnemar"]["p_value"], "right_only_reference": result["mcnemar"]["a_only"],
            "right_only_this": result["mcnemar"]["b_only"],
            "missed_difference": result["missed_difference"],
            "missed_difference_lo": (result["missed_difference_ci"] or [None, None])[0],
            "missed_difference_hi": (result["missed_difference_ci"] or [None, None])[1],
        })
    return out, lines
