"""The LightningDataModule: find images, split them, decode them once, serve uint8 batches,
and augment them on the batch's device."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lungcls.data.cache import cache_key, choose_cache_device, load_or_decode
from lungcls.data.checks import check_dataset_config
from lungcls.data.duplicates import Duplicates, duplicate_groups, resolve_duplicates, straddling
from lungcls.data.folds import SOURCE, fold_gaps, fold_splits, source_fold, source_fold_splits
from lungcls.data.fingerprints import Fingerprints, load_or_compute, phash_hex
from lungcls.data.images import load_image, to_unit_float
from lungcls.data.layouts import LAYOUTS, Sample, cap_per_class, find_samples
from lungcls.data.normalization import normalization_stats
from lungcls.data.preprocess import preprocess_from
from lungcls.data.splits import SPLITS, apply_splits_csv, make_splits, write_splits_csv
from lungcls.errors import LungclsError

log = logging.getLogger(__name__)


class CachedImages(Dataset):
    """Rows of a decoded uint8 tensor (RAM or GPU). ``__getitems__`` slices a whole batch with one
    indexing operation instead of stacking images one by one."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor):
        self.images, self.labels, self.rows = images, labels, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def __getitems__(self, indices: Sequence[int]):
        rows = self.rows[torch.as_tensor(indices, dtype=torch.long)]
        if self.images.is_cuda:  # a pinned, asynchronous copy: no host sync per batch
            dev_rows = rows.pin_memory().to(self.images.device, non_blocking=True)
        else:
            dev_rows = rows
        return self.images[dev_rows], self.labels[dev_rows], rows


def _keep_batch(batch):
    return batch


def build_augment(cfg: Mapping[str, Any] | None, image_size: int):
    """The ``augment`` config's module (Hydra ``_target_``), or None when it changes nothing."""
    if not cfg:
        return None
    import hydra

    cfg = dict(cfg)
    cfg.setdefault("_target_", "lungcls.data.augment.BatchAugment")
    cfg["_partial_"] = True
    try:
        augment = hydra.utils.instantiate(cfg)(image_size=image_size)
    except LungclsError:
        raise
    except Exception as e:
        raise LungclsError(f"cannot build augment {cfg.get('_target_')} ({' '.join(str(e).split())[:200]}); check augment.* values") from None
    return augment if getattr(augment, "active", True) else None


class LazyImages(Dataset):
    """Decode each image when asked (``dataset.cache=none``): for sets too large for memory."""

    def __init__(self, samples: Sequence[Sample], rows: Sequence[int], image_size: int, max_pixels: int, preprocess=None):
        self.samples, self.rows, self.image_size, self.max_pixels = samples, list(rows), image_size, max_pixels
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = self.rows[i]
        s = self.samples[row]
        return load_image(s.path, self.image_size, self.max_pixels, self.preprocess, s.mask), torch.tensor(s.label), torch.tensor(row)


