"""The LightningDataModule: find images, split them, decode them once, serve uint8 batches,
and augment them on the batch's device."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Mapping

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lungcls.data.augment.build import build_augment
from lungcls.data.cache.decoded import cache_key
from lungcls.data.cache.loaders import CachedImages, LazyImages, split_loader
from lungcls.data.settings import DatasetSettings, dataset_settings
from lungcls.data.dedup.duplicates import Duplicates, duplicate_groups, resolve_duplicates, straddling
from lungcls.data.samples.folds import SOURCE, fold_gaps, fold_splits, source_fold, source_fold_splits
from lungcls.data.dedup.fingerprints import Fingerprints, load_or_compute, phash_hex
from lungcls.data.pixels.images import load_image, to_unit_float
from lungcls.data.samples.layouts import LAYOUTS, cap_per_class, find_samples
from lungcls.data.samples.sample import Sample
from lungcls.data.cache.machine import MachineImages
from lungcls.data.cache.mapped import writable_folder
from lungcls.data.pixels.normalization import normalization_stats
from lungcls.data.pixels.preprocess import preprocess_from
from lungcls.data.samples.splits import SPLITS, apply_splits_csv, make_splits, write_splits_csv
from lungcls.data.cache.prepared import (prepared_assignment, prepared_normalization, read_meta, streaming_loader,
                                    whole_split_loader)
from lungcls.errors import LungclsError

log = logging.getLogger(__name__)


class LungDataModule(pl.LightningDataModule):
    """Builds the label space, the split and the image cache from a ``dataset`` config."""

    def __init__(self, dataset: Mapping[str, Any] | DatasetSettings, augment: Mapping[str, Any] | None = None, seed: int = 1,
                 prepare: bool = True):
        super().__init__()
        self.cfg = dataset_settings(dataset)
        self.augment_cfg = dict(augment) if augment else None
        self.seed = seed
        self.prepare = prepare  # False: data named by a checkpoint is read, never generated
        self.class_names: list[str] = list(self.cfg.classes)
        self.normal_class: str | None = self.cfg.normal_class
        self.image_size = self.cfg.image_size
        self.preprocess = preprocess_from(self.cfg.as_dict())  # crop_border / equalize / mask_outside_lungs
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
        self._machine: MachineImages | None = None  # the decoded set, shared by this machine's processes
        self._stream: dict[str, Any] | None = None  # a prepared set streamed by LitData: its lungcls.json

    # -- preparation -----------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Let the layout create its data (the demo phantom: once, under a file lock)."""
        LAYOUTS.get(self.cfg.layout)(self.cfg).prepare()

    def setup(self, stage: str | None = None) -> None:
        if self._ready:  # called again by the Trainer, now with every process started: share the cache
            self._join_machine()
            return
        if self.cfg.cache_dir:  # before any work: fingerprints and decoded images are kept there
            writable_folder(self.cfg.cache_dir)
        samples = find_samples(self.cfg, prepare=self.prepare)  # prepares the layout too (idempotent)
        if getattr(LAYOUTS.get(self.cfg.layout), "streamed", False):
            return self._setup_streamed(samples)
        samples = cap_per_class(samples, self.cfg.max_per_class, self.cfg.split_seed)
        self._check_before_decoding(samples)
        if self.cfg.splits_csv:
            assignment = apply_splits_csv(samples, self.cfg.splits_csv)
            samples = [s for s in samples if s.path in assignment]
        samples = self._find_duplicates(samples)
        if not self.cfg.splits_csv:
            groups = duplicate_groups(samples, self.duplicates)
            seed = self.cfg.split_seed
            if self.cfg.folds == SOURCE:
                assignment = self._source_fold(samples, groups, seed)
                samples = [s for s in samples if s.path in assignment]
            elif self.cfg.folds:
                assignment = fold_splits(samples, groups, self.cfg.folds, self.cfg.fold, self.cfg.val_fraction, seed)
            else:
                assignment = make_splits(samples, val_fraction=self.cfg.val_fraction,
                                         test_fraction=self.cfg.test_fraction, seed=seed, groups=groups)
        if self.duplicates is not None:
            self.duplicate_record["straddling_splits"] = straddling(self.duplicates, samples, assignment)
        self._index(samples, assignment)
        self._decode()
        self.mean, self.std = self._normalization()
        self._augment = build_augment(self.augment_cfg, self.image_size)
        self._ready = True

    def _index(self, samples: list[Sample], assignment: dict[str, str]) -> None:
        """Labels and each split's rows (indices into ``samples``)."""
        self.samples, self.assignment = samples, assignment
        self.labels = torch.tensor([s.label for s in samples], dtype=torch.long)
        self._rows = {
            split: torch.tensor([i for i, s in enumerate(samples) if assignment[s.path] == split], dtype=torch.long)
            for split in SPLITS
        }
        self._rows["all"] = torch.arange(len(samples))
        counts = {split: dict(Counter(self.class_names[s.label] for s in self.split_samples(split))) for split in SPLITS}
        used = {split: c for split, c in counts.items() if c}
        log.info("images per split and class: %s", used if len(used) > 1 else next(iter(used.values()), {}))

    def _setup_streamed(self, samples: list[Sample]) -> None:
        """A set prepared by lungcls-prepare: split, duplicates and pixels were fixed when it was
        written; LitData streams the images (nothing is fingerprinted or decoded here)."""
        self._stream = read_meta(str(self.cfg.root))
        self.duplicate_record = dict(self._stream.get("duplicates") or {})
        self._index(samples, prepared_assignment(samples, self.cfg))
        self.mean, self.std = prepared_normalization(self._stream, self.cfg.normalization)
        self._augment = build_augment(self.augment_cfg, self.image_size)
        self._ready = True

    def _check_before_decoding(self, samples: list[Sample]) -> None:
        """Settings that the found images make impossible, before any image is decoded."""
        if self.cfg.folds == SOURCE:
            source_fold(samples, self.cfg.fold)
        if self.preprocess.mask_outside_lungs:
            bare = [s.path for s in samples if s.mask is None]
            if bare:
                raise LungclsError(
                    f"dataset.mask_outside_lungs=true but {len(bare)} image(s) have no lung mask, e.g. {bare[0]}; "
                    "use data with masks/ next to images/ (the Radiography Database, the demo) or dataset.mask_outside_lungs=false")

    def _source_fold(self, samples: list[Sample], groups: list[str], seed: int) -> dict[str, str]:
        """Leave-one-source-out: test on one source, train and validate on the others."""
        assignment, held = source_fold_splits(samples, groups, self.cfg.fold, self.cfg.val_fraction, seed)
        left = sum(1 for s in samples if s.path not in assignment)
        log.info("leave-one-source-out: testing on source %s%s", held,
                 f" ({left} copies of its images left out of training)" if left else "")
        gap = fold_gaps(samples, assignment, self.class_names, f"{source_fold(samples, self.cfg.fold)[0]} ({held})")
        if gap:
            log.warning(gap)
        return assignment

    def _find_duplicates(self, samples: list[Sample]) -> list[Sample]:
        """Fingerprint every image (pixel and perceptual hashes), then find duplicates and apply
        ``dataset.on_label_conflict``. An unreadable image stops here, before any training."""
        paths = [s.path for s in samples]
        cache_dir = self.cfg.cache_dir
        fingerprints = load_or_compute(paths, cache_dir, cache_key(paths, 0) if cache_dir else None,
                                       self.cfg.max_image_pixels)
        if fingerprints.errors:
            first = next(iter(fingerprints.errors.values()))
            more = f" ({len(fingerprints.errors)} unreadable images in all)" if len(fingerprints.errors) > 1 else ""
            raise LungclsError(first + more)
        samples, self.fingerprints, self.duplicates, self.duplicate_record = resolve_duplicates(
            samples, fingerprints, self.cfg, self.class_names)
        return samples

    def _decode(self) -> None:
        """Decode every image once into the uint8 cache (unless ``dataset.cache=none``); under DDP only
        the machine's first process decodes (see ``MachineImages``)."""
        mode = self.cfg.cache
        if mode == "none":  # decoded batch by batch later; every file was read once by the fingerprints
            return
        self._machine = MachineImages([s.path for s in self.samples], self.image_size, mode, self.cfg.cache_dir,
                                      self.cfg.max_image_pixels, self.preprocess, [s.mask for s in self.samples])
        self.images = self._machine.decode()
        self._cache_where = self._machine.where

    def _join_machine(self) -> None:
        if self._machine is not None:
            self.images = self._machine.join(getattr(self, "trainer", None), self.images)

    def _normalization(self) -> tuple[list[float], list[float]]:
        """``dataset.normalization``'s mean and std; a process that decodes nothing itself takes the
        train statistics its launcher handed over, or maps the first process's file to measure them."""
        name = self.cfg.normalization
        train = hashlib.sha256(self._rows["train"].numpy().tobytes()).hexdigest()[:16]
        if name == "dataset" and self._machine is not None and self._machine.pending:
            handed = self._machine.handed_stats(train)
            if handed is not None:
                return handed
            self.images = self._machine.map_now()
        mean, std = normalization_stats(name, self._train_images_for_stats())
        if self._machine is not None and name == "dataset":
            self._machine.hand_over(train, mean, std)
        return mean, std

    def teardown(self, stage: str) -> None:
        if self._machine is not None and stage == "fit":
            self._machine.report()

    def _train_images_for_stats(self) -> Iterator[torch.Tensor] | None:
        """The train images ``normalization=dataset`` measures, in chunks (all of them from the
        cache; at most 512 when decoding lazily)."""
        if self.cfg.normalization != "dataset":
            return None
        if self.images is None:
            rows = self._rows["train"][:512]
            return iter([torch.stack([load_image(self.samples[int(r)].path, self.image_size, preprocess=self.preprocess,
                                                 mask=self.samples[int(r)].mask) for r in rows])] if len(rows) else [])
        return self.cached_chunks(self._rows["train"])

    def cached_chunks(self, rows: torch.Tensor, chunk_bytes: int = 16 << 20) -> Iterator[torch.Tensor]:
        """The cached images of ``rows`` a few MB at a time: a pass over a whole split (statistics,
        lungcls-prepare) never copies the split, nor keeps a mapped file's pages."""
        step = max(1, chunk_bytes // max(1, int(self.images[0].numel())))
        for start in range(0, len(rows), step):
            part = rows[start : start + step]
            yield self._machine.take(self.images, part) if self._machine is not None else self.images[part.to(self.images.device)]

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
        if self._stream is not None and self._stream.get("splits_csv"):  # as prepared, fingerprints included
            with open(path, "w", newline="") as f:
                f.write(self._stream["splits_csv"])
            return
        n = len(self.samples)
        group_of = self.duplicates.group_of(n) if self.duplicates is not None else [-1] * n
        extra: dict[str, list[Any]] = {"duplicate_group": [g if g >= 0 else "" for g in group_of]}
        if self.sources() is not None:
            extra["source"] = [s.source or "" for s in self.samples]
        if self.fingerprints is not None:
            extra["pixel_hash"] = [h or "" for h in self.fingerprints.pixel_hash]
            extra["phash"] = [phash_hex(b) for b in self.fingerprints.packed]
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
        if self._machine is not None and self._machine.pending:  # no Trainer joined the processes
            self.images = self._machine.map_now()
        self._place_cache()
        if self.images is not None:
            return CachedImages(self.images, self.labels, rows, self._machine)
        return LazyImages(self.samples, rows.tolist(), self.image_size, self.cfg.max_image_pixels, self.preprocess)

    def loader(self, split: str, shuffle: bool = False, batch_size: int | None = None, sampler: Sampler | None = None) -> DataLoader:
        bs = int(batch_size or self.cfg.batch_size)
        if self._stream is not None:  # training: LitData shards and shuffles; scoring reads the whole split
            if split == "all":
                raise LungclsError("a prepared set streams one split at a time; use dataset.split=train, val or test")
            if shuffle:
                return self._streaming_loader(split, True, bs)
            return whole_split_loader(self.cfg.root, split, bs, len(self.split_rows(split)))
        return split_loader(self._dataset(split), bs, shuffle, sampler, self.cfg.num_workers, self.seed)

    def _streaming_loader(self, split: str, shuffle: bool, bs: int):
        trainer = getattr(self, "trainer", None)
        return streaming_loader(self.cfg.root, split, len(self.split_rows(split)), bs, shuffle, self.seed,
                                self.cfg.num_workers, trainer.world_size if trainer is not None else 1)

    def train_dataloader(self) -> DataLoader:
        if len(self.split_rows("train")) == 0:
            raise LungclsError("the train split is empty; add images or lower dataset.val_fraction/test_fraction")
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._evaluation_loader("test")

    def _evaluation_loader(self, split: str) -> DataLoader:
        if self._stream is not None:  # each process streams its own share
            return self._streaming_loader(split, False, self.cfg.batch_size)
        return self.loader(split, sampler=self._eval_sampler(split))

    def _eval_sampler(self, split: str) -> Sampler | None:
        """Under DDP, each process scores its own share of ``split`` with no image repeated.

        Lightning's default DistributedSampler pads the split with repeated images so every process
        gets as many; the synced confusion matrix would then count those images twice. Unpadded,
        processes may run one batch fewer than others, which evaluation allows as long as each runs
        at least one: a split smaller than the number of processes keeps the padded default.
        """
        trainer = getattr(self, "trainer", None)
        kwargs = trainer.distributed_sampler_kwargs if trainer is not None and self._stream is None else None
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
