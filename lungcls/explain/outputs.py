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

from lungcls.data.images import load_image
from lungcls.data.splits import read_splits_csv
from lungcls.explain.cams import ReportModel
from lungcls.explain.figures import plot_cam_grid
from lungcls.explain.gradcam import CamResult
from lungcls.explain.html import FigureSection
from lungcls.explain.selection import ReportImage

log = logging.getLogger(__name__)

CSV_COLUMNS = (
    "selection",
    "path",
    "label",
    "model",
    "prediction",
    "probability",
    "target",
    "target_probability",
    "lung_share",
    "lung_uniform",
    "lesion_share",
    "lesion_uniform",
    "border_share",
    "border_uniform",
)
SHARE_COLUMNS = CSV_COLUMNS[-6:]
MAX_ROWS_PER_FIGURE = 24  # taller figures get unwieldy in a browser; larger selections are split
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


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for row in rows:
            w.writerow([_fmt(row.get(c)) for c in CSV_COLUMNS])
    return path


def _wrap_name(name: str) -> str:
    """Column titles: the model on one line, its run folder on the next."""
    base, _, rest = name.partition(" (")
    return f"{base}\n({rest}" if rest else base


def _cell_title(row: Mapping[str, Any]) -> str:
    """One line (the column title sits right above it): prediction, probability, a mark if wrong."""
    title = f"{row['prediction']} {row['probability']:.2f}"
    if row["label"] is not None and row["prediction"] != row["label"]:
        title += " \u2717"
    return title


def _row_title(image: ReportImage) -> str:
    return f"true: {image.label or '?'}\n{_short(Path(image.path).name, 28)}"


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width // 2 - 1] + "\u2026" + text[-(width - width // 2) :]


def write_figures(
    out_dir: Path,
    selections: Mapping[str, Sequence[ReportImage]],
    index: Mapping[str, int],
    explained: Sequence[Explained],
    display_size: int,
    target_text: str,
) -> list[tuple[str, FigureSection]]:
    """One PNG per selection (split into parts when very long); returns (key, section) pairs."""
    out: list[tuple[str, FigureSection]] = []
    col_titles = ["Image", *(_wrap_name(e.model.name) for e in explained)]
    for key, images in selections.items():
        parts = [images[i : i + MAX_ROWS_PER_FIGURE] for i in range(0, len(images), MAX_ROWS_PER_FIGURE)]
        for k, part in enumerate(parts, start=1):
            suffix = f"_{k}" if len(parts) > 1 else ""
            rows = [index[im.path] for im in part]
            displays = [load_image(im.path, display_size)[0] for im in part]
            png = plot_cam_grid(
                displays,
                [e.display_cams[rows] for e in explained],
                row_titles=[_row_title(im) for im in part],
                col_titles=col_titles,
                cell_titles=[[_cell_title(e.rows[r]) for r in rows] for e in explained],
                path=out_dir / f"gradcam_{key}{suffix}.png",
            )
            title = SELECTION_TITLES.get(key, key)
            if len(parts) > 1:
                title += f" (part {k} of {len(parts)})"
            caption = (
                f"{len(part)} images; rows: true class and file; columns: the image, then each "
                f"model's Grad-CAM of {target_text}, titled with the model's prediction and its "
                "probability (\u2717 = wrong)."
            )
            out.append((f"{key}{suffix}", FigureSection(title, png, caption)))
    return out


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
        lines.append(f"{e.model.name}: right on {right} of the {len(labelled)} labelled images shown ({e.model.checkpoint})")
    lines += [f"Localisation, {line}" for line in loc_lines]
    return lines + _train_overlap([e.model for e in explained], [r["path"] for r in explained[0].rows])
