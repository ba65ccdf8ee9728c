"""The report's files and text: ``gradcam.csv`` rows, one figure per image selection, and the
summary lines of the HTML page."""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lungcls.data.pixels.images import load_image
from lungcls.data.samples.splits import read_splits_csv
from lungcls.explain.maps.explainer import ReportModel
from lungcls.explain.checks.faithfulness import Curves
from lungcls.report.figures import figure_parts, plot_cam_grid, plot_curves
from lungcls.explain.maps.engine import CamResult
from lungcls.report.html import FigureSection
from lungcls.explain.maps.layers import CamLayer
from lungcls.explain.checks.sanity import SanityResult
from lungcls.report.selection import ReportImage
from lungcls.runs.files import replacing

log = logging.getLogger(__name__)

CSV_COLUMNS = (
    "selection",
    "path",
    "label",
    "model",
    "method",
    "prediction",
    "probability",
    "target",
    "target_probability",
    "layer",
    "grid",
    "lung_share",
    "lung_uniform",
    "lesion_share",
    "lesion_uniform",
    "border_share",
    "border_uniform",
    "sanity_spearman",
    "sanity_flag",
    "hit",
    "iou",
    "deletion_auc",
    "insertion_auc",
    "deletion_auc_random",
    "insertion_auc_random",
    "ms_per_image",
)
SHARE_COLUMNS = ("lung_share", "lung_uniform", "lesion_share", "lesion_uniform", "border_share", "border_uniform")
TARGET_TEXT = {"predicted": "the predicted class", "true": "the true class"}
SELECTION_TITLES = {
    "per_class": "Per class",
    "misses": "Missed disease (predicted as the normal class)",
    "paths": "Selected images",
}


# --------------------------------------------------------------------------- outputs


