"""The ``dataset`` config as typed settings, checked before any file is read.

The defaults live in one place, ``conf/dataset/demo.yaml``, which every other data set config
extends. A mapping that lacks keys (the data config an older checkpoint stored, a test's partial
dict) is completed from that file, so a key added in a later release never breaks an earlier
checkpoint. A wrong type, an unknown key or a value out of range is one line naming the key and the
fix, instead of a traceback from deep inside a loader.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import yaml

from lungcls.data.samples.splits import SPLITS
from lungcls.errors import LungclsError
from lungcls.settings import CONF_DIR, check_range, typed

DEFAULTS_FILE = CONF_DIR / "dataset" / "demo.yaml"
CACHE_MODES = ("auto", "ram", "gpu", "mmap", "none")
DUPLICATE_MODES = ("none", "exact", "near")
CONFLICT_POLICIES = ("error", "drop", "keep")
SPLIT_CHOICES = (*SPLITS, "all")  # what a command may score: one split, or every image
HASH_BITS = 144  # the perceptual fingerprint's length (lungcls.data.dedup.fingerprints)


@dataclasses.dataclass
class DemoSettings:
    """``dataset.demo.*``: the synthetic phantom's parameters."""

    images_per_class: int
    source_size: int
    seed: int
    shortcut: float
    sources: int
    source_bias: float

    def __post_init__(self) -> None:
        check_range(self.images_per_class, "dataset.demo.images_per_class", 1)
        check_range(self.source_size, "dataset.demo.source_size", 32)
        check_range(self.shortcut, "dataset.demo.shortcut", 0, 1)
        check_range(self.sources, "dataset.demo.sources", 1)
        check_range(self.source_bias, "dataset.demo.source_bias", 0, 1)


@dataclasses.dataclass
class DatasetSettings:
    """``dataset.*``: where the images are, their classes, how they are split, decoded and cached."""

    name: str
    layout: str
    root: Optional[str]
    manifest: Optional[str]
    classes: list[str]
    normal_class: Optional[str]
    allow_missing_classes: bool
    max_per_class: Optional[int]
    image_size: int
    max_image_pixels: int
    normalization: str
    pretrained: Optional[str]
    val_fraction: float
    test_fraction: float
    split_seed: int
    folds: Optional[Any]      # k, or "source": one fold per source
    fold: Any                 # an index, or a source's name
    splits_csv: Optional[str]
    split: str
    batch_size: int
    num_workers: int
    cache: str
    cache_dir: Optional[str]
    duplicates: str
    near_duplicate_bits: int
    on_label_conflict: str
    source_column: Optional[str]
    source_from: Optional[str]
    source_regex: Optional[str]
    crop_border: float
    equalize: Optional[str]
    clahe_clip_limit: float
    clahe_grid: int
    mask_outside_lungs: bool
    demo: Optional[DemoSettings]

    def __post_init__(self) -> None:
        self._check_classes()
        check_range(self.image_size, "dataset.image_size", 16)
        check_range(self.max_image_pixels, "dataset.max_image_pixels", 1)
        check_range(self.batch_size, "dataset.batch_size", 1)
        check_range(self.num_workers, "dataset.num_workers", 0)
        check_range(self.split_seed, "dataset.split_seed", 0)
        check_range(self.max_per_class, "dataset.max_per_class", 1)
        check_range(self.val_fraction, "dataset.val_fraction", 0, 1, high_open=True)
        check_range(self.test_fraction, "dataset.test_fraction", 0, 1, high_open=True)
        check_range(self.near_duplicate_bits, "dataset.near_duplicate_bits", 0, HASH_BITS)
        if self.val_fraction + self.test_fraction >= 1:
            raise LungclsError(
                f"dataset.val_fraction={self.val_fraction} and dataset.test_fraction={self.test_fraction} leave no "
                "images to train on; make them sum to less than 1")
        for key, value, allowed in (("cache", self.cache, CACHE_MODES), ("duplicates", self.duplicates, DUPLICATE_MODES),
                                    ("on_label_conflict", self.on_label_conflict, CONFLICT_POLICIES), ("split", self.split, SPLIT_CHOICES)):
            if value not in allowed:
                raise LungclsError(f"dataset.{key}={value} is not one of {', '.join(allowed)}")
        if self.folds is not None:
            from lungcls.data.samples.folds import check_folds

            self.folds, self.fold = check_folds(self.folds, self.fold)
            if self.splits_csv:
                raise LungclsError("dataset.folds and dataset.splits_csv both choose the test images; use one of them")
        from lungcls.data.pixels.preprocess import preprocess_from

        preprocess_from(self.as_dict())  # crop_border, equalize, clahe_*: ranges and names
        if self.cache_dir is not None and Path(self.cache_dir).expanduser().exists() and not Path(self.cache_dir).expanduser().is_dir():
            raise LungclsError(f"dataset.cache_dir={self.cache_dir} is a file, not a folder; give a folder (it is created if missing)")

    def _check_classes(self) -> None:
        if not self.classes:
            raise LungclsError("dataset.classes is empty; list the class names, e.g. dataset.classes=[COVID,Normal]")
        self.classes = [str(c) for c in self.classes]
        if len(set(self.classes)) != len(self.classes):
            raise LungclsError(f"dataset.classes has duplicates: {self.classes}")
        if self.normal_class is not None and self.normal_class not in self.classes:
            raise LungclsError(
                f"dataset.normal_class={self.normal_class} is not in dataset.classes {self.classes}; "
                "set dataset.normal_class to one of them (or null)")

    def as_dict(self) -> dict[str, Any]:
        """Plain values, as a checkpoint stores them."""
        return dataclasses.asdict(self)


@functools.lru_cache(maxsize=1)
def dataset_defaults() -> dict[str, Any]:
    """The keys of ``conf/dataset/demo.yaml`` with their values (interpolations left unresolved)."""
    return yaml.safe_load(DEFAULTS_FILE.read_text())


def dataset_settings(data: Mapping[str, Any] | DatasetSettings, stored: bool = False) -> DatasetSettings:
    """Typed, checked settings from a ``dataset`` mapping (a composed config, or with ``stored`` the
    copy a checkpoint keeps, whose keys a later release may have dropped); keys it lacks take the
    defaults of ``conf/dataset/demo.yaml``."""
    if isinstance(data, DatasetSettings):
        return data
    defaults = dataset_defaults()
    merged = {k: v for k, v in defaults.items() if k not in ("root", "demo")}
    merged.update({"root": None, "demo": None})
    known = {f.name for f in dataclasses.fields(DatasetSettings)}
    merged.update({k: v for k, v in dict(data).items() if k in known or not stored})
    if isinstance(merged["demo"], Mapping):
        merged["demo"] = {**defaults["demo"], **merged["demo"]}
    if "normal_class" not in data and merged["normal_class"] not in list(merged["classes"] or []):
        merged["normal_class"] = None  # a partial mapping whose classes have no "Normal": no missed-disease count
    if isinstance(merged["classes"], str):
        raise LungclsError(f"dataset.classes={merged['classes']} must be a list, e.g. dataset.classes=[COVID,Normal]")
    return typed(merged, DatasetSettings, "dataset")
