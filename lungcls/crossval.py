"""Cross-validation in the comparison: the k runs of one setting that differ only in
``dataset.fold`` become one row.

A k-fold run is one of k views of the same setting; listing the folds as separate runs invites
picking the best fold. The folded row holds each number's mean over the folds with its standard
deviation (``_sd`` columns), and the counts and accuracy of the pooled out-of-fold confusion matrix
(every image tested exactly once across the folds), whose per-setting matrices are also returned
for the report.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

from lungcls.metrics import summarize_confusion
from lungcls.runs import STATUS_OK

FOLD_KEY = "dataset.fold"


def _setting(overrides: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted(o for o in overrides if not o.lstrip("+~").startswith(f"{FOLD_KEY}=")))


def fold_groups(runs: Sequence[dict]) -> list[list[dict]]:
    """Runs grouped by setting: runs that differ only in ``dataset.fold`` (and ran k-fold) share a
    group; every other run is a group of its own, in the original order."""
    groups: dict[tuple, list[dict]] = {}
    order: list[tuple] = []
    for i, run in enumerate(runs):
        folds = ((run.get("config") or {}).get("dataset") or {}).get("folds")
        key = ("folds", _setting(run["overrides"])) if folds else ("run", i)
        if key not in groups:
            order.append(key)
        groups.setdefault(key, []).append(run)
    return [groups[k] for k in order]


def _pooled_confusion(runs: Sequence[dict], stage: str) -> tuple[np.ndarray, list[str]] | None:
    blocks = [(r.get("metrics") or {}).get(stage) for r in runs]
    if not blocks or any(not isinstance(b, dict) or "confusion_matrix" not in b for b in blocks):
        return None
    names = blocks[0].get("class_names") or []
    if any(b.get("class_names") != names for b in blocks):
        return None
    return np.sum([np.asarray(b["confusion_matrix"], dtype=np.int64) for b in blocks], axis=0), names


def fold_row(rows: Sequence[dict], runs: Sequence[dict], stage: str, missed: Sequence[str]) -> tuple[dict, dict | None]:
    """One row for the fold runs ``runs`` (their ``rows`` in the same order): means, ``_sd``
    columns, ``folds``, and the pooled out-of-fold numbers; plus the pooled summary (or None)."""
    ok = [row for row in rows if row["status"] == STATUS_OK]
    out: dict[str, Any] = dict(rows[0])
    folds = sorted(((r.get("config") or {}).get("dataset") or {}).get("fold") for r in runs)
    setting = " ".join(_setting(rows[0]["overrides"].split()))
    out["run"] = f"{setting or 'runs ' + rows[0]['run'] + '..' + rows[-1]['run']} ({len(rows)} folds)"
    out["overrides"] = f"{setting} dataset.fold={folds}".strip()
    out["status"] = STATUS_OK if len(ok) == len(rows) else f"incomplete: {len(rows) - len(ok)} of {len(rows)} folds without {stage} metrics"
    for column, value in rows[0].items():
        values = [r[column] for r in ok if isinstance(r.get(column), (int, float)) and not isinstance(r.get(column), bool)]
        if column in ("rank",) or not isinstance(value, (int, float)) or isinstance(value, bool) or len(values) != len(ok):
            continue
        out[column] = statistics.fmean(values) if values else None
        if "/" in column or column == "missed":
            out[f"{column}_sd"] = statistics.stdev(values) if len(values) > 1 else None
    for column in [c for c in out if c.endswith(("_lo", "_hi"))]:
        out[column] = None  # one fold's interval says nothing about the others: the spread is _sd
    pooled = _pooled_confusion(runs, stage) if len(ok) == len(rows) else None
    summary = None
    if pooled is not None:
        cm, names = pooled
        normal = runs[0]["normal_class"]
        summary = summarize_confusion(cm, names, normal if normal in names else None)
        out[f"{stage}/acc_pooled"] = summary["accuracy"]
        out["missed"] = sum(summary["fn_to_normal"].get(c, 0) for c in missed) if summary["fn_to_normal"] else out.get("missed")
        out["folds"] = len(rows)
    return out, summary


def fold_cross_validation(runs: Sequence[dict], rows: Sequence[dict], stage: str,
                          missed: Sequence[str]) -> tuple[list[dict], list[str]]:
    """``rows`` (one per run, in ``runs`` order) with the fold runs of each setting folded into one
    row, every row with the same columns; notes give each pooled out-of-fold confusion matrix."""
    index = {id(run): i for i, run in enumerate(runs)}
    out, notes = [], []
    for group in fold_groups(runs):
        group_rows = [rows[index[id(run)]] for run in group]
        if len(group) < 2:
            out += group_rows
            continue
        row, pooled = fold_row(group_rows, group, stage, missed)
        out.append(row)
        if pooled is not None:
            notes.append(
                f"{row['run']}: pooled out-of-fold {stage} confusion matrix (rows true, columns predicted; "
                f"{', '.join(pooled['class_names'])}): {pooled['confusion_matrix']}; accuracy {pooled['accuracy']:.4f}"
            )
    columns: list[str] = []
    for row in out:
        columns += [c for c in row if c not in columns]
    return [{c: row.get(c) for c in columns} for row in out], notes