@dataclass
class Explained:
    """What one model gave for the report's unique images, in their order."""

    model: ReportModel
    result: CamResult
    display_cams: torch.Tensor
    rows: list[dict[str, Any]] = field(default_factory=list)
    layer: CamLayer | None = None
    sanity: SanityResult | None = None
    method: str = "gradcam"
    method_title: str = "Grad-CAM"
    curves: Curves | None = None


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    with replacing(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for row in rows:
            w.writerow([_fmt(row.get(c)) for c in CSV_COLUMNS])
    return path


def short_names(explained: Sequence[Explained]) -> list[str]:
    """Panel headings: ``backbone/finetune``, numbered where two models share one."""
    bases = [e.model.name.partition(" (")[0] for e in explained]
    return [f"{b} #{i + 1}" if bases.count(b) > 1 else b for i, b in enumerate(bases)]


def _cell_title(row: Mapping[str, Any]) -> str:
    """The model's prediction and probability, a mark if wrong, and a flag if the map failed the
    sanity check."""
    title = f"{row['prediction']} {row['probability']:.2f}"
    if row["label"] is not None and row["prediction"] != row["label"]:
        title += " \u2717"
    if row.get("sanity_flag"):
        title += " (!)"
    return title


def _image_title(image: ReportImage) -> str:
    """True class, then the file name (the figure shortens long lines in the middle)."""
    return f"{image.label or 'class unknown'}\n{Path(image.path).name}"


def write_figures(
    out_dir: Path,
    selections: Mapping[str, Sequence[ReportImage]],
    index: Mapping[str, int],
    explained: Sequence[Explained],
    display_size: int,
    target_text: str,
) -> list[tuple[str, FigureSection]]:
    """One figure (PNG at 300 dpi + PDF) per selection, split into parts of at most six rows;
    returns (key, section) pairs in display order."""
    out: list[tuple[str, FigureSection]] = []
    names = short_names(explained)
    legend = "; ".join(f"{short} = {e.model.name}" for short, e in zip(names, explained) if short != e.model.name)
    for key, images in selections.items():
        parts = figure_parts(len(images), len(explained))
        for k, part in enumerate(parts, start=1):
            chosen = [images[i] for i in part]
            suffix = f"_{k}" if len(parts) > 1 else ""
            rows = [index[im.path] for im in chosen]
            png = plot_cam_grid(
                [load_image(im.path, display_size)[0] for im in chosen],
                [e.display_cams[rows] for e in explained],
                image_titles=[_image_title(im) for im in chosen],
                model_names=names,
                cell_titles=[[_cell_title(e.rows[r]) for r in rows] for e in explained],
                path=out_dir / f"gradcam_{key}{suffix}.png",
                bar_label=f"{explained[0].method_title} (each map scaled to max = 1)",
            )
            title = SELECTION_TITLES.get(key, key)
            if len(parts) > 1:
                title += f" (part {k} of {len(parts)})"
            caption = (
                f"{len(chosen)} X-rays. Each shows the image (headed by its true class and file), then each model's "
                f"{explained[0].method_title} of "
                f"{target_text} over it, headed by the model's prediction and probability (\u2717 = wrong, "
                "(!) = the map failed the sanity check). Also as PDF: "
                f"{png.with_suffix('.pdf').name}." + (f" Models: {legend}." if legend else "")
            )
            out.append((f"{key}{suffix}", FigureSection(title, png, caption)))
    return out


def method_images(images: Sequence[ReportImage], n: int) -> list[int]:
    """Indices of the X-rays the methods figure shows: images with a lesion mask first (where the
    maps can be checked by eye), then the rest, in report order."""
    with_lesion = [i for i, im in enumerate(images) if im.lesion_mask is not None and im.label is not None]
    rest = [i for i in range(len(images)) if i not in with_lesion]
    return (with_lesion + rest)[:n]


def _method_cell(row: Mapping[str, Any]) -> str:
    deletion = row.get("deletion_auc")
    return ("" if deletion is None else f"del {deletion:.2f}") + (" (!)" if row.get("sanity_flag") else "")


def write_method_figures(out_dir: Path, images: Sequence[ReportImage], per_model: Sequence[Sequence[Explained]],
                         n_images: int, display_size: int, target_text: str) -> list[FigureSection]:
    """One figure per model with one column per method on the same X-rays (PNG 300 dpi + PDF)."""
    chosen = method_images(images, n_images)
    sections = []
    for k, runs in enumerate(per_model, start=1):
        if not runs or not chosen:
            continue
        name = "methods" if len(per_model) == 1 else f"methods_{k}"
        png = plot_cam_grid(
            [load_image(images[i].path, display_size)[0] for i in chosen],
            [e.display_cams[chosen] for e in runs],
            image_titles=[_image_title(images[i]) for i in chosen],
            model_names=[e.method for e in runs],
            cell_titles=[[_method_cell(e.rows[i]) for i in chosen] for e in runs],
            path=out_dir / f"{name}.png", bar_label="attribution (each map scaled to max = 1)",
        )
        sections.append(FigureSection(
            f"Every method on the same X-rays: {runs[0].model.name}", png,
            f"Each row: the X-ray, then each method's map of {target_text}, headed by its deletion AUC on that image "
            "(lower = the prediction falls faster as the most attributed pixels are blurred away; (!) = the map "
            f"failed the sanity check). Also as PDF: {png.with_suffix('.pdf').name}."))
    return sections


def write_curve_figure(out_dir: Path, per_model: Sequence[Sequence[Explained]],
                       random: Sequence[Curves | None]) -> FigureSection | None:
    """The mean deletion and insertion curves of every method of every model against random order
    (None when the curves were not computed, ``report.faithfulness=false``)."""
    panels = []
    for runs, rand in zip(per_model, random):
        if not runs or rand is None:
            continue
        name = runs[0].model.name
        panels.append((f"Deletion: {name}", {e.method: e.curves.deletion.mean(axis=0) for e in runs}, rand.deletion.mean(axis=0)))
        panels.append((f"Insertion: {name}", {e.method: e.curves.insertion.mean(axis=0) for e in runs}, rand.insertion.mean(axis=0)))
    if not panels:
        return None
    png = plot_curves(panels, out_dir / "methods_deletion.png", xlabel="share of pixels blurred (deletion) or restored (insertion)")
    return FigureSection(
        "Deletion and insertion curves", png,
        "Mean probability of the explained class as the most attributed pixels are replaced by a blurred copy "
        "(deletion: a faithful map falls fast, below the dashed random order) or restored into the blurred image "
        f"(insertion: a faithful map rises fast). Also as PDF: {png.with_suffix('.pdf').name}.")


def _train_overlap(models: Sequence[ReportModel], paths: Sequence[str]) -> list[str]:
    """Warn when shown images were training images of a model (its CAMs would flatter it)."""
    notes = []
    wanted = set(paths)
    for m in models:
        splits_csv = m.run_dir / "splits.csv"
        if not splits_csv.is_file():
            continue
        seen = [p for p, s in read_splits_csv(splits_csv).items() if s == "train" and p in wanted]
        if seen:
            notes.append(f"Note: {len(seen)} of the {len(wanted)} images are in the train split of {m.name}.")
    return notes


def summary_lines(
    notes: Sequence[str],
    explained: Sequence[Explained],
    n_images: int,
    target_text: str,
    display_size: int,
    border_frac: float,
    loc_lines: Sequence[str],
) -> list[str]:
    lines = [
        *notes,
        f"{n_images} images x {len(explained)} models; CAMs explain {target_text}; shares measured at "
        f"{display_size} px, border band {border_frac:.0%} of the side.",
    ]
    for e in explained:
        labelled = [r for r in e.rows if r["label"] is not None]
        right = sum(r["prediction"] == r["label"] for r in labelled)
        where = f"; maps of {e.layer.describe()} at {e.model.image_size} px" if e.layer is not None else ""
        lines.append(f"{e.model.name}: right on {right} of the {len(labelled)} labelled images shown{where} ({e.model.checkpoint})")
    lines += [f"Localisation, {line}" for line in loc_lines]
    lines += [line for e in explained if (line := sanity_line(e))]
    return lines + _train_overlap([e.model for e in explained], [r["path"] for r in explained[0].rows])


def sanity_line(e: Explained) -> str:
    """What the model-randomisation check found for one model, in one sentence."""
    if e.sanity is None:
        return ""
    rhos = [r for r in e.sanity.spearman if r is not None]
    flagged = sum(bool(f) for f in e.sanity.flagged)
    last = e.sanity.stages[-1][0] if e.sanity.stages else "?"
    mean = f"{sum(rhos) / len(rhos):.2f}" if rhos else "n/a"
    verdict = "maps follow the learned weights" if not flagged else "flagged maps show the image more than the model"
    constant = len(e.sanity.spearman) - len(rhos)  # nothing to rank: neither flagged nor passed, as in methods.csv
    left_out = f"; {constant} constant map(s) have no rank correlation and are left out" if constant else ""
    return (
        f"Sanity check, {e.model.name}: with the layers from the classifier down to {last} re-initialised, the maps' "
        f"rank correlation with the trained maps is {mean} on average; {flagged} of {len(rhos)} maps "
        f"flagged (>= {e.sanity.threshold:.2f}){left_out}: {verdict}."
    )
