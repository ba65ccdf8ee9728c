"""The report's tables beyond the per-image CSV: one row per model (``gradcam_summary.csv`` and the
HTML), the sanity-check cascade, and the legend that says what the shares mean."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lungcls.explain.checks.localisation import BORDER_ALERT, ratio
from lungcls.report.outputs import Explained
from lungcls.runs.files import replacing

SUMMARY_COLUMNS = (
    "model", "layer", "images", "right", "lesion_share", "lesion_uniform", "lesion_ratio", "lesion_better_on",
    "lung_share", "lung_uniform", "border_share", "border_uniform", "border_ratio", "sanity_spearman",
    "sanity_flagged",
)


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def model_rows(explained: Sequence[Explained], summary: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per model: where its maps put their energy on average, against a uniform map, and what the
    sanity check found."""
    rows = []
    for e in explained:
        s = summary[e.model.name]
        labelled = [r for r in e.rows if r["label"] is not None]
        sanity = e.sanity
        rows.append({
            "model": e.model.name,
            "layer": e.layer.describe() if e.layer is not None else None,
            "images": len(e.rows),
            "right": sum(r["prediction"] == r["label"] for r in labelled) if labelled else None,
            "lesion_share": s["lesion_share_mean"],
            "lesion_uniform": s["lesion_uniform_mean"],
            "lesion_ratio": ratio(s["lesion_share_mean"], s["lesion_uniform_mean"]),
            "lesion_better_on": s["lesion_beats_frac"],
            "lung_share": s["lung_share_mean"],
            "lung_uniform": s["lung_uniform_mean"],
            "border_share": s["border_share_mean"],
            "border_uniform": s["border_uniform_mean"],
            "border_ratio": ratio(s["border_share_mean"], s["border_uniform_mean"]),
            "sanity_spearman": _mean(sanity.spearman) if sanity is not None else None,
            "sanity_flagged": sum(bool(f) for f in sanity.flagged) if sanity is not None else None,
        })
    return rows


def cascade_rows(explained: Sequence[Explained]) -> list[dict[str, Any]]:
    """One row per model and cascade stage: what is re-initialised so far and the mean correlation."""
    rows = []
    for e in explained:
        if e.sanity is None:
            continue
        for k, (label, rho) in enumerate(e.sanity.stages, start=1):
            reset = "the classifier" if k == 1 else f"the classifier and the blocks down to {label}"
            rows.append({"model": e.model.name, "stage": k, "re-initialised": reset, "mean_spearman": rho})
    return rows


def write_summary_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    with replacing(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(SUMMARY_COLUMNS)
        for row in rows:
            w.writerow(["" if row.get(c) is None else (f"{row[c]:.6f}" if isinstance(row[c], float) else row[c])
                        for c in SUMMARY_COLUMNS])
    return path


def legend_lines(border_frac: float, threshold: float | None) -> list[str]:
    """What each number means, for the top of the report."""
    lines = [
        "A share is the part of a map's total energy inside a region. Its uniform value is the region's share of "
        "the image area: what a flat map, looking nowhere in particular, would score. Ratio = share / uniform.",
        "lung_share: inside the lung mask. A model that reads the lungs scores well above uniform.",
        "lesion_share: inside the finding's mask (the demo data set has one per disease image; empty for Normal). "
        "A ratio above 1 on most images means the model looks at the disease; about 1 means it does not.",
        f"border_share: in the outer band ({border_frac:.0%} of the side) where burned-in labels, markers and "
        f"collimation edges sit. A ratio of {BORDER_ALERT} or more suggests the model reads them: a shortcut "
        "that fails on other hospitals' films.",
        "layer: the layer Grad-CAM explains and its map's grid at the model's input size (report.layer); "
        "a coarse grid blurs every share toward uniform.",
    ]
    if threshold is not None:
        lines.append(
            "sanity_spearman: rank correlation between the map and the map of the same model with its layers "
            "re-initialised from the classifier down to the explained layer (model-randomisation test, Adebayo et "
            f"al. 2018). Near 0: the map depends on what the model learned. sanity_flag: {threshold:.2f} or more, "
            "the map barely changed, so it shows the image rather than the model; do not read its shares."
        )
    return lines
