"""The report's tables beyond the per-image CSV: one row per model (``gradcam_summary.csv`` and the
HTML), the sanity-check cascade, and the legend that says what the shares mean."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lungcls.explain.checks.localisation import BORDER_ALERT, ratio
from lungcls.report.html import TableSection, filled_columns
from lungcls.report.outputs import Explained
from lungcls.runs.files import write_rows_csv

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


METHODS_SHOWN = ("model", "method", "grid", "images", "hit_rate", "iou", "lesion_share", "lesion_ratio", "lung_share",
                 "border_share", "deletion_auc", "deletion_auc_random", "insertion_auc", "sanity_spearman",
                 "sanity_flagged", "ms_per_image")
_METHOD_NOTES = {
    "hit_rate": "hit_rate: the map's maximum lies on the lesion",
    "iou": "iou: the map's top pixels (as many as the lesion has) against the lesion mask",
    "deletion_auc": "deletion_auc: lower is more faithful, compare it with deletion_auc_random",
    "sanity_spearman": "sanity_spearman: near 0 means the map depends on the learned weights",
    "sanity_flagged": "sanity_flagged: the share of maps flagged, over the maps that have a rank correlation",
    "ms_per_image": "ms_per_image on the device used",
}


def methods_section(table: Sequence[Mapping[str, Any]]) -> TableSection:
    """The "Which map to trust" table of the page: methods.csv's means, without the columns no row
    has a value for (without lesion or lung masks the localisation columns are blank: shown, they
    push the sanity and timing columns off the page), and a caption that explains only what is shown."""
    rows = [{c: r.get(c) for c in METHODS_SHOWN} for r in table]
    shown = filled_columns(rows)
    left_out = [c for c in METHODS_SHOWN if c not in shown]
    caption = "Means over the images (95% bootstrap intervals in methods.csv). " + "; ".join(
        text for c, text in _METHOD_NOTES.items() if c in shown) + "."
    if left_out:
        caption += f" Left out, no value on these images (no masks to measure against): {', '.join(left_out)}."
    return TableSection("Methods (methods.csv)", [{c: r[c] for c in shown} for r in rows], caption, "methods")


def write_summary_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    return write_rows_csv(path, SUMMARY_COLUMNS, rows)


def _mask_lines(images: Sequence[Any]) -> list[str]:
    """What the lung and lesion shares mean on these images: measured against the masks they have,
    or said to be not measured (real films often come without masks)."""
    n = len(images)
    lung = sum(getattr(im, "mask", None) is not None for im in images)
    lesion = sum(getattr(im, "lesion_mask", None) is not None for im in images)
    lines = [f"lung_share: inside the lung mask ({lung} of {n} images have one). A model that reads the lungs scores "
             "well above uniform." if lung else
             f"lung_share: not measured: none of the {n} images has a lung mask (masks/ beside images/)."]
    lines.append(f"lesion_share: inside the finding's mask ({lesion} of {n} images have one; Normal films have none). "
                 "A ratio above 1 on most images means the model looks at the disease; about 1 means it does not."
                 if lesion else
                 f"lesion_share, hit_rate, iou: not measured: none of the {n} images has a lesion mask "
                 "(lesion_masks/ beside images/), so nothing here says whether a map falls on the disease.")
    return lines


def legend_lines(border_frac: float, threshold: float | None, images: Sequence[Any] = ()) -> list[str]:
    """What each number means, for the top of the report, said of ``images`` (the X-rays shown:
    which of them have lung and lesion masks)."""
    lines = [
        "A share is the part of a map's total energy inside a region. Its uniform value is the region's share of "
        "the image area: what a flat map, looking nowhere in particular, would score. Ratio = share / uniform.",
        *_mask_lines(images),
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
            "the map barely changed, so it shows the image rather than the model; do not read its shares. A constant "
            "map (all zero: nothing to rank) has no correlation and is neither flagged nor passed: every count and "
            "share of flagged maps (console, tables, methods.csv) is over the maps that have one."
        )
    return lines
