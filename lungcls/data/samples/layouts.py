"""Data layouts: how a data set's images and labels are found on disk. A registry, chosen by
``dataset.layout=<name>``; every layout has the same interface (``prepare``, then ``find``).

- ``radiography``: the COVID-19 Radiography Database, ``<root>/<Class>/images/*.png`` with optional
  lung masks in ``<Class>/masks/`` (and, for the demo phantom, ``<Class>/lesion_masks/``);
- ``folder``: any class-per-folder tree, ``<root>/<Class>/**/*.png`` (mask folders are skipped);
- ``manifest``: a CSV with ``path,label[,split][,patient]`` (paths relative to the CSV's folder), and
  the image's source from the column ``dataset.source_column`` names;
- ``demo``: the radiography layout of the synthetic phantom, which ``prepare`` generates first;
- ``litdata``: a set written by ``lungcls-prepare`` (decoded images in LitData chunks, split fixed),
  streamed from a folder or an object store (``data/cache/prepared.py``).

Classes always come from the config, in config order (= label ids): a folder listing is never
trusted to define the label space.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gc
import logging
import os
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from lungcls.data.samples.csvtext import open_csv
from lungcls.data.pixels.images import is_image_file
from lungcls.data.settings import DatasetSettings, dataset_settings
from lungcls.errors import LungclsError
from lungcls.data.samples.sample import MASK_FOLDERS, Sample, sibling_mask
from lungcls.registry import Registry

log = logging.getLogger(__name__)

def _with_masks(path: Path, label: int, listings: dict[Path, frozenset[str]] | None = None, **extra: Any) -> Sample:
    return Sample(str(path), label, sibling_mask(path, "masks", listings), sibling_mask(path, "lesion_masks", listings), **extra)


class Layout:
    """A way of finding labelled images. ``cfg`` is the ``dataset`` config (root, manifest...)."""

    def __init__(self, cfg: DatasetSettings):
        self.cfg = cfg

    def prepare(self) -> None:
        """Create the data where the layout makes it (the demo); nothing for data on disk."""

    def find(self, classes: Sequence[str]) -> list[Sample]:
        raise NotImplementedError

    def where(self) -> str:
        """The folder or file the images come from, for messages."""
        return str(self.cfg.root)

    def data_root(self) -> Path:
        """The folder image paths are reported relative to (audits, reports)."""
        return Path(str(self.cfg.root or ".")).expanduser().resolve()


LAYOUTS: Registry[type[Layout]] = Registry("dataset layout", "dataset.layout=<name>")


@LAYOUTS.register("radiography")
class RadiographyLayout(Layout):
    """``<root>/<Class>/images/*`` (the database); other folders of a class are not images."""

    images_folder_only = True

    def _root(self) -> Path:
        root = self.cfg.root
        if root is None:
            raise LungclsError(
                "dataset.root is not set; pass dataset.root=/path/to/data (or set LUNGCLS_DATA for dataset=covid_radiography)"
            )
        path = Path(str(root)).expanduser().resolve()
        if not path.is_dir():
            raise LungclsError(
                f"data folder {path} does not exist; set dataset.root=/path/to/your/data "
                "(or LUNGCLS_DATA for dataset=covid_radiography)"
            )
        return path

    def _class_images(self, class_dir: Path) -> list[Path]:
        images_dir = class_dir / "images"
        if images_dir.is_dir():
            files = [Path(e.path) for e in os.scandir(images_dir) if e.is_file()]  # no stat per file
        elif self.images_folder_only:
            return []
        else:
            files = [p for p in class_dir.rglob("*")
                     if p.is_file() and not any(part in MASK_FOLDERS for part in p.relative_to(class_dir).parts[:-1])]
        images = sorted(p for p in files if is_image_file(p))
        skipped = [p for p in files if not is_image_file(p) and not p.name.startswith(".")]
        if skipped:
            kinds = sorted({p.suffix.lower() or p.name for p in skipped})
            log.warning("%s: skipped %d file(s) that are not PNG, JPEG or DICOM (%s)", class_dir, len(skipped), ", ".join(kinds[:5]))
        return images

    def find(self, classes: Sequence[str]) -> list[Sample]:
        root = self._root()
        ignored = sorted({p.name for p in root.iterdir() if p.is_dir()} - set(classes) - {"__MACOSX"})
        if ignored:
            log.warning("ignoring folders of %s not in dataset.classes: %s", root, ", ".join(ignored))
        listings: dict[Path, frozenset[str]] = {}
        return [_with_masks(img, label, listings) for label, name in enumerate(classes) for img in self._class_images(root / name)]


@LAYOUTS.register("folder")
class FolderLayout(RadiographyLayout):
    """``<root>/<Class>/**/*``: any class-per-folder tree (mask folders are skipped)."""

    images_folder_only = False


@LAYOUTS.register("demo")
class DemoLayout(RadiographyLayout):
    """The synthetic phantom in the radiography layout, generated into ``root`` on first use (a
    multi-source demo, ``dataset.demo.sources=k``, into a sibling named after its sites); each
    image's site becomes its source."""

    def _sites(self) -> tuple[int, float]:
        demo = self.cfg.demo
        return demo.sources, demo.source_bias

    def _folder(self) -> Path:
        from lungcls.data.phantom.demo import demo_folder

        if self.cfg.root is None:
            raise LungclsError("dataset.root is not set; the demo needs a folder to generate its images into")
        return demo_folder(Path(str(self.cfg.root)), *self._sites()).resolve()

    def _root(self) -> Path:
        folder = self._folder()
        if not folder.is_dir():
            raise LungclsError(f"demo folder {folder} does not exist; run lungcls-train (or lungcls-audit) with this "
                               "dataset.demo.* once to generate it")
        return folder

    def where(self) -> str:
        return str(self._folder())

    def data_root(self) -> Path:
        return self._folder()

    def prepare(self) -> None:
        from lungcls.data.phantom.demo import ensure_demo_dataset

        demo = self.cfg.demo
        sources, bias = self._sites()
        ensure_demo_dataset(
            self._folder(),
            images_per_class=demo.images_per_class,
            image_size=demo.source_size,
            seed=demo.seed,
            classes=tuple(self.cfg.classes),
            shortcut=demo.shortcut,
            sources=sources,
            source_bias=bias,
        )

    def find(self, classes: Sequence[str]) -> list[Sample]:
        samples = super().find(classes)
        if self._sites()[0] <= 1:
            return samples
        from lungcls.data.phantom.demo import demo_sites

        sites = demo_sites(self._root())
        return [replace(s, source=sites.get(s.path)) for s in samples]


