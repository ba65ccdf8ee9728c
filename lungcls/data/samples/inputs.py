"""What ``lungcls-predict input=...`` names: one image file, a folder (searched recursively, with or
without class sub-folders) or a manifest CSV with a ``path`` column (``label`` optional).

New X-rays usually come without labels; when they sit in a folder named after one of the model's
classes (``<Class>/x.png`` or ``<Class>/images/x.png``) or the manifest has a ``label``, the label
is kept next to the prediction, otherwise it stays empty. Files of a folder without an image's
name are skipped and named in ``predict.json``, never silently; a file named like an image whose
content is another format (a GIF called ``.png``) is refused by the reader, as every command does.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lungcls.data.samples.csvtext import open_csv
from lungcls.data.pixels.images import is_image_file
from lungcls.data.samples.sample import MASK_FOLDERS
from lungcls.errors import LungclsError
from lungcls.console import natural_key

MANIFEST_SUFFIXES = (".csv",)


@dataclass(frozen=True)
class InputImage:
    """One image to predict; ``label`` is a class name when the input says it."""

    path: str
    label: str | None = None


@dataclass
class Inputs:
    images: list[InputImage]
    skipped: list[str]  # files of a folder that are not images (named in predict.json)
    where: str


def _folder_label(path: Path, classes: Sequence[str]) -> str | None:
    folder = path.parent.parent if path.parent.name == "images" else path.parent
    return folder.name if folder.name in classes else None


def _from_folder(root: Path, classes: Sequence[str]) -> Inputs:
    images, skipped = [], []
    for p in sorted(root.rglob("*"), key=lambda q: natural_key(str(q))):
        rel = p.relative_to(root).parts
        if not p.is_file() or any(part.startswith(".") for part in rel) or any(part in MASK_FOLDERS for part in rel[:-1]):
            continue
        if is_image_file(p):
            images.append(InputImage(str(p), _folder_label(p, classes)))
        else:
            skipped.append(str(p))
    return Inputs(images, skipped, f"folder {root}")


def _from_manifest(manifest: Path, classes: Sequence[str]) -> Inputs:
    with open_csv(manifest) as f:
        reader = csv.DictReader(f)
        if "path" not in (reader.fieldnames or []):
            raise LungclsError(f"manifest {manifest} has no 'path' column; give a CSV with a header path[,label]")
        rows = list(reader)
    images = []
    for row in rows:
        path = Path(row["path"].strip()).expanduser()
        path = path if path.is_absolute() else manifest.parent / path
        label = (row.get("label") or "").strip() or None
        images.append(InputImage(str(path.resolve()), label))
    missing = [im.path for im in images if not Path(im.path).is_file()]
    if missing:
        raise LungclsError(
            f"manifest {manifest} lists {len(missing)} missing file(s), e.g. {missing[0]}; "
            "fix the paths (relative paths are relative to the manifest's folder)"
        )
    return Inputs(images, [], f"manifest {manifest}")


def collect_inputs(source: str | Path, classes: Sequence[str] = ()) -> Inputs:
    """The images ``source`` names (see the module docstring); no image at all is an error."""
    if source is None or str(source).strip() == "":
        raise LungclsError("no input given; pass input=<image file|folder|manifest.csv>")
    where = Path(str(source)).expanduser().resolve()
    if not where.exists():
        raise LungclsError(f"input {source} does not exist; give an image file, a folder or a manifest CSV")
    if where.is_dir():
        found = _from_folder(where, classes)
    elif where.suffix.lower() in MANIFEST_SUFFIXES:
        found = _from_manifest(where, classes)
    else:  # one file: its content decides whether it is an image (a clear error when it is not)
        found = Inputs([InputImage(str(where), None)], [], f"file {where}")
    if not found.images:
        raise LungclsError(f"no PNG, JPEG or DICOM image found in {found.where}; check input=")
    return found


def inputs_from_dataset(data: Mapping[str, Any]) -> Inputs:
    """The images a ``dataset=`` config finds (every one, with its labelled class), for commands
    that score images rather than train (``lungcls-predict dataset=folder dataset.root=...``)."""
    from lungcls.data.samples.layouts import LAYOUTS, find_samples
    from lungcls.data.settings import dataset_settings

    settings = dataset_settings(data)
    samples = find_samples(settings)
    layout = LAYOUTS.get(settings.layout)(settings)
    images = [InputImage(s.path, settings.classes[s.label]) for s in samples]
    return Inputs(images=sorted(images, key=lambda im: natural_key(im.path)), skipped=[], where=layout.where())
