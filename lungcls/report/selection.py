"""Which X-rays a report shows: a seeded sample per class, the disease images some model predicted
as the normal class (most confident misses first), and explicit files, drawn from a run's split,
a folder or a manifest."""

from __future__ import annotations

import csv
import logging
import random
from collections.abc import Sequence
from pathlib import Path

from lungcls.data.dedup.fingerprints import DEFAULT_NEAR_BITS, compute_fingerprints
from lungcls.data.samples.layouts import LAYOUTS, discover_samples, find_samples
from lungcls.data.samples.sample import sibling_mask
from lungcls.data.dedup.leakage import match_training_images, overlap_message, overlap_record, read_training_images
from lungcls.data.samples.splits import SPLITS, read_splits_csv
from lungcls.data.settings import SPLIT_CHOICES
from lungcls.data.settings import DatasetSettings
from lungcls.errors import LungclsError
from lungcls.explain.maps.explainer import ReportImage, ReportModel
from lungcls.report.settings import ReportSettings
from lungcls.inference.prediction import predict_files

log = logging.getLogger(__name__)


DEFAULT_PER_CLASS = 4


def _image(path: str | Path, label: str | None) -> ReportImage:
    p = Path(path)
    return ReportImage(str(p), label, sibling_mask(p, "masks"), sibling_mask(p, "lesion_masks"))


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


def collect_pool(report: ReportSettings, models: Sequence[ReportModel],
                 data: DatasetSettings | None = None) -> tuple[list[ReportImage], str]:
    """The labelled images that `per_class` and `misses` draw from, and a phrase saying where from.

    A ``dataset=`` config (``data``, as training takes it); or `report.root`: a folder
    (class-per-folder or the database layout) or a manifest CSV, with the models' classes; otherwise
    `report.split` of the first checkpoint's run (its splits.csv).
    """
    root = report.root
    classes = _all_classes(models)
    if data is not None:
        if root:
            raise LungclsError("report.root and dataset= both name the images; give one of them")
        samples = find_samples(data)
        pool = [ReportImage(s.path, data.classes[s.label], s.mask, s.lesion_mask) for s in samples]
        return pool, f"images of {LAYOUTS.get(data.layout)(data).where()}"
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

    split = report.split
    if split not in SPLIT_CHOICES:
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


def leave_out_training_images(pool: list[ReportImage], models: Sequence[ReportModel], exclude: bool = True,
                              training_split: bool = False) -> tuple[list[ReportImage], str | None]:
    """Leave out of the pool the images any of the models was trained on (same file, same pixels
    or a near copy; from their runs' splits.csv), unless ``exclude`` is off
    (``report.exclude_training_images=false``) or the ``training_split`` itself was asked for.
    Returns the pool and a note saying what was done."""
    if training_split:
        return pool, None
    files = [m.run_dir / "splits.csv" for m in models if (m.run_dir / "splits.csv").is_file()]
    if not files or not pool:
        return pool, None
    training = read_training_images(files)
    paths = [im.path for im in pool]
    near_bits = models[0].model.info.data.get("near_duplicate_bits", DEFAULT_NEAR_BITS)
    matches = match_training_images(paths, compute_fingerprints(paths), training, near_bits)
    record = overlap_record(matches, len(pool), exclude, training, files)
    note = overlap_message(record, "images of the pool", "report.exclude_training_images")
    if note:
        print(note)
    kept = [im for im in pool if im.path not in matches] if exclude else pool
    return kept, note


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
        probs = predict_files(m.model, [im.path for im in candidates], batch_size=batch_size).probs
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


def _resolve_auto(report: ReportSettings) -> tuple[int, bool]:
    """per_class / misses: null means "on" unless explicit paths are given."""
    has_paths = bool(report.paths)
    per_class = report.per_class
    per_class = (0 if has_paths else DEFAULT_PER_CLASS) if per_class is None else int(per_class)
    misses = report.misses
    misses = (not has_paths) if misses is None else bool(misses)
    if per_class < 0:
        raise LungclsError(f"report.per_class={per_class} must be 0 or more images per class")
    return per_class, misses


def select_images(
    report: ReportSettings, models: Sequence[ReportModel], seed: int = 1, data: DatasetSettings | None = None
) -> tuple[dict[str, list[ReportImage]], list[str]]:
    """The image selections (name -> images, in figure order) and notes for the summary."""
    per_class, misses = _resolve_auto(report)
    paths = report.paths  # `report.paths=a.png` is one image (see ReportSettings)
    batch_size = report.batch_size
    notes: list[str] = []
    pool: list[ReportImage] = []
    if per_class or misses:
        pool, where = collect_pool(report, models, data)
        pool, left_out = leave_out_training_images(pool, models, report.exclude_training_images,
                                                   training_split=not report.root and data is None and report.split == "train")
        notes.append(f"Images drawn from {where} ({len(pool)} images).")
        notes += [left_out] if left_out else []
    selections: dict[str, list[ReportImage]] = {}
    if per_class:
        chosen = _per_class(pool, per_class, _all_classes(models), seed)
        if chosen:
            selections["per_class"] = chosen
    if misses:
        limit = report.max_misses
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