@LAYOUTS.register("litdata")
class LitdataLayout(Layout):
    """A set prepared by ``lungcls-prepare``: the images live in LitData chunks under ``root`` (a
    folder or ``s3://...``), each with the split it was prepared in; the data module streams them."""

    streamed = True

    def find(self, classes: Sequence[str]) -> list[Sample]:
        from lungcls.data.cache.prepared import check_meta, prepared_samples, read_meta

        meta = read_meta(str(self.cfg.root))
        check_meta(meta, dataclasses.replace(self.cfg, classes=list(classes)))
        return prepared_samples(meta)


@LAYOUTS.register("manifest")
class ManifestLayout(Layout):
    """A CSV with ``path,label[,split][,patient]``; relative paths are relative to the CSV."""

    def where(self) -> str:
        return str(self.cfg.manifest)

    def data_root(self) -> Path:
        return Path(str(self.cfg.manifest)).expanduser().resolve().parent if self.cfg.manifest else super().data_root()

    def find(self, classes: Sequence[str]) -> list[Sample]:
        rows, manifest = self._rows()
        index = {name: i for i, name in enumerate(classes)}
        unknown = Counter(r["label"].strip() for r in rows if r["label"].strip() not in index)
        _refuse_label_typos(manifest, unknown, classes)
        if unknown:
            listed = ", ".join(f"{k!r} ({v})" for k, v in unknown.most_common())
            log.warning("manifest %s: skipped rows with labels not in dataset.classes: %s", manifest, listed)
        source = self.cfg.source_column
        samples = [self._sample(manifest, r, index, source) for r in rows if r["label"].strip() in index]
        absent = [s.path for s in samples if not Path(s.path).is_file()]
        if absent:
            raise LungclsError(
                f"manifest {manifest} lists {len(absent)} missing file(s), e.g. {absent[0]}; "
                "fix the paths (relative paths are relative to the manifest's folder)"
            )
        return samples

    def _rows(self) -> tuple[list[dict[str, str]], Path]:
        if self.cfg.manifest is None:
            raise LungclsError("dataset.layout=manifest needs dataset.manifest=/path/to/manifest.csv")
        manifest = Path(str(self.cfg.manifest)).expanduser().resolve()
        if not manifest.is_file():
            raise LungclsError(f"manifest {manifest} does not exist; set dataset.manifest=/path/to/manifest.csv")
        with open_csv(manifest) as f:
            reader = csv.DictReader(f)
            missing = {"path", "label"} - set(reader.fieldnames or [])
            if missing:
                raise LungclsError(
                    f"manifest {manifest} lacks column(s) {', '.join(sorted(missing))}; "
                    "it needs a header with path,label[,split][,patient]"
                )
            source = self.cfg.source_column
            if source and source not in (reader.fieldnames or []):
                raise LungclsError(
                    f"manifest {manifest} has no column {source!r} (dataset.source_column); "
                    f"its columns are {', '.join(reader.fieldnames or [])}"
                )
            rows = list(reader)
        return rows, manifest

    @staticmethod
    def _sample(manifest: Path, row: Mapping[str, str], index: Mapping[str, int], source_column: str | None) -> Sample:
        path = Path(row["path"])
        path = path if path.is_absolute() else manifest.parent / path
        split = (row.get("split") or "").strip().lower() or None
        if split is not None and split not in ("train", "val", "test"):
            raise LungclsError(f"manifest {manifest}: split '{split}' for {path} must be train, val or test")
        patient = (row.get("patient") or "").strip() or None
        source = ((row.get(source_column) or "").strip() or "(none)") if source_column else None
        return _with_masks(path, index[row["label"].strip()], patient=patient, split=split, source=source)


