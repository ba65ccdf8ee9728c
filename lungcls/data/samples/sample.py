"""The one record every layout, split and cache speaks: a labelled image with its optional masks,
patient, split and source. It imports nothing of lungcls, so every part of ``data`` can use it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MASK_FOLDERS = ("masks", "lesion_masks")


@dataclass(frozen=True)
class Sample:
    """One labelled image; mask paths are set when the data set ships masks."""

    path: str
    label: int
    mask: str | None = None
    lesion_mask: str | None = None
    patient: str | None = None
    split: str | None = None
    source: str | None = None  # where the image comes from (a manifest's ``dataset.source_column``)


def sibling_mask(image: Path, folder: str, listings: dict[Path, frozenset[str]] | None = None) -> str | None:
    """Masks share the image's file name in a sibling folder (``images/x.png`` -> ``masks/x.png``);
    a DICOM image's mask may be a PNG of the same stem (``images/x.dcm`` -> ``masks/x.png``).
    With ``listings`` (one dict for a whole scan) each mask folder is listed once instead of
    asking the file system about every image: a scan of 400,000 images makes no 800,000 look-ups."""
    if image.parent.name != "images":
        return None
    where = image.parent.parent / folder
    names = (image.name, f"{image.stem}.png")
    if listings is None:
        return next((str(where / name) for name in names if (where / name).is_file()), None)
    if where not in listings:
        listings[where] = frozenset(e.name for e in os.scandir(where) if e.is_file()) if where.is_dir() else frozenset()
    return next((str(where / name) for name in names if name in listings[where]), None)
