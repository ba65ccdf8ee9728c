"""`make_report(cfg)`: Grad-CAM figures of several checkpoints side by side on the same X-rays.

The report answers "where does each model look, and does it look at the disease?" for a fixed set
of images, so every model sees exactly the same files (each at its own training size) and every
number is measured against the same masks at one common display size. It writes into the run
folder: `report.html` (self-contained), one `gradcam_<selection>.png` per image selection, and
`gradcam.csv` (one row per image x model); optionally the figures and the table go to the W&B run
of a training run folder (`report.log_to`).
"""

from __future__ import annotations

import csv
import logging
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, ListConfig, OmegaConf

from lungcls.data.images import load_image, load_mask
from lungcls.data.layouts import discover_samples, sibling_mask
from lungcls.data.splits import SPLITS, read_splits_csv
from lungcls.errors import LungclsError
from lungcls.explain.figures import plot_cam_grid
from lungcls.explain.gradcam import CamResult, grad_cam, logistic_cam, prepare_for_cam, resolve_layer
from lungcls.explain.html import FigureSection, write_report_html
from lungcls.explain.localisation import energy_shares, localisation_lines, summarize_localisation

log = logging.getLogger(__name__)

__all__ = [
    "CSV_COLUMNS",
    "ReportImage",
    "ReportModel",
    "load_models",
    "collect_pool",
    "select_images",
    "explain_images",
    "write_csv",
    "log_to_wandb",
    "make_report",
]

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
DEFAULT_PER_CLASS = 4
MAX_ROWS_PER_FIGURE = 24  # taller figures get unwieldy in a browser; larger selections are split
_TARGET_TEXT = {"predicted": "the predicted class", "true": "the true class"}
SELECTION_TITLES = {
    "per_class": "Per class",
    "misses": "Missed disease (predicted as the normal class)",
    "paths": "Selected images",
}


# --------------------------------------------------------------------------- images and models


@dataclass(frozen=True)
class ReportImage:
    """One X-ray of the report; `label` is a class name (None when unknown), masks are paths."""

    path: str
    label: str | None = None
    mask: str | None = None
    lesion_mask: str | None = None


@dataclass
class ReportModel:
    """A loaded checkpoint and the readable, unique name it has in figures and the CSV."""

    name: str
    checkpoint: Path
    run_dir: Path
    model: Any  # LungClassifier, eval mode, on the report's device

    @property
    def image_size(self) -> int:
        return int(self.model.hparams.image_size)

    @property
    def class_names(self) -> list[str]:
        return list(self.model.class_names)

    @property
    def normal_class(self) -> str | None:
        return self.model.normal_class

    @property
    def is_logistic(self) -> bool:
        return self.model.spec.builder is None


def _image(path: str | Path, label: str | None) -> ReportImage:
    p = Path(path)
    return ReportImage(str(p), label, sibling_mask(p, "masks"), sibling_mask(p, "lesion_masks"))


def _run_dir(ckpt: Path) -> Path:
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def _ckpt_list(value: Any) -> list[Path]:
    """`ckpt=a.ckpt` or `ckpt='[a.ckpt,b.ckpt]'` -> absolute paths, checked before any loading."""
    if isinstance(value, (ListConfig, list, tuple)):
        items = [str(v) for v in value]
    elif value is None or str(value).strip() == "":
        items = []
    else:
        items = [str(value)]
    if not items:
        raise LungclsError(
            "no checkpoint given; pass ckpt=run/checkpoints/best.ckpt or ckpt='[a.ckpt,b.ckpt]'"
        )
    paths = [Path(p).expanduser().resolve() for p in items]
    for p in paths:
        if not p.is_file():
            raise LungclsError(
                f"checkpoint {p} does not exist; give the path of a run's checkpoints/best.ckpt"
            )
    if len(set(paths)) != len(paths):
        raise LungclsError(f"ckpt lists the same checkpoint twice: {items}; give each one once")
    return paths


