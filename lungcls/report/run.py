"""The work of ``lungcls-report``: Grad-CAM figures of one or more checkpoints side by side on the same X-rays
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

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lungcls.data.pixels.images import load_mask
from lungcls.errors import LungclsError
from lungcls.report.attribution import explain_methods, method_rows
from lungcls.explain.maps.explainer import ReportModel, class_targets, to_display
from lungcls.inference.checkpoints import load_checkpoints
from lungcls.report.html import GroupSection, TableSection, write_report_html
from lungcls.explain.maps.layers import CamLayer, layer_requests
from lungcls.explain.checks.localisation import localisation_lines, summarize_localisation
from lungcls.explain.maps.methods import METHODS, resolve_methods
from lungcls.report.outputs import (CSV_COLUMNS, TARGET_TEXT, Explained, sanity_line, summary_lines, write_csv,
                                     write_curve_figure, write_figures, write_method_figures)
from lungcls.data.settings import dataset_settings
from lungcls.report.selection import ReportImage, select_images
from lungcls.report.settings import ReportSettings, report_settings
from lungcls.report.tables import cascade_rows, legend_lines, methods_section, model_rows, write_summary_csv
from lungcls.explain.checks.trust import METHOD_COLUMNS, method_table, recommendation, verdict_lines, write_methods_csv
from lungcls.models.device import pick_device
from lungcls.inference.screening import checkpoint_sha256
from lungcls.training.loggers import log_report_to_wandb

log = logging.getLogger(__name__)


def _common_rows(m: ReportModel, base, unique: Sequence[ReportImage], membership: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    """The columns every method of one model shares for each image: selection, prediction, target."""
    classes = m.class_names
    return [{
        "selection": ";".join(membership[im.path]), "path": im.path, "label": im.label, "model": m.name,
        "prediction": classes[int(base.preds[i])], "probability": float(base.pred_probs[i]),
        "target": classes[int(base.targets[i])], "target_probability": float(base.target_probs[i]),
    } for i, im in enumerate(unique)]


def _layer_column(run, layer: CamLayer, fine_path: str | None) -> str:
    if run.method.grid == "layer":
        return layer.path or "weights"
    if run.method.grid == "fine layer":
        return fine_path or "weights"
    return "image" if run.method.model_free else "input"


def explain_all(models: Sequence[ReportModel], layers: Sequence[CamLayer], unique: Sequence[ReportImage],
                membership: Mapping[str, Sequence[str]], s: ReportSettings) -> tuple[list[list[Explained]], list, list[str]]:
    """Per model, every requested method's maps on the same images (one `Explained` per method, with
    its CSV rows: shares at the display size, faithfulness, sanity), the random-order curves, and
    one line per method a model had to skip."""
    size = s.display_size
    masks = {im.path: (load_mask(im.mask, size), load_mask(im.lesion_mask, size)) for im in unique}
    methods = resolve_methods(s.methods)
    per_model, randoms, notes = [], [], []
    for m, layer in zip(models, layers):
        log.info("%s of %s (%s) on %d images", ", ".join(x.name for x in methods), m.name, layer.describe(), len(unique))
        base, runs, rand, skipped = explain_methods(m, layer, unique, methods, s)
        notes += skipped
        common = _common_rows(m, base, unique, membership)
        fine = None if m.explained_by_weights else m.cam_layer("auto", s.layercam_min_cells).path
        items = []
        for run in runs:
            print(f"{run.method.name} of {m.name}: {run.ms_per_image:.1f} ms per image for the maps on {next(m.model.parameters()).device.type}"
                  f"; {run.seconds:.0f} s with its sanity check and deletion/insertion curves")
            display = to_display(run.cams, size)
            rows = method_rows(m, run, base, rand, unique, common, masks, s, display)
            for row in rows:
                row["layer"] = _layer_column(run, layer, fine)
                row["grid"] = run.grid
            items.append(Explained(m, replace(base, cams=run.cams), display, rows, layer=layer, sanity=run.sanity,
                                   method=run.method.name, method_title=run.method.title, curves=run.curves))
        per_model.append(items)
        randoms.append(rand)
    return per_model, randoms, notes


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
    """Write the report into ``cfg.paths.output_dir``; returns the path of report.html."""
    s = report_settings(cfg)
    resolve_methods(s.methods)  # an unknown method fails before any model is loaded
    out_dir = Path(cfg.paths.output_dir)
    models = [ReportModel.of(m) for m in load_checkpoints(cfg.ckpt, pick_device(s.device))]
    for m in models:
        class_targets(s.target, m, [])  # an unknown class name fails before any work
        s.check_image_size(m.image_size, m.name)
    layers = [m.cam_layer(req, s.min_cells) for m, req in zip(models, layer_requests(s.layer, len(models)))]
    given = OmegaConf.to_container(cfg.dataset, resolve=True)  # dataset=<name>: the images, as training takes them
    data = dataset_settings({**given, "allow_missing_classes": True}) if "name" in given else None
    selections, notes = select_images(s, models, seed=int(cfg.seed), data=data)
    unique, index, membership = unique_images(selections)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "checkpoints.json").write_text(json.dumps([  # lets a model card match this report to its checkpoint
        {"model": m.name, "checkpoint": str(m.checkpoint), "sha256": checkpoint_sha256(m.checkpoint)} for m in models], indent=2))
    per_model, randoms, skipped = explain_all(models, layers, unique, membership, s)
    explained = [items[0] for items in per_model if items]  # the first method shown per model
    if not explained:
        raise LungclsError(f"no method of report.methods={s.methods} could run on these models; add gradcam")
    rows = [r for i in range(len(unique)) for items in per_model for e in items for r in [e.rows[i]]]
    csv_path = write_csv(out_dir / "gradcam.csv", rows)
    target_text = TARGET_TEXT.get(s.target, f"class {s.target}")
    figures = write_figures(out_dir, selections, index, explained, s.display_size, target_text)
    summary = summarize_localisation([r for e in explained for r in e.rows])
    per_model_rows = model_rows(explained, summary)
    write_summary_csv(out_dir / "gradcam_summary.csv", per_model_rows)
    table = method_table(rows)
    write_methods_csv(out_dir / "methods.csv", table)
    compared = len(resolve_methods(s.methods)) > 1  # one method: the page stays as it was
    trust = trust_section(out_dir, unique, per_model, randoms, table, skipped, s, target_text) if compared else None
    loc_lines = localisation_lines(summary)
    lines = summary_lines(notes, explained, len(unique), target_text, s.display_size, s.border_frac, loc_lines)
    html = write_html(out_dir, models, unique, rows, per_model_rows, explained, figures, lines, s, trust)
    print(f"{explained[0].method_title} localisation (mean share of map energy vs a uniform map):")
    for line in loc_lines + [line for e in explained if (line := sanity_line(e))]:
        print(f"  {line}")
    print_methods(table, s)
    if s.log_to:
        extra = [(f"methods_{k}", sec) for k, sec in enumerate(trust.figures)] if trust is not None else []
        log_report_to_wandb(s.log_to, figures + extra,
                            rows, CSV_COLUMNS, tables={"methods": (METHOD_COLUMNS, table)})
    print(f"report: {html}")
    print(f"figures: {', '.join(str(sec.image) for _, sec in figures)} (and PDF); tables: {csv_path}, "
          "gradcam_summary.csv, methods.csv")
    return html


def print_methods(table: Sequence[Mapping[str, Any]], s: ReportSettings) -> None:
    """Time per method (on the device used) and the verdict lines, for the terminal."""
    if len({r["method"] for r in table}) < 2:
        return
    print("Which map to trust (methods.csv):")
    for row in table:
        print(f"  {row['model']} {row['method']}: {row['ms_per_image']:.1f} ms per image")
    for line in verdict_lines(table, s.sanity_threshold) + recommendation(table, s.sanity_threshold, _model_free()):
        print(f"  {line}")


def _model_free() -> set[str]:
    return {name for name in METHODS.names() if METHODS.get(name).model_free}


def trust_section(out_dir: Path, unique: Sequence[ReportImage], per_model: Sequence[Sequence[Explained]], randoms: Sequence,
                  table: Sequence[Mapping[str, Any]], skipped: Sequence[str], s: ReportSettings, target_text: str) -> GroupSection:
    """"Which map to trust": the methods table, a sentence per method, the recommendation, the figure
    with one column per method and the deletion curves."""
    figures = write_method_figures(out_dir, unique, per_model, s.methods_figure_images, s.display_size, target_text)
    curves = write_curve_figure(out_dir, per_model, randoms)
    figures += [curves] if curves is not None else []
    lines = [*recommendation(table, s.sanity_threshold, _model_free()), *verdict_lines(table, s.sanity_threshold), *skipped]
    return GroupSection("Which map to trust", lines, [methods_section(table)], figures, "trust")


def write_html(out_dir: Path, models: Sequence[ReportModel], unique: Sequence[ReportImage], rows: Sequence[dict],
               per_model: Sequence[dict], explained: Sequence[Explained], figures: Sequence, lines: Sequence[str],
               s: ReportSettings, trust: GroupSection | None) -> Path:
    """The self-contained page: summary, legend, which map to trust, per-model and sanity tables,
    figures, per-image table."""
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
        table, lines, table_title=f"Per image x model x method (gradcam.csv; images under {common})", tables=tables,
        legend=legend_lines(s.border_frac, s.sanity_threshold if s.sanity else None, unique),
        groups=[trust] if trust is not None else [],
    )