class LungDataModule(pl.LightningDataModule):
    """Builds the label space, the split and the image cache from a ``dataset`` config."""

    def __init__(self, dataset: Mapping[str, Any], augment: Mapping[str, Any] | None = None, seed: int = 1,
                 prepare: bool = True):
        super().__init__()
        self.cfg = check_dataset_config(dataset)
        self.augment_cfg = dict(augment) if augment else None
        self.seed = seed
        self.prepare = prepare  # False: data named by a checkpoint is read, never generated
        self.class_names: list[str] = list(self.cfg["classes"])
        self.normal_class: str | None = self.cfg.get("normal_class")
        self.image_size = int(self.cfg["image_size"])
        self.preprocess = preprocess_from(self.cfg)  # crop_border / equalize / mask_outside_lungs, checked now
        self.samples: list[Sample] = []
        self.assignment: dict[str, str] = {}
        self.fingerprints: Fingerprints | None = None
        self.duplicates: Duplicates | None = None
        self.duplicate_record: dict[str, Any] = {}
        self.images: torch.Tensor | None = None
        self.mean: list[float] | None = None
        self.std: list[float] | None = None
        self._augment = None
        self._ready = False
        self._cache_where = "ram"

    # -- preparation -----------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Let the layout create its data (the demo phantom: once, under a file lock)."""
        LAYOUTS.get(self.cfg.get("layout", "radiography"))(self.cfg).prepare()

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        samples = find_samples(self.cfg, prepare=self.prepare)  # prepares the layout too (idempotent)
        samples = cap_per_class(samples, self.cfg.get("max_per_class"), int(self.cfg.get("split_seed", 1)))
        self._check_before_decoding(samples)
        if self.cfg.get("splits_csv"):
            assignment = apply_splits_csv(samples, self.cfg["splits_csv"])
            samples = [s for s in samples if s.path in assignment]
        samples = self._find_duplicates(samples)
        if not self.cfg.get("splits_csv"):
            groups = duplicate_groups(samples, self.duplicates)
            seed = int(self.cfg.get("split_seed", 1))
            if self.cfg.get("folds") == SOURCE:
                assignment = self._source_fold(samples, groups, seed)
                samples = [s for s in samples if s.path in assignment]
            elif self.cfg.get("folds"):
                assignment = fold_splits(samples, groups, self.cfg["folds"], self.cfg.get("fold", 0),
                                         float(self.cfg.get("val_fraction", 0.1)), seed)
            else:
                assignment = make_splits(samples, val_fraction=float(self.cfg.get("val_fraction", 0.1)),
                                         test_fraction=float(self.cfg.get("test_fraction", 0.1)), seed=seed, groups=groups)
        self.samples, self.assignment = samples, assignment
        if self.duplicates is not None:
            self.duplicate_record["straddling_splits"] = straddling(self.duplicates, samples, assignment)
        self.labels = torch.tensor([s.label for s in samples], dtype=torch.long)
        self._rows = {
            split: torch.tensor([i for i, s in enumerate(samples) if assignment[s.path] == split], dtype=torch.long)
            for split in SPLITS
        }
        self._rows["all"] = torch.arange(len(samples))
        counts = {split: dict(Counter(self.class_names[s.label] for s in self.split_samples(split))) for split in SPLITS}
        used = {split: c for split, c in counts.items() if c}
        log.info("images per split and class: %s", used if len(used) > 1 else next(iter(used.values()), {}))
        self._decode()
        self.mean, self.std = normalization_stats(self.cfg.get("normalization", "imagenet"), self._train_images_for_stats())
        self._augment = build_augment(self.augment_cfg, self.image_size)
        self._ready = True

    def _check_before_decoding(self, samples: list[Sample]) -> None:
        """Settings that the found images make impossible, before any image is decoded."""
        if self.cfg.get("folds") == SOURCE:
            source_fold(samples, self.cfg["fold"])
        if self.preprocess.mask_outside_lungs:
            bare = [s.path for s in samples if s.mask is None]
            if bare:
                raise LungclsError(
                    f"dataset.mask_outside_lungs=true but {len(bare)} image(s) have no lung mask, e.g. {bare[0]}; "
                    "use data with masks/ next to images/ (the Radiography Database, the demo) or dataset.mask_outside_lungs=false")

    def _source_fold(self, samples: list[Sample], groups: list[str], seed: int) -> dict[str, str]:
        """Leave-one-source-out: test on one source, train and validate on the others."""
        assignment, held = source_fold_splits(samples, groups, self.cfg["fold"], float(self.cfg.get("val_fraction", 0.1)), seed)
        left = sum(1 for s in samples if s.path not in assignment)
        log.info("leave-one-source-out: testing on source %s%s", held,
                 f" ({left} copies of its images left out of training)" if left else "")
        gap = fold_gaps(samples, assignment, self.class_names, f"{source_fold(samples, self.cfg['fold'])[0]} ({held})")
        if gap:
            log.warning(gap)
        return assignment

    def _find_duplicates(self, samples: list[Sample]) -> list[Sample]:
        """Fingerprint every image (pixel and perceptual hashes), then find duplicates and apply
        ``dataset.on_label_conflict``. An unreadable image stops here, before any training."""
        paths = [s.path for s in samples]
        cache_dir = self.cfg.get("cache_dir")
        fingerprints = load_or_compute(paths, cache_dir, cache_key(paths, 0) if cache_dir else None,
                                       self.cfg["max_image_pixels"])
        if fingerprints.errors:
            first = next(iter(fingerprints.errors.values()))
            more = f" ({len(fingerprints.errors)} unreadable images in all)" if len(fingerprints.errors) > 1 else ""
            raise LungclsError(first + more)
        samples, self.fingerprints, self.duplicates, self.duplicate_record = resolve_duplicates(
            samples, fingerprints, self.cfg, self.class_names)
        return samples

    def _decode(self) -> None:
        """Decode every image once into the uint8 cache (unless ``dataset.cache=none``)."""
        mode = self.cfg.get("cache", "auto")
        if mode == "none":  # decoded batch by batch later; every file was read once by the fingerprints
            return
        images = load_or_decode([s.path for s in self.samples], self.image_size, self.cfg.get("cache_dir"),
                                self.cfg["max_image_pixels"], self.preprocess, [s.mask for s in self.samples])
        self._cache_where = choose_cache_device(mode, images.numel())
        self.images = images
        log.info("decoded %d images (%.0f MB), kept in %s", len(images), images.numel() / 2**20, self._cache_where.upper())

    def _train_images_for_stats(self) -> torch.Tensor | None:
        """The train images ``normalization=dataset`` measures (at most 512 when decoding lazily)."""
        if self.cfg.get("normalization") != "dataset":
            return None
        rows = self._rows["train"]
        if self.images is not None:
            return self.images[rows.to(self.images.device)]
        return torch.stack([load_image(self.samples[int(r)].path, self.image_size, preprocess=self.preprocess,
                                       mask=self.samples[int(r)].mask) for r in rows[:512]])

    def _target_device(self) -> torch.device:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.strategy.root_device
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")

    # -- views -------------------------------------------------------------------------------------
    def split_rows(self, split: str) -> torch.Tensor:
        if split not in self._rows:
            raise LungclsError(f"unknown split '{split}'; use one of train, val, test, all")
        return self._rows[split]

    def split_samples(self, split: str) -> list[Sample]:
        return [self.samples[int(i)] for i in self.split_rows(split)]

    def class_counts(self, split: str = "train") -> list[int]:
        c = Counter(s.label for s in self.split_samples(split))
        return [c.get(i, 0) for i in range(len(self.class_names))]

    def sources(self) -> dict[str, str] | None:
        """``{path: source}`` when the data has a source column (``dataset.source_column``)."""
        if not any(s.source for s in self.samples):
            return None
        return {s.path: s.source or "(none)" for s in self.samples}

    def write_splits(self, path: str | Path) -> None:
        """splits.csv: each image's split, its duplicate group (blank: no copy), its source and
        fingerprints (so evaluation can recognise training images on other data)."""
        n = len(self.samples)
        group_of = self.duplicates.group_of(n) if self.duplicates is not None else [-1] * n
        extra: dict[str, list[Any]] = {"duplicate_group": [g if g >= 0 else "" for g in group_of]}
        if self.sources() is not None:
            extra["source"] = [s.source or "" for s in self.samples]
        if self.fingerprints is not None:
            extra["pixel_hash"] = [h or "" for h in self.fingerprints.pixel_hash]
            extra["phash"] = [phash_hex(b) for b in self.fingerprints.phash]
        write_splits_csv(path, self.samples, self.assignment, self.class_names, extra)

    # -- loaders -----------------------------------------------------------------------------------
    def _place_cache(self) -> None:
        """Move a GPU cache to this process's device. Deferred from ``setup`` because under DDP the
        device of each process is only known once the Trainer is attached."""
        if self.images is None or self._cache_where != "gpu":
            return
        device = self._target_device()
        if device.type == "cuda" and self.images.device != device:
            self.images = self.images.to(device)
            self.labels = self.labels.to(device)

    def _dataset(self, split: str) -> Dataset:
        rows = self.split_rows(split)
        self._place_cache()
        if self.images is not None:
            return CachedImages(self.images, self.labels, rows)
        return LazyImages(self.samples, rows.tolist(), self.image_size, self.cfg["max_image_pixels"], self.preprocess)

    def loader(self, split: str, shuffle: bool = False, batch_size: int | None = None, sampler: Sampler | None = None) -> DataLoader:
        ds = self._dataset(split)
        bs = int(batch_size or self.cfg.get("batch_size", 32))
        cached = isinstance(ds, CachedImages)
        workers = 0 if cached else int(self.cfg.get("num_workers", 0))
        return DataLoader(
            ds,
            batch_size=bs,
            shuffle=shuffle,
            sampler=sampler,
            drop_last=shuffle and len(ds) > bs,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=not cached and torch.cuda.is_available(),
            collate_fn=_keep_batch if cached else None,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
        )

    def train_dataloader(self) -> DataLoader:
        if len(self.split_rows("train")) == 0:
            raise LungclsError("the train split is empty; add images or lower dataset.val_fraction/test_fraction")
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val", sampler=self._eval_sampler("val"))

    def test_dataloader(self) -> DataLoader:
        return self.loader("test", sampler=self._eval_sampler("test"))

    def _eval_sampler(self, split: str) -> Sampler | None:
        """Under DDP, each process scores its own share of ``split`` with no image repeated.

        Lightning's default DistributedSampler pads the split with repeated images so every process
        gets as many; the synced confusion matrix would then count those images twice. Unpadded,
        processes may run one batch fewer than others, which evaluation allows as long as each runs
        at least one: a split smaller than the number of processes keeps the padded default.
        """
        trainer = getattr(self, "trainer", None)
        kwargs = trainer.distributed_sampler_kwargs if trainer is not None else None
        n = len(self.split_rows(split))
        if not kwargs or kwargs.get("num_replicas", 1) <= 1 or n < kwargs["num_replicas"]:
            return None
        from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler

        return UnrepeatedDistributedSampler(self._dataset(split), shuffle=False, **kwargs)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """uint8 -> [0, 1] float on the batch's device, augmented while training."""
        x, y, rows = batch
        x = to_unit_float(x)
        trainer = getattr(self, "trainer", None)
        if self._augment is not None and trainer is not None and trainer.training:
            self._augment.to(x.device)
            x = self._augment(x)
        return x, y, rows