def _unique_names(paths: Sequence[Path], models: Sequence[Any]) -> list[str]:
    """`backbone/finetune (run folder)`, with more of the folder path only where names collide."""
    bases = [f"{m.hparams.backbone['name']}/{m.hparams.finetune.get('name', '?')}" for m in models]
    runs = [_run_dir(p) for p in paths]
    for depth in (1, 2, 3):
        names = [f"{b} ({'/'.join(r.parts[-depth:])})" for b, r in zip(bases, runs)]
        if len(set(names)) == len(names):
            return names
    names = [f"{b} ({r.name}/{p.stem})" for b, r, p in zip(bases, runs, paths)]
    return names if len(set(names)) == len(names) else [f"{n} #{i + 1}" for i, n in enumerate(names)]


def load_models(ckpts: Any, device: torch.device) -> list[ReportModel]:
    """Load every checkpoint (eval mode, on `device`) and name it readably and uniquely."""
    from lungcls.models.module import load_classifier

    paths = _ckpt_list(ckpts)
    models = [load_classifier(str(p), map_location=device).to(device).eval() for p in paths]
    names = _unique_names(paths, models)
    return [ReportModel(n, p, _run_dir(p), m) for n, p, m in zip(names, paths, models)]


# --------------------------------------------------------------------------- image selection


def _read_split_rows(path: Path) -> list[dict[str, str]]:
    read_splits_csv(path)  # validates columns and split names with a clear message
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _all_classes(models: Sequence[ReportModel]) -> list[str]:
    classes: list[str] = []
    for m in models:
        classes += [c for c in m.class_names if c not in classes]
    return classes


def collect_pool(report: Mapping[str, Any], models: Sequence[ReportModel]) -> tuple[list[ReportImage], str]:
    """The labelled images that `per_class` and `misses` draw from, and a phrase saying where from.

    `report.root`: a folder (class-per-folder or the database layout) or a manifest CSV, with the
    models' classes; otherwise `report.split` of the first checkpoint's run (its splits.csv).
    """
    root = report.get("root")
    classes = _all_classes(models)
    if root:
        where = Path(str(root)).expanduser().resolve()
        if not where.exists():
            raise LungclsError(
                f"report.root={root} does not exist; give a folder of <Class>/ images or a manifest CSV"
            )
        if where.is_file():
            samples = discover_samples("manifest", classes, manifest=where, allow_missing_classes=True)
        else:
            samples = discover_samples("folder", classes, root=where, allow_missing_classes=True)
        pool = [ReportImage(s.path, classes[s.label], s.mask, s.lesion_mask) for s in samples]
        return pool, f"images of {where}"

    split = str(report.get("split", "test"))
    if split not in (*SPLITS, "all"):
        raise LungclsError(f"report.split={split} must be one of {', '.join(SPLITS)} or all")
    first = models[0]
    splits_csv = first.run_dir / "splits.csv"
    if not splits_csv.is_file():
        raise LungclsError(
            f"{first.run_dir} has no splits.csv to draw the {split} split from; "
            "give images with report.root=/path/to/folder or report.paths='[a.png,b.png]'"
        )
    rows = [r for r in _read_split_rows(splits_csv) if split == "all" or r["split"] == split]
    missing = [r["path"] for r in rows if not Path(r["path"]).is_file()]
    if missing:
        raise LungclsError(
            f"{len(missing)} image(s) listed in {splits_csv} are gone, e.g. {missing[0]}; "
            "point report.root at the data set's new location"
        )
    pool = [_image(r["path"], r.get("label") or None) for r in rows]
    return pool, f"the {split} split of {first.run_dir.name}"


def _label_lookup(models: Sequence[ReportModel]) -> dict[str, str]:
    """Known labels from the runs' splits.csv files (first checkpoint wins)."""
    labels: dict[str, str] = {}
    for m in reversed(models):
        splits_csv = m.run_dir / "splits.csv"
        if splits_csv.is_file():
            labels.update({r["path"]: r["label"] for r in _read_split_rows(splits_csv) if r.get("label")})
    return labels


