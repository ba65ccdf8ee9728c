"""How a split's rows reach the model: from the decoded cache a whole batch at a time
(``CachedImages``), or decoded image by image when nothing is cached (``LazyImages``,
``dataset.cache=none``), each in the DataLoader that suits it (``split_loader``)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lungcls.data.cache.machine import MachineImages
from lungcls.data.pixels.images import load_image
from lungcls.data.samples.sample import Sample


def keep_batch(batch):
    """The collate of a cached split: ``CachedImages`` already returns whole batches."""
    return batch


class CachedImages(Dataset):
    """Rows of the decoded uint8 images (RAM, GPU, or a memory-mapped file read by ``mapped``).
    ``__getitems__`` takes a whole batch in one operation instead of stacking images one by one."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, mapped: MachineImages | None = None):
        self.images, self.labels, self.rows = images, labels, rows
        # a memory-mapped cache: batches are read from its file (checked against changes, one stat a batch)
        self.mapped = mapped

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def __getitems__(self, indices: Sequence[int]):
        rows = self.rows[torch.as_tensor(indices, dtype=torch.long)]
        if self.mapped is not None and not self.images.is_cuda:  # read from the mapped file when it is one
            return self.mapped.take(self.images, rows), self.labels[rows], rows
        if self.images.is_cuda:  # a pinned, asynchronous copy: no host sync per batch
            dev_rows = rows.pin_memory().to(self.images.device, non_blocking=True)
        else:
            dev_rows = rows
        return self.images[dev_rows], self.labels[dev_rows], rows


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


def split_loader(ds: Dataset, batch_size: int, shuffle: bool, sampler: Sampler | None, num_workers: int,
                 seed: int) -> DataLoader:
    """Cached rows are batched in this process (an index into memory needs no workers, nor pinning);
    images decoded per item use ``num_workers`` workers and pinned memory for the GPU."""
    cached = isinstance(ds, CachedImages)
    workers = 0 if cached else num_workers
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        drop_last=shuffle and len(ds) > batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=not cached and torch.cuda.is_available(),
        collate_fn=keep_batch if cached else None,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
    )
