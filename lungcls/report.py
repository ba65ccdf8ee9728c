"""``lungcls-report``: Grad-CAM figures of one or more checkpoints side by side on the same X-rays
(Hydra app; see conf/report.yaml).

The report answers "where does each model look, and does it look at the disease?" for a fixed set
of images, so every model sees exactly the same files (each at its own training size) and every
number is measured against the same masks at one common display size. It writes into the run
folder: ``report.html`` (self-contained), one ``gradcam_<selection>.png`` (300 dpi) and ``.pdf`` per
image selection, ``gradcam.csv`` (one row per image x model, with the model-randomisation sanity
check) and ``gradcam_summary.csv`` (one row per model); optionally the figures and the table go to
the W&B run of a training run folder (``report.log_to``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lungcls.cli import hydra_main
from lungcls.data.images import load_mask
from lungcls.models.device import pick_device
from lungcls.errors import LungclsError
from lungcls.explain.cams import ReportModel, batch_size_of, class_targets, explain_batch, image_batch, load_models, to_display
from lungcls.explain.html import TableSection, write_report_html
from lungcls.explain.layers import DEFAULT_MIN_CELLS, CamLayer, layer_requests
from lungcls.explain.localisation import energy_shares, localisation_lines, summarize_localisation
from lungcls.explain.outputs import CSV_COLUMNS, TARGET_TEXT, Explained, sanity_line, summary_lines, write_csv, write_figures
from lungcls.explain.sanity import DEFAULT_THRESHOLD, sanity_check
from lungcls.explain.tables import cascade_rows, legend_lines, model_rows, write_summary_csv
from lungcls.explain.selection import ReportImage, select_images
from lungcls.training.loggers import log_report_to_wandb

log = logging.getLogger(__name__)


def explain_all(models: Sequence[ReportModel], layers: Sequence[CamLayer], unique: Sequence[ReportImage],
                membership: Mapping[str, Sequence[str]], settings: Mapping[str, Any]) -> list[Explained]:
    """CAMs of every model on the same images, the sanity check, and the CSV rows (shares at the
    display size)."""
    size, border = settings["display_size"], settings["border_frac"]
    masks = {im.path: (load_mask(im.mask, size), load_mask(im.lesion_mask, size)) for im in unique}
    explained = []
    for m, layer in zip(models, layers):
        log.info("Grad-CAM of %s (%s) on %d images", m.name, layer.describe(), len(unique))
        x = image_batch(unique, m.image_size)
        result = explain_batch(m, x, class_targets(settings["target"], m, unique), settings["batch_size"], layer)
        sanity = None
        if settings["sanity"]:
            sanity = sanity_check(m, x, result, layer, settings["batch_size"], settings["sanity_threshold"])
        item = Explained(m, result, to_display(result.cams, size), layer=layer, sanity=sanity)
        classes = m.class_names
        for i, im in enumerate(unique):
            row: dict[str, Any] = {
                "selection": ";".join(membership[im.path]),
                "path": im.path,
                "label": im.label,
                "model": m.name,
                "prediction": classes[int(result.preds[i])],
                "probability": float(result.pred_probs[i]),
                "target": classes[int(result.targets[i])],
                "target_probability": float(result.target_probs[i]),
                "layer": layer.path or "weights",
                "sanity_spearman": sanity.spearman[i] if sanity is not None else None,
                "sanity_flag": sanity.flagged[i] if sanity is not None else None,
            }
            row.update(energy_shares(item.display_cams[i], *masks[im.path], border_frac=border))
            item.rows.append(row)
        explained.append(item)
    return explained


def report_settings(cfg: DictConfig) -> dict[str, Any]:
    """``report.*`` checked before any model is loaded."""
    report = OmegaConf.to_container(cfg.report, resolve=True)
    display_size = int(report.get("display_size", 256))
    if display_size < 16:
        raise LungclsError(f"report.display_size={display_size} is too small; use 16 or more pixels")
    target = report.get("target", "predicted")
    log_to = report.get("log_to")
    if log_to and not Path(str(log_to)).expanduser().is_dir():
        raise LungclsError(f"report.log_to={log_to} is not a folder; give a training run folder (or leave it unset)")
    min_cells = report.get("min_cells", DEFAULT_MIN_CELLS)
    if isinstance(min_cells, bool) or not isinstance(min_cells, int) or min_cells < 1:
        raise LungclsError(f"report.min_cells={min_cells} must be a positive integer (cells across the map)")
    threshold = report.get("sanity_threshold", DEFAULT_THRESHOLD)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not -1.0 <= threshold <= 1.0:
        raise LungclsError(f"report.sanity_threshold={threshold} must be a rank correlation in [-1, 1], e.g. 0.5")
    sanity = report.get("sanity", True)
    if not isinstance(sanity, bool):
        raise LungclsError(f"report.sanity={sanity} must be true or false")
    return {
        **report,
        "display_size": display_size,
        "border_frac": float(report.get("border_frac", 0.1)),
        "batch_size": batch_size_of(report),
        "target": "true" if target is True else str(target),  # `report.target=true` arrives as a YAML bool
        "min_cells": min_cells,
        "sanity": sanity,
        "sanity_threshold": float(threshold),
    }


def unique_images(selections: Mapping[str, Sequence[ReportImage]]) -> tuple[list[ReportImage], dict[str, int], dict[str, list[str]]]:
    """Each image once (even when in several selections), its index, and the selections it is in."""
    unique: list[ReportImage] = []
    index: dict[str, int] = {}
    membership: dict[str, list[str]] = {}
    for key, images in selections.items():
        for im in images:
            if im.path not in index:
                index[im.path] = len(unique)
                unique.append(im)
            membership.setdefault(im.path, []).append(key)
    return unique, index, membership


def make_report(cfg: DictConfig) -> Path:
    """Write the Grad-CAM report into ``cfg.paths.output_dir``; returns the path of report.html."""
    s = report_settings(cfg)
    out_dir = Path(cfg.paths.output_dir)
    models = load_models(cfg.ckpt, pick_device(str(s.get("device", "auto"))))
    for m in models:
        class_targets(s["target"], m, [])  # an unknown class name fails before any work
    layers = [m.cam_layer(req, s["min_cells"]) for m, req in zip(models, layer_requests(s.get("layer"), len(models)))]
    selections, notes = select_images(s, models, seed=int(cfg.get("seed", 1)))
    unique, index, membership = unique_images(selections)
    out_dir.mkdir(parents=True, exist_ok=True)
    explained = explain_all(models, layers, unique, membership, s)
    rows = [e.rows[i] for i in range(len(unique)) for e in explained]
    csv_path = write_csv(out_dir / "gradcam.csv", rows)
    target_text = TARGET_TEXT.get(s["target"], f"class {s['target']}")
    figures = write_figures(out_dir, selections, index, explained, s["display_size"], target_text)
    summary = summarize_localisation(rows)
    per_model = model_rows(explained, summary)
    write_summary_csv(out_dir / "gradcam_summary.csv", per_model)
    loc_lines = localisation_lines(summary)
    lines = summary_lines(notes, explained, len(unique), target_text, s["display_size"], s["border_frac"], loc_lines)
    html = write_html(out_dir, models, unique, rows, per_model, explained, figures, lines, s)
    print("Grad-CAM localisation (mean share of CAM energy vs a uniform map):")
    for line in loc_lines + [line for e in explained if (line := sanity_line(e))]:
        print(f"  {line}")
    if s.get("log_to"):
        log_report_to_wandb(s["log_to"], figures, rows, CSV_COLUMNS)
    print(f"report: {html}")
    print(f"figures: {', '.join(str(sec.image) for _, sec in figures)} (and PDF); tables: {csv_path}, gradcam_summary.csv")
    return html


def write_html(out_dir: Path, models: Sequence[ReportModel], unique: Sequence[ReportImage], rows: Sequence[dict],
               per_model: Sequence[dict], explained: Sequence[Explained], figures: Sequence, lines: Sequence[str],
               s: Mapping[str, Any]) -> Path:
    """The self-contained page: summary, legend, per-model and sanity tables, figures, per-image table."""
    common = os.path.commonpath([im.path for im in unique]) if len(unique) > 1 else str(Path(unique[0].path).parent)
    table = [{"image": os.path.relpath(r["path"], common), **{c: r.get(c) for c in CSV_COLUMNS if c != "path"}} for r in rows]
    tables = [TableSection("Per model (gradcam_summary.csv)", per_model,
                           "Mean shares over the images shown (lesion: disease images only), their ratio to a uniform "
                           "map, and the sanity check: mean rank correlation and how many maps were flagged.", "per-model")]
    cascade = cascade_rows(explained)
    if cascade:
        tables.append(TableSection("Sanity check: cascading model randomisation", cascade,
                                   "Layers are re-initialised from the classifier down, one more block at each stage; "
                                   "the rank correlation with the trained model's maps should fall toward 0.", "sanity"))
    return write_report_html(
        out_dir, f"Grad-CAM report: {', '.join(m.name for m in models)}", [section for _, section in figures],
        table, lines, table_title=f"Per image x model (gradcam.csv; images under {common})", tables=tables,
        legend=legend_lines(s["border_frac"], s["sanity_threshold"] if s["sanity"] else None),
    )


@hydra_main("report")
def main(cfg: DictConfig) -> None:
    make_report(cfg)


if __name__ == "__main__":
    main()