def _explicit_images(paths: Sequence[str], models: Sequence[ReportModel], pool: Sequence[ReportImage]) -> list[ReportImage]:
    """`report.paths`: each must exist; the label comes from a splits.csv, else the class folder."""
    classes = set(_all_classes(models))
    known = {im.path: im.label for im in pool}
    lookup: dict[str, str] | None = None
    images = []
    for raw in paths:
        p = Path(str(raw)).expanduser().resolve()
        if not p.is_file():
            raise LungclsError(
                f"image {raw} (report.paths) does not exist; give existing image files, e.g. "
                "report.paths='[data/COVID/images/COVID-1.png]'"
            )
        label = known.get(str(p))
        if label is None:
            lookup = _label_lookup(models) if lookup is None else lookup
            label = lookup.get(str(p))
        if label is None:  # <Class>/images/x.png or <Class>/x.png
            folder = p.parent.parent.name if p.parent.name == "images" else p.parent.name
            label = folder if folder in classes else None
        images.append(_image(p, label))
    return images


def _predict(model: ReportModel, images: Sequence[ReportImage], batch_size: int) -> np.ndarray:
    """Softmax probabilities [N, C] of one model on the images at its own size (no CAM)."""
    probs = []
    device = next(model.model.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            x = _batch(chunk, model.image_size).to(device)
            probs.append(model.model(x).float().softmax(dim=1).cpu())
    return torch.cat(probs).numpy() if probs else np.zeros((0, len(model.class_names)), np.float32)


def _missed(
    pool: Sequence[ReportImage], models: Sequence[ReportModel], batch_size: int, limit: int
) -> list[ReportImage]:
    """Disease images that any model predicted as its normal class, most confident misses first."""
    disease = [
        im for im in pool
        if im.label is not None and any(m.normal_class and im.label != m.normal_class for m in models)
    ]
    worst: dict[str, float] = {}
    for m in models:
        if m.normal_class not in m.class_names:
            continue
        normal = m.class_names.index(m.normal_class)
        candidates = [im for im in disease if im.label != m.normal_class]
        probs = _predict(m, candidates, batch_size)
        for im, p in zip(candidates, probs):
            if int(p.argmax()) == normal:
                worst[im.path] = max(worst.get(im.path, 0.0), float(p[normal]))
    chosen = sorted((im for im in disease if im.path in worst), key=lambda im: (-worst[im.path], im.path))
    return chosen[:limit]


def _per_class(pool: Sequence[ReportImage], n: int, classes: Sequence[str], seed: int) -> list[ReportImage]:
    """A seeded random `n` per true class (file names often cluster by source, so not the first n)."""
    by_label: dict[str, list[ReportImage]] = {}
    for im in sorted(pool, key=lambda im: im.path):
        if im.label is not None:
            by_label.setdefault(im.label, []).append(im)
    order = [c for c in classes if c in by_label] + sorted(set(by_label) - set(classes))
    rng = random.Random(seed)
    chosen: list[ReportImage] = []
    for label in order:
        group = by_label[label]
        picked = group if len(group) <= n else rng.sample(group, n)
        chosen += sorted(picked, key=lambda im: im.path)
    return chosen


def _resolve_auto(report: Mapping[str, Any]) -> tuple[int, bool]:
    """per_class / misses: null means "on" unless explicit paths are given."""
    has_paths = bool(report.get("paths"))
    per_class = report.get("per_class")
    per_class = (0 if has_paths else DEFAULT_PER_CLASS) if per_class is None else int(per_class)
    misses = report.get("misses")
    misses = (not has_paths) if misses is None else bool(misses)
    if per_class < 0:
        raise LungclsError(f"report.per_class={per_class} must be 0 or more images per class")
    return per_class, misses


def select_images(
    report: Mapping[str, Any], models: Sequence[ReportModel], seed: int = 1
) -> tuple[dict[str, list[ReportImage]], list[str]]:
    """The image selections (name -> images, in figure order) and notes for the summary."""
    per_class, misses = _resolve_auto(report)
    paths = report.get("paths") or []
    paths = [paths] if isinstance(paths, str) else list(paths)  # `report.paths=a.png` means one image
    batch_size = _batch_size(report)
    notes: list[str] = []
    pool: list[ReportImage] = []
    if per_class or misses:
        pool, where = collect_pool(report, models)
        notes.append(f"Images drawn from {where} ({len(pool)} images).")
    selections: dict[str, list[ReportImage]] = {}
    if per_class:
        chosen = _per_class(pool, per_class, _all_classes(models), seed)
        if chosen:
            selections["per_class"] = chosen
    if misses:
        limit = int(report.get("max_misses", 8))
        chosen = _missed(pool, models, batch_size, limit)
        normals = sorted({str(m.normal_class) for m in models})
        if chosen:
            selections["misses"] = chosen
        else:
            notes.append(f"No disease image of the pool was predicted {'/'.join(normals)} by any model.")
    if paths:
        selections["paths"] = _explicit_images(paths, models, pool)
    if not any(selections.values()):
        raise LungclsError(
            f"no images selected (report.per_class={per_class}, report.misses "
            f"{'found none' if misses else 'off'}, no report.paths; {len(pool)} images in the pool); "
            "set report.per_class=N, report.paths='[a.png,...]' or another report.split / report.root"
        )
    return selections, notes


# --------------------------------------------------------------------------- Grad-CAM


def _batch(images: Sequence[ReportImage], size: int) -> torch.Tensor:
    """[N, 1, size, size] float in [0, 1]: what `LungClassifier.forward` takes."""
    if not images:
        return torch.zeros(0, 1, size, size)
    return torch.stack([load_image(im.path, size) for im in images]).float().div_(255.0)


def _batch_size(report: Mapping[str, Any]) -> int:
    value = int(report.get("batch_size", 16))
    if value < 1:
        raise LungclsError(f"report.batch_size={value} must be a positive integer")
    return value


def _targets(target: str, model: ReportModel, images: Sequence[ReportImage]) -> list[int] | None:
    """report.target -> one class id per image for this model (None: its prediction)."""
    target = str(target)
    classes = model.class_names
    if target == "predicted":
        return None
    if target == "true":
        unknown = [im.path for im in images if im.label is None]
        if unknown:
            raise LungclsError(
                f"report.target=true needs the true class of every image, but {unknown[0]} has none "
                "(not in a splits.csv nor in a <Class>/ folder); use report.target=predicted or a class name"
            )
        absent = sorted({im.label for im in images if im.label not in classes})
        if absent:
            raise LungclsError(
                f"report.target=true: class {absent[0]!r} is not a class of model {model.name} "
                f"({', '.join(classes)}); use report.target=predicted for it"
            )
        return [classes.index(im.label) for im in images]
    if target not in classes:
        raise LungclsError(
            f"report.target={target!r} is not a class of model {model.name}; use predicted, true or "
            f"one of: {', '.join(classes)}"
        )
    return [classes.index(target)] * len(images)


def explain_images(
    model: ReportModel, images: Sequence[ReportImage], target: str = "predicted", batch_size: int = 16
) -> CamResult:
    """CAMs [N, S, S] at the model's own image size, with the probabilities of the same pass.

    CNNs: Captum `LayerGradCam` on the registry's target layer, run through the whole
    `LungClassifier` (so its own normalisation applies) on a frozen copy. The logistic baseline:
    its weight-map evidence (`logistic_cam`) on the grayscale values it actually sees.
    """
    targets = _targets(target, model, images)
    x = _batch(images, model.image_size)
    net = model.model
    if model.is_logistic:
        device = next(net.parameters()).device
        probs = []
        with torch.inference_mode():
            for start in range(0, len(x), batch_size):
                probs.append(net(x[start : start + batch_size].to(device)).float().softmax(dim=1).cpu())
        gray = (x - net.input_mean.cpu()) / net.input_std.cpu()  # the model-space values it weighs
        return logistic_cam(
            net.net.weight_maps().cpu(),
            gray,
            target=targets,
            probs=torch.cat(probs) if probs else torch.zeros(0, len(model.class_names)),
            size=(model.image_size, model.image_size),
        )
    cam_model = prepare_for_cam(net)
    layer = resolve_layer(cam_model, "net." + model.model.spec.gradcam_layer)
    return grad_cam(cam_model, layer, x, target=targets, batch_size=batch_size)


def _to_display(cams: torch.Tensor, size: int) -> torch.Tensor:
    """Upsample CAMs bilinearly to the common display size (max stays <= 1)."""
    if cams.shape[-1] == size and cams.shape[-2] == size:
        return cams
    return F.interpolate(cams[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0].clamp(0, 1)


# --------------------------------------------------------------------------- outputs


@dataclass
class _Explained:
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


def _figures(
    out_dir: Path,
    selections: Mapping[str, Sequence[ReportImage]],
    index: Mapping[str, int],
    explained: Sequence[_Explained],
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


def _wandb_project(run_dir: Path) -> str:
    """The W&B project the training run used (from its .hydra/config.yaml), default lungcls."""
    config = run_dir / ".hydra" / "config.yaml"
    if config.is_file():
        try:
            project = OmegaConf.select(OmegaConf.load(config), "logger.wandb.project")
        except Exception:  # an unreadable config only costs the project name
            project = None
        if project:
            return str(project)
    return "lungcls"


def log_to_wandb(
    run_dir: str | Path, figures: Sequence[tuple[str, FigureSection]], rows: Sequence[Mapping[str, Any]]
) -> tuple[Path, bool] | None:
    """Log the figures and the per-image table to the run folder's W&B run, offline.

    Resumes the folder's latest offline run (same id) or starts a new offline run in it. Returns
    the new offline run folder and whether it resumed an earlier run (for the `wandb sync`
    advice), or None when W&B is switched off.
    """
    from lungcls.loggers import wandb_usable

    folder = Path(str(run_dir)).expanduser().resolve()
    if not folder.is_dir():
        raise LungclsError(f"report.log_to={run_dir} is not a folder; give a training run folder")
    ok, why = wandb_usable()
    if not ok:
        log.warning("not logging the report to W&B (%s)", why)
        return None
    import wandb

    previous = sorted((folder / "wandb").glob("offline-run-*"), key=lambda p: p.name)
    kwargs: dict[str, Any] = {"dir": str(folder), "mode": "offline", "project": _wandb_project(folder)}
    if previous:
        kwargs.update(id=previous[-1].name.rsplit("-", 1)[-1], resume="allow")
    else:
        kwargs.update(name=f"{folder.name}-report", job_type="report")
    run = wandb.init(**kwargs)
    try:
        payload: dict[str, Any] = {
            f"gradcam/{key}": wandb.Image(str(section.image), caption=section.title)
            for key, section in figures
        }
        payload["gradcam/table"] = wandb.Table(
            columns=list(CSV_COLUMNS), data=[[row.get(c) for c in CSV_COLUMNS] for row in rows]
        )
        run.log(payload)
        offline_dir = Path(run.dir).parent
    finally:
        wandb.finish()
    return offline_dir, bool(previous)


def _explain_all(
    models: Sequence[ReportModel],
    unique: Sequence[ReportImage],
    membership: Mapping[str, Sequence[str]],
    target: str,
    batch_size: int,
    display_size: int,
    border_frac: float,
) -> list[_Explained]:
    """CAMs of every model on the same images, and their CSV rows (shares at the display size)."""
    masks = {im.path: (load_mask(im.mask, display_size), load_mask(im.lesion_mask, display_size)) for im in unique}
    explained = []
    for m in models:
        log.info("Grad-CAM of %s on %d images", m.name, len(unique))
        result = explain_images(m, unique, target, batch_size)
        item = _Explained(m, result, _to_display(result.cams, display_size))
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
            }
            row.update(energy_shares(item.display_cams[i], *masks[im.path], border_frac=border_frac))
            item.rows.append(row)
        explained.append(item)
    return explained


def _summary_lines(
    notes: Sequence[str],
    explained: Sequence[_Explained],
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


def make_report(cfg: DictConfig) -> Path:
    """Write the Grad-CAM report into `cfg.paths.output_dir`; returns the path of report.html."""
    from lungcls.evaluation import pick_device

    report = OmegaConf.to_container(cfg.report, resolve=True)
    out_dir = Path(cfg.paths.output_dir)
    display_size = int(report.get("display_size", 256))
    if display_size < 16:
        raise LungclsError(f"report.display_size={display_size} is too small; use 16 or more pixels")
    border_frac = float(report.get("border_frac", 0.1))
    batch_size = _batch_size(report)
    target = report.get("target", "predicted")
    target = "true" if target is True else str(target)  # `report.target=true` arrives as a YAML bool
    log_to = report.get("log_to")
    if log_to and not Path(str(log_to)).expanduser().is_dir():
        raise LungclsError(f"report.log_to={log_to} is not a folder; give a training run folder (or leave it unset)")

    device = pick_device(str(report.get("device", "auto")))
    models = load_models(cfg.ckpt, device)
    for m in models:
        _targets(target, m, [])  # an unknown class name fails before any work
    selections, notes = select_images(report, models, seed=int(cfg.get("seed", 1)))

    unique: list[ReportImage] = []  # each image once, even when it is in several selections
    index: dict[str, int] = {}
    membership: dict[str, list[str]] = {}
    for key, images in selections.items():
        for im in images:
            if im.path not in index:
                index[im.path] = len(unique)
                unique.append(im)
            membership.setdefault(im.path, []).append(key)

    out_dir.mkdir(parents=True, exist_ok=True)
    explained = _explain_all(models, unique, membership, target, batch_size, display_size, border_frac)
    rows = [e.rows[i] for i in range(len(unique)) for e in explained]
    csv_path = write_csv(out_dir / "gradcam.csv", rows)
    target_text = _TARGET_TEXT.get(target, f"class {target}")
    figures = _figures(out_dir, selections, index, explained, display_size, target_text)

    loc_lines = localisation_lines(summarize_localisation(rows))
    summary_lines = _summary_lines(notes, explained, len(unique), target_text, display_size, border_frac, loc_lines)
    common = os.path.commonpath([im.path for im in unique]) if len(unique) > 1 else str(Path(unique[0].path).parent)
    table = [
        {"image": os.path.relpath(r["path"], common), **{c: r.get(c) for c in CSV_COLUMNS if c != "path"}}
        for r in rows
    ]
    html = write_report_html(
        out_dir,
        f"Grad-CAM report: {', '.join(m.name for m in models)}",
        [section for _, section in figures],
        table,
        summary_lines,
        table_title=f"Per image x model (gradcam.csv; images under {common})",
    )

    print("Grad-CAM localisation (mean share of CAM energy vs a uniform map):")
    for line in loc_lines:
        print(f"  {line}")
    logged = log_to_wandb(log_to, figures, rows) if log_to else None
    print(f"report: {html}")
    print(f"figures: {', '.join(str(s.image) for _, s in figures)}; table: {csv_path}")
    if logged is not None:
        offline_dir, resumed = logged
        if resumed:  # `wandb sync` uploads the parts of one run in order of their start time
            print(
                f"W&B: appended to the run's offline W&B run ({offline_dir.name}); upload all its "
                f"parts with: wandb sync {offline_dir.parent}/offline-run-*"
            )
        else:
            print(f"W&B: new offline run; upload it with: wandb sync {offline_dir}")
    return html
