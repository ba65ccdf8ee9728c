""""Which map to trust": the methods of a report compared on one table (``methods.csv``, one row per
model x method, each number a mean with a 95% bootstrap interval) and one plain sentence per
method: does it localise, is it faithful, does it pass the sanity check; then the method the
evidence recommends.

Verdicts: a method *localises* when the lower end of its lesion share's interval is above the
uniform share (it beats a flat map on these images with confidence); it is *faithful* when the
lower end of ``deletion_gain`` (random-order deletion AUC minus its own, per image) is above 0;
it *passes the sanity check* when its mean rank correlation with the randomised model's map is
below ``report.sanity_threshold``. The recommendation is, among the model-dependent methods that
pass both the sanity and faithfulness checks, the one with the highest hit rate (then lesion
share); without lesion masks, the one that deletes fastest against random.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lungcls.runs.files import write_rows_csv

__all__ = ["METHOD_COLUMNS", "method_table", "recommendation", "verdict_lines", "write_methods_csv"]

# methods.csv column -> gradcam.csv column it averages
METRICS = {
    "hit_rate": "hit", "iou": "iou", "lesion_share": "lesion_share", "lesion_uniform": "lesion_uniform",
    "lung_share": "lung_share", "border_share": "border_share", "deletion_auc": "deletion_auc",
    "insertion_auc": "insertion_auc", "deletion_auc_random": "deletion_auc_random",
    "insertion_auc_random": "insertion_auc_random", "deletion_gain": "deletion_gain",
    "sanity_spearman": "sanity_spearman", "sanity_flagged": "sanity_flag",
}
METHOD_COLUMNS = ("model", "method", "grid", "images", "lesion_ratio", "ms_per_image",
                  *[f"{m}{suffix}" for m in METRICS for suffix in ("", "_lo", "_hi")])
RESAMPLES, LEVEL = 1000, 0.95


def bootstrap_mean(values: Sequence[float | None], seed: int = 0) -> tuple[float | None, float | None, float | None]:
    """Mean of the defined values and its percentile bootstrap interval (seeded: the same numbers
    give the same interval); None where no value is defined."""
    kept = np.asarray([float(v) for v in values if v is not None], dtype=np.float64)
    if kept.size == 0:
        return None, None, None
    rng = np.random.default_rng(seed)
    means = kept[rng.integers(0, kept.size, size=(RESAMPLES, kept.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(kept.mean()), float(lo), float(hi)


def _value(row: Mapping[str, Any], key: str) -> float | None:
    if key == "deletion_gain":
        if row["deletion_auc"] is None or row["deletion_auc_random"] is None:
            return None
        return row["deletion_auc_random"] - row["deletion_auc"]
    value = row.get(key)
    if value is None:
        return None
    return float(value)


def method_table(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per model x method (in the order first seen) from the per-image rows."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["method"]), []).append(row)
    table = []
    for (model, method), items in groups.items():
        out: dict[str, Any] = {"model": model, "method": method, "grid": items[0]["grid"], "images": len(items),
                               "ms_per_image": items[0]["ms_per_image"]}
        for name, key in METRICS.items():
            out[name], out[f"{name}_lo"], out[f"{name}_hi"] = bootstrap_mean([_value(r, key) for r in items])
        share, uniform = out["lesion_share"], _paired_uniform(items)
        out["lesion_ratio"] = None if share is None or not uniform else share / uniform
        table.append(out)
    return table


def _paired_uniform(items: Sequence[Mapping[str, Any]]) -> float | None:
    """Mean uniform lesion share over the images where the lesion share is defined."""
    kept = [r["lesion_uniform"] for r in items if r.get("lesion_share") is not None]
    return float(np.mean(kept)) if kept else None


def write_methods_csv(path: Path, table: Sequence[Mapping[str, Any]]) -> Path:
    return write_rows_csv(path, METHOD_COLUMNS, table)


def _checks(row: Mapping[str, Any], threshold: float) -> tuple[bool | None, bool | None, bool | None]:
    """(localises, faithful, passes the sanity check); None where it cannot be told."""
    localises = None
    if row["lesion_share_lo"] is not None:
        localises = bool(row["lesion_share_lo"] > _uniform(row))
    faithful = None if row["deletion_gain_lo"] is None else bool(row["deletion_gain_lo"] > 0)
    sane = None if row["sanity_spearman"] is None else bool(row["sanity_spearman"] < threshold)
    return localises, faithful, sane


def _uniform(row: Mapping[str, Any]) -> float:
    share, ratio = row["lesion_share"], row["lesion_ratio"]
    return share / ratio if share is not None and ratio else float("inf")


def _f(value: float | None, fmt: str = ".2f") -> str:
    return "n/a" if value is None else format(value, fmt)


def verdict_lines(table: Sequence[Mapping[str, Any]], threshold: float) -> list[str]:
    """One plain sentence per model x method."""
    lines = []
    for row in table:
        localises, faithful, sane = _checks(row, threshold)
        if localises is None:
            loc = "localisation not measured (no lesion masks)"
        else:
            loc = (f"{'localises' if localises else 'does NOT localise'} (lesion share {_f(row['lesion_ratio'])}x "
                   f"uniform, hit rate {_f(row['hit_rate'])}, IoU {_f(row['iou'])})")
        faith = ("faithfulness not measured (report.faithfulness=false)" if faithful is None else
                 f"{'faithful' if faithful else 'NOT faithful'} (deletion AUC {_f(row['deletion_auc'])} vs "
                 f"{_f(row['deletion_auc_random'])} in random order)")
        sanity = ("sanity check not run" if sane is None else
                  f"{'passes' if sane else 'FAILS'} the sanity check (mean Spearman {_f(row['sanity_spearman'])})")
        lines.append(f"{row['method']} ({row['model']}, {row['grid']}): {loc}; {faith}; {sanity}; "
                     f"{_f(row['ms_per_image'], '.1f')} ms per image.")
    return lines


def recommendation(table: Sequence[Mapping[str, Any]], threshold: float, model_free: set[str]) -> list[str]:
    """Per model: the method the evidence recommends, and why (one sentence)."""
    lines = []
    for model in dict.fromkeys(r["model"] for r in table):
        rows = [r for r in table if r["model"] == model and r["method"] not in model_free]
        good = [r for r in rows if _checks(r, threshold)[1] and _checks(r, threshold)[2] is not False]
        if rows and all(_checks(r, threshold)[1] is None for r in rows):
            lines.append(f"No recommendation for {model}: faithfulness was not measured (report.faithfulness=true "
                         "turns it on; it is on by default when two or more methods are compared).")
            continue
        if not good:
            lines.append(f"Recommended for {model}: none; no method is both faithful and passes the sanity check, "
                         "so read its maps with care.")
            continue
        masks = any(r["hit_rate"] is not None for r in good)
        key = (lambda r: (r["hit_rate"] or 0.0, r["lesion_share"] or 0.0)) if masks else (lambda r: r["deletion_gain"] or 0.0)
        best = max(good, key=key)
        why = (f"the highest hit rate ({_f(best['hit_rate'])}, lesion share {_f(best['lesion_ratio'])}x uniform)"
               if masks else f"the largest drop against random deletion ({_f(best['deletion_gain'])})")
        lines.append(f"Recommended for {model}: {best['method']}: of the {len(good)} methods that are faithful and pass "
                     f"the sanity check, it has {why}.")
    return lines