def _folded(name: str) -> str:
    return re.sub(r"[\s_-]+", "", name).lower()


def _refuse_label_typos(manifest: Path, unknown: Counter, classes: Sequence[str]) -> None:
    """A label that differs from a configured class only in case, spaces or underscores is a typo,
    not another class: refusing it keeps those rows from silently leaving the data set."""
    folded = {_folded(c): c for c in classes}
    for label, n in unknown.most_common():
        if _folded(label) in folded:
            raise LungclsError(
                f"manifest {manifest}: label {label!r} ({n} rows) is not in dataset.classes but looks like "
                f"{folded[_folded(label)]!r}; fix the label in the manifest (class names must match exactly)"
            )


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



@contextlib.contextmanager
def collector_paused():
    """Python's cycle collector off while a scan builds its samples. A scan of 400,000 files creates
    millions of objects that all stay alive and form no cycles; each full collection on the way
    walks every object of the process (torch's included): pure overhead that makes the scan's time
    grow faster than the number of files."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def find_samples(data: Mapping[str, Any] | DatasetSettings, prepare: bool = True) -> list[Sample]:
    """All labelled images of the ``dataset`` config through its layout. A configured class
    with no images is an error unless ``allow_missing_classes`` (it then stays in the label space)."""
    cfg = dataset_settings(data)
    classes = list(cfg.classes)
    layout = LAYOUTS.get(cfg.layout)(cfg)
    if cfg.source_column and not isinstance(layout, ManifestLayout):
        raise LungclsError(
            f"dataset.source_column={cfg.source_column} needs a manifest (dataset=manifest "
            "dataset.manifest=...); the other layouts have no source column"
        )
    if prepare:
        layout.prepare()
    with collector_paused():
        samples = layout.find(classes)
    if cfg.source_from:
        from lungcls.data.samples.sources import attach_sources

        samples = attach_sources(samples, cfg.as_dict(), layout.data_root())
    counts = Counter(s.label for s in samples)
    empty = [name for i, name in enumerate(classes) if counts[i] == 0]
    if empty and len(empty) == len(classes):
        raise LungclsError(
            f"no images found for any of {classes} in {layout.where()} (layout={cfg.layout}); "
            "check dataset.root, dataset.layout and dataset.classes"
        )
    if empty and not cfg.allow_missing_classes:
        raise LungclsError(
            f"class(es) {', '.join(empty)} have no images in {layout.where()}; remove them from dataset.classes "
            "or set dataset.allow_missing_classes=true"
        )
    if empty:
        log.warning("classes with no images (kept in the label space): %s", ", ".join(empty))
    return samples


def discover_samples(layout: str, classes: Sequence[str], root: str | Path | None = None,
                     manifest: str | Path | None = None, allow_missing_classes: bool = False) -> list[Sample]:
    """``find_samples`` for a layout given by name (a folder or manifest a report draws from)."""
    cfg = {"layout": layout, "classes": list(classes), "root": root, "manifest": manifest,
           "allow_missing_classes": allow_missing_classes}
    return find_samples(cfg)
