"""Which process of a machine decodes: the first one (into RAM, the GPU, or straight into the mapped
file of ``mapped.py``); the others map its file once the Trainer has joined them, and take the
normalisation it hands to the processes it launches, so a machine decodes and holds one copy.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from lungcls.data.cache.decoded import cache_key, choose_cache_device, load_or_decode
from lungcls.data.cache.mapped import MappedImages, map_images, mapped_file, mapping_memory, write_mapped
from lungcls.errors import LungclsError

log = logging.getLogger(__name__)

WAIT_S = 4 * 3600  # how long a process waits for the machine's first process to decode
STATS_ENV = "LUNGCLS_TRAIN_STATS"  # the first process's normalisation, for the processes it launches


def _slurm_tasks() -> int:
    return int(os.environ.get("SLURM_NTASKS") or 1) if os.environ.get("SLURM_STEP_ID") is not None else 1


def local_rank() -> int:
    """This process's rank on its machine (0 when it runs alone): torchrun and Lightning's launcher
    set ``LOCAL_RANK``, ``srun`` with several tasks ``SLURM_LOCALID``."""
    value = os.environ.get("LOCAL_RANK") or (os.environ.get("SLURM_LOCALID") if _slurm_tasks() > 1 else None)
    return int(value) if value else 0


def launched_processes() -> int:
    """Processes of the job as its launcher announced them (``WORLD_SIZE``, or ``srun``'s tasks);
    1 before any launch (Lightning's own launcher starts the others later)."""
    return int(os.environ.get("WORLD_SIZE") or _slurm_tasks())


class MachineImages:
    """The decoded images of one data module, shared by the processes of a machine.

    The machine's first process decodes at setup: into RAM (or the GPU) as a lone process would, or
    straight into the mapped file when the launcher announced several processes (torchrun, srun)
    or the set is too large for RAM. The others decode nothing. Once the Trainer has joined them
    (``join``, on every process), the first writes its images to the file if it holds them in RAM
    (Lightning's own launcher starts the others only after the first has set up), all meet at a
    barrier, the others map the file read-only, and a temporary file is removed.
    """

    def __init__(self, paths: Sequence[str], image_size: int, mode: str, cache_dir: str | None, max_pixels: int,
                 preprocess=None, masks: Sequence[str | None] | None = None):
        self.paths, self.image_size, self.mode, self.cache_dir, self.max_pixels = list(paths), image_size, mode, cache_dir, max_pixels
        self.preprocess, self.masks = preprocess, masks  # decode-time mitigations (lungcls.data.pixels.preprocess)
        self.shape = (len(self.paths), 1, image_size, image_size)
        self.mapped: MappedImages | None = None
        self.pending = False  # another process of this machine decodes; map its file when joined
        self.joined = False
        self.where = "ram"
        # the files' sizes and times (read once) and the decode-time steps
        self.key = cache_key(self.paths, image_size, preprocess.key() if preprocess is not None else "")

    def _file(self) -> tuple[Path, bool]:
        return mapped_file(self.paths, self.image_size, self.cache_dir, self.key)

    def decode(self) -> torch.Tensor | None:
        """The images this process holds after setup (None: another process decodes them)."""
        n_bytes = int(np.prod(self.shape))
        where = choose_cache_device(self.mode, n_bytes)
        if local_rank() > 0:
            self.pending, self.where = True, ("gpu" if where == "gpu" else "mmap")
            return None
        self.where = "mmap" if where != "gpu" and launched_processes() > 1 else where
        if self.where == "mmap":
            file, temporary = self._file()
            self.mapped = write_mapped(file, self.paths, self.image_size, temporary, self.max_pixels,
                                       preprocess=self.preprocess, masks=self.masks)
            atexit.register(self.mapped.discard)  # a temporary file never outlives the job
            return self.mapped.images
        images = load_or_decode(self.paths, self.image_size, self.cache_dir, self.max_pixels, self.preprocess, self.masks)
        log.info("decoded %d images (%.0f MB), kept in %s", len(images), images.numel() / 2**20, self.where.upper())
        return images

    def map_now(self) -> torch.Tensor:
        """Map the first process's file before any Trainer exists (waiting for it to be written)."""
        file, temporary = self._file()
        log.info("process %d of this machine waits for process 0 to decode into %s", local_rank(), file)
        self.mapped = map_images(file, self.shape, temporary, wait_s=WAIT_S)
        if self.mapped is None:
            raise LungclsError(f"no decoded cache appeared at {file} within {WAIT_S} s; start every process with the same "
                               "dataset settings (or set dataset.cache_dir to a folder all of them can read)")
        self.pending = False
        log.info("process %d of this machine mapped %d decoded images read-only from %s", local_rank(), self.shape[0], file)
        return self.mapped.images

    def join(self, trainer: Any, images: torch.Tensor | None) -> torch.Tensor | None:
        """Called on every process once the Trainer is attached; returns the images to use from now on."""
        world = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
        if self.joined or world <= 1:
            if self.mapped is not None and trainer is not None and local_rank() == 0:
                self.mapped.discard()
            return images
        self.joined = True
        if local_rank() == 0 and self.mapped is None and images is not None:
            file, temporary = self._file()
            self.mapped = write_mapped(file, self.paths, self.image_size, temporary, self.max_pixels, images=images.cpu())
        trainer.strategy.barrier("lungcls-decoded-cache-written")
        if self.pending:
            self.map_now()
        trainer.strategy.barrier("lungcls-decoded-cache-mapped")
        if self.mapped is None:
            return images
        if local_rank() == 0:
            self.mapped.discard()
        return self.mapped.images

    def check(self) -> None:
        if self.mapped is not None:
            self.mapped.check()

    def take(self, images: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The images of ``rows``: read from the mapped file when there is one (see
        ``MappedImages.take``), else indexed from ``images`` (RAM or GPU)."""
        if self.mapped is not None and images is self.mapped.images:
            return self.mapped.take(rows)
        return images[rows.to(images.device)]

    def hand_over(self, train: str, mean: list[float], std: list[float]) -> None:
        """Let processes this one launches read its normalisation of the train split ``train`` (an
        identifier of its rows) instead of decoding for it."""
        if local_rank() == 0:
            os.environ[STATS_ENV] = json.dumps({"key": self.key, "train": train, "mean": mean, "std": std})

    def handed_stats(self, train: str) -> tuple[list[float], list[float]] | None:
        handed = json.loads(os.environ.get(STATS_ENV) or "{}")
        if handed.get("key") == self.key and handed.get("train") == train:
            return handed["mean"], handed["std"]
        return None

    def report(self) -> None:
        """One log line: how many images this process read from the file, and how much of the file's
        mapping it holds (rss) and its share (pss): about none, as batches are read, not mapped."""
        if self.mapped is None:
            return
        memory = mapping_memory(self.mapped.file)
        if memory is not None:
            log.info("process %d of this machine: decoded cache %.2f MB mapped, %d images read from it, resident %.2f MB, "
                     "proportional share (pss) %.2f MB", local_rank(), self.mapped.images.numel() / 2**20,
                     self.mapped.rows_taken, memory["rss"], memory["pss"])
