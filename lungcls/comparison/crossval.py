"""Cross-validation in the comparison: the k runs of one setting that differ only in
``dataset.fold`` become one row.

A k-fold run is one of k views of the same setting; listing the folds as separate runs invites
picking the best fold. A setting is folded only when its runs really are the k folds: k completed
runs with fold ids 0..k-1 whose test images are disjoint (anything else is listed run by run, with
a note saying why). The folded row holds each rate's mean over the folds with its standard
deviation (``_sd`` columns); counts (missed disease) and ``acc_pooled`` come from the pooled
out-of-fold confusion matrix, in which every image is tested exactly once.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lungcls.comparison.settings import setting_key
from lungcls.metrics import summarize_confusion
from lungcls.runs.folders import STATUS_OK

FOLD_KEY = "dataset.fold"
COUNT_PARTS = ("fn_to_normal", "missed")  # columns that are counts: pooled, never averaged


def _setting(overrides: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted(o for o in overrides if not o.lstrip("+~").startswith(f"{FOLD_KEY}=")))


def _dataset(run: dict) -> dict:
    return (run.get("config") or {}).get("dataset") or {}


def scored_paths(run: dict) -> list[str]:
    """The test images a run scored (its predictions.csv)."""
    path = Path(run["path"]) / "predictions.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [r["path"] for r in csv.DictReader(f)]


def _why_not_folds(group: Sequence[dict]) -> str | None:
    k = _dataset(group[0]).get("folds")
    folds = [_dataset(r).get("fold") for r in group]
    if any(r["status"] != STATUS_OK for r in group):
        return "not every fold completed"
    if sorted(folds) != list(range(int(k))):
        return f"fold ids {sorted(folds)} are not 0..{int(k) - 1} once each"
    seen: set[str] = set()
    for run in group:
        paths = set(scored_paths(run))
        if not paths or paths & seen:
            return "their test images overlap (or a predictions.csv is missing): these are not disjoint folds"
        seen |= paths
    return None


def fold_groups(runs: Sequence[dict]) -> tuple[list[list[dict]], list[str]]:
    """Runs grouped by setting (the k folds of a k-fold setting together, every other run on its
    own; a setting is the composed config, not the override text), in the original order; and
    notes on k-fold runs that could not be folded."""
    groups: dict[tuple, list[dict]] = {}
    order: list[tuple] = []
    for i, run in enumerate(runs):
        ds = _dataset(run)
        kfold = ds.get("folds") and ds.get("folds") != "source" and not ds.get("splits_csv")  # source folds: generalisation.py
        key = ("folds", ds.get("folds"), setting_key(run)) if kfold else ("run", i)
        if key not in groups:
            order.append(key)
        groups.setdefault(key, []).append(run)
    out, notes = [], []
    for key in order:
        group = groups[key]
        why = _why_not_folds(group) if key[0] == "folds" else None
        if why:
            notes.append(f"k-fold runs {', '.join(r['run'] for r in group)} are listed one by one: {why}.")
            out += [[run] for run in group]
        else:
            out.append(group)
    return out, notes


def pooled_confusion(runs: Sequence[dict], stage: str) -> tuple[np.ndarray, list[str]] | None:
    blocks = [(r.get("metrics") or {}).get(stage) for r in runs]
    if not blocks or any(not isinstance(b, dict) or "confusion_matrix" not in b for b in blocks):
        return None
    names = blocks[0].get("class_names") or []
    if any(b.get("class_names") != names for b in blocks):
        return None
    return np.sum([np.asarray(b["confusion_matrix"], dtype=np.int64) for b in blocks], axis=0), names


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fold_row(rows: Sequence[dict], runs: Sequence[dict], stage: str, missed: Sequence[str]) -> tuple[dict, dict | None]:
    """One row for the folds ``runs`` (their ``rows`` in the same order), and the pooled summary."""
    out: dict[str, Any] = dict(rows[0])
    setting = " ".join(_setting(rows[0]["overrides"].split()))
    out["run"] = f"{setting or 'runs ' + rows[0]['run'] + '..' + rows[-1]['run']} ({len(rows)} folds)"
    out["overrides"] = f"{setting} dataset.fold=0..{len(rows) - 1}".strip()
    for column in rows[0]:
        values = [r.get(column) for r in rows]
        if column in ("rank", "trainable_params") or not all(_is_number(v) for v in values):
            continue
        if column.endswith(("_lo", "_hi")):
            out[column] = None  # one fold's interval says nothing about the others: the spread is _sd
        elif not any(part in column for part in COUNT_PARTS):
            out[column] = statistics.fmean(values)
            out[f"{column}_sd"] = statistics.stdev(values)
    pooled = pooled_confusion(runs, stage)
    summary = None
    if pooled is not None:
        cm, names = pooled
        normal = runs[0]["normal_class"]
        summary = summarize_confusion(cm, names, normal if normal in names else None)
        fn = {c: n for c, n in summary["fn_to_normal"].items() if n is not None}  # classes with images
        for cls in summary["fn_to_normal"]:
            if f"{stage}/fn_to_normal/{cls}" in out:
                out[f"{stage}/fn_to_normal/{cls}"] = fn.get(cls)
        out[f"{stage}/fn_to_normal_total"] = sum(fn.values()) if fn else None
        chosen = [c for c in missed if c in fn] or list(fn)
        out["missed"] = sum(fn[c] for c in chosen) if fn else None
        out[f"{stage}/acc_pooled"] = summary["accuracy"]
    out["folds"] = len(rows)
    out["fold_runs"] = " ".join(r["run"] for r in rows)
    return out, summary


def fold_cross_validation(runs: Sequence[dict], rows: Sequence[dict], stage: str,
                          missed: Sequence[str]) -> tuple[list[dict], list[str]]:
    """``rows`` (one per run, in ``runs`` order) with the folds of each k-fold setting folded into
    one row, every row with the same columns; notes give each pooled out-of-fold confusion matrix."""
    index = {id(run): i for i, run in enumerate(runs)}
    groups, notes = fold_groups(runs)
    out = []
    for group in groups:
        group_rows = [rows[index[id(run)]] for run in group]
        if len(group) < 2:
            out += group_rows
            continue
        row, pooled = fold_row(group_rows, group, stage, missed)
        out.append(row)
        if pooled is not None:
            notes.append(
                f"{row['run']}: pooled out-of-fold {stage} confusion matrix (rows true, columns predicted; "
                f"{', '.join(pooled['class_names'])}): {pooled['confusion_matrix']}; accuracy {pooled['accuracy']:.4f}; "
                "its missed-disease counts are over all images, a single run's over its test split"
            )
    columns: list[str] = []
    for row in out:
        columns += [c for c in row if c not in columns]
    return [{c: row.get(c) for c in columns} for row in out], notes
