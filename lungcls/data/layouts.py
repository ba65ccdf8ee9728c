"""Find the images of a data set on disk, whatever its layout, as a list of labelled samples.

Three layouts:
- ``radiography``: the COVID-19 Radiography Database, ``<root>/<Class>/images/*.png`` with optional
  lung masks in ``<Class>/masks/`` (and, for the demo phantom, ``<Class>/lesion_masks/``);
- ``folder``: any class-per-folder tree, ``<root>/<Class>/**/*.png`` (mask folders are skipped);
- ``manifest``: a CSV with ``path,label[,split][,patient]`` (paths relative to the CSV's folder).

Classes always come from the config, in config order (= label ids): a folder listing is never
trusted to define the label space.
"""

from __future__ import annotations

import csv
import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from lungcls.errors import LungclsError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
MASK_FOLDERS = ("masks", "lesion_masks")
LAYOUTS = ("radiography", "folder", "manifest")


@dataclass(frozen=True)
class Sample:
    """One labelled image; mask paths are set when the data set ships masks."""

    path: str
    label: int
    mask: str | None = None
    lesion_mask: str | None = None
    patient: str | None = None
    split: str | None = None


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def sibling_mask(image: Path, folder: str) -> str | None:
    """Masks share the image's file name in a sibling folder (``images/x.png`` -> ``masks/x.png``)."""
    if image.parent.name != "images":
        return None
    candidate = image.parent.parent / folder / image.name
    return str(candidate) if candidate.is_file() else None


def _class_folder_images(class_dir: Path, strict_images_folder: bool) -> list[Path]:
    images_dir = class_dir / "images"
    if images_dir.is_dir():
        return sorted(p for p in images_dir.iterdir() if _is_image(p))
    if strict_images_folder:
        return []
    return sorted(
        p
        for p in class_dir.rglob("*")
        if _is_image(p) and not any(part in MASK_FOLDERS for part in p.relative_to(class_dir).parts[:-1])
    )


def _scan_class_folders(root: Path, classes: Sequence[str], layout: str) -> list[Sample]:
    if not root.is_dir():
        raise LungclsError(
            f"data folder {root} does not exist; set dataset.root=/path/to/your/data "
            "(or LUNGCLS_DATA for dataset=covid_radiography)"
        )
    present = {p.name for p in root.iterdir() if p.is_dir()}
    ignored = sorted(present - set(classes) - {"__MACOSX"})
    if ignored:
        log.warning("ignoring folders of %s not in dataset.classes: %s", root, ", ".join(ignored))
    samples: list[Sample] = []
    for label, name in enumerate(classes):
        for img in _class_folder_images(root / name, strict_images_folder=layout == "radiography"):
            samples.append(
                Sample(
                    path=str(img),
                    label=label,
                    mask=sibling_mask(img, "masks"),
                    lesion_mask=sibling_mask(img, "lesion_masks"),
                )
            )
    return samples


def _read_manifest(manifest: Path, classes: Sequence[str]) -> list[Sample]:
    if not manifest.is_file():
        raise LungclsError(f"manifest {manifest} does not exist; set dataset.manifest=/path/to/manifest.csv")
    base = manifest.parent
    index = {name: i for i, name in enumerate(classes)}
    samples, unknown = [], Counter()
    with manifest.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"path", "label"} - set(reader.fieldnames or [])
        if missing:
            raise LungclsError(
                f"manifest {manifest} lacks column(s) {', '.join(sorted(missing))}; "
                "it needs a header with path,label[,split][,patient]"
            )
        for row in reader:
            label = row["label"].strip()
            if label not in index:
                unknown[label] += 1
                continue
            path = Path(row["path"])
            path = path if path.is_absolute() else base / path
            split = (row.get("split") or "").strip().lower() or None
            if split is not None and split not in ("train", "val", "test"):
                raise LungclsError(f"manifest {manifest}: split '{split}' for {path} must be train, val or test")
            samples.append(
                Sample(
                    path=str(path),
                    label=index[label],
                    mask=sibling_mask(path, "masks"),
                    lesion_mask=sibling_mask(path, "lesion_masks"),
                    patient=(row.get("patient") or "").strip() or None,
                    split=split,
                )
            )
    if unknown:
        listed = ", ".join(f"{k!r} ({v})" for k, v in unknown.most_common())
        log.warning("manifest %s: skipped rows with labels not in dataset.classes: %s", manifest, listed)
    absent = [s.path for s in samples if not Path(s.path).is_file()]
    if absent:
        raise LungclsError(
            f"manifest {manifest} lists {len(absent)} missing file(s), e.g. {absent[0]}; "
            "fix the paths (relative paths are relative to the manifest's folder)"
        )
    return samples


def cap_per_class(samples: list[Sample], max_per_class: int | None, seed: int) -> list[Sample]:
    """Keep at most ``max_per_class`` images per class: a seeded random subset, not the first N
    file names (which in real sets often come from one source)."""
    if not max_per_class:
        return samples
    rng = random.Random(seed)
    by_class: dict[int, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    kept: list[Sample] = []
    for label in sorted(by_class):
        group = by_class[label]
        kept.extend(group if len(group) <= max_per_class else rng.sample(group, max_per_class))
    return sorted(kept, key=lambda s: (s.label, s.path))


def discover_samples(
    layout: str,
    classes: Sequence[str],
    root: str | Path | None = None,
    manifest: str | Path | None = None,
    allow_missing_classes: bool = False,
) -> list[Sample]:
    """All labelled images of a data set; a configured class with no images is an error unless
    ``allow_missing_classes`` (it then stays in the label space with no images)."""
    if layout not in LAYOUTS:
        raise LungclsError(f"unknown dataset.layout '{layout}'; use one of {', '.join(LAYOUTS)}")
    if not classes:
        raise LungclsError("dataset.classes is empty; list the class names, e.g. dataset.classes=[COVID,Normal]")
    if len(set(classes)) != len(classes):
        raise LungclsError(f"dataset.classes has duplicates: {list(classes)}")
    if layout == "manifest":
        if manifest is None:
            raise LungclsError("dataset.layout=manifest needs dataset.manifest=/path/to/manifest.csv")
        samples = _read_manifest(Path(manifest).expanduser().resolve(), classes)
    else:
        if root is None:
            raise LungclsError(
                "dataset.root is not set; pass dataset.root=/path/to/data "
                "(or set LUNGCLS_DATA for dataset=covid_radiography)"
            )
        samples = _scan_class_folders(Path(root).expanduser().resolve(), classes, layout)
    counts = Counter(s.label for s in samples)
    empty = [name for i, name in enumerate(classes) if counts[i] == 0]
    if empty and len(empty) == len(classes):
        where = manifest if layout == "manifest" else root
        raise LungclsError(
            f"no images found for any of {list(classes)} in {where} (layout={layout}); "
            "check dataset.root, dataset.layout and dataset.classes"
        )
    if empty and not allow_missing_classes:
        where = manifest if layout == "manifest" else root
        raise LungclsError(
            f"class(es) {', '.join(empty)} have no images in {where}; remove them from dataset.classes "
            "or set dataset.allow_missing_classes=true"
        )
    if empty:
        log.warning("classes with no images (kept in the label space): %s", ", ".join(empty))
    return samples
