"""Decode once: every image of a split as one uint8 tensor at the working size, in RAM, on the GPU,
or in a memory-mapped file that every process of a machine shares.

PNG decoding is the bottleneck of chest X-ray training (a CPU loader tops out near 2,000 images/s on
16 cores, far below what a GPU trains AlexNet or ResNet50 at). The whole Radiography Database is
about 1 GB as uint8 at 224x224, so we decode it once, in parallel, and slice batches from memory.
A cache can be saved to ``dataset.cache_dir`` and is rebuilt when the files or the size change.

Larger sets (MIMIC-CXR at 224 px is 19 GB as uint8) and DDP (8 ranks would hold 8 copies) use the
memory-mapped form (``dataset.cache=mmap``, which ``auto`` picks when the set would not fit
comfortably in RAM; see ``mapped.py``): one process per machine decodes into a file that the others
map read-only, so the kernel's page cache holds one copy for all of them.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import torch

from lungcls.data.pixels.images import DEFAULT_MAX_PIXELS, load_image
from lungcls.console import tracked

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


def cache_key(paths: Sequence[str], image_size: int, steps: str = "") -> str:
    """Identifies the decoded content: file paths, sizes and modification times, the working size
    and the decode-time preprocessing ``steps`` (``Preprocess.key()``)."""
    h = hashlib.sha256(f"v{CACHE_FORMAT}:{image_size}{':' + steps if steps else ''}".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def decode_images(paths: Sequence[str], image_size: int, workers: int | None = None,
                  max_pixels: int = DEFAULT_MAX_PIXELS, preprocess=None,
                  masks: Sequence[str | None] | None = None, out: torch.Tensor | None = None,
                  after_rows: Callable[[int], None] | None = None) -> torch.Tensor:
    """uint8 [N, 1, S, S] (written into ``out`` when given, e.g. a memory-mapped array, whose
    ``after_rows(n)`` hears of every ``n`` rows written); decoding runs on a thread pool (PIL
    releases the GIL while inflating)."""
    if out is None:
        out = torch.empty((len(paths), 1, image_size, image_size), dtype=torch.uint8)
    if not paths:
        return out
    workers = workers or min(32, os.cpu_count() or 1)

    def one(i: int) -> None:
        out[i] = load_image(paths[i], image_size, max_pixels, preprocess, masks[i] if masks else None)

    window = workers * 64  # images in flight: the pool's bookkeeping stays the same size for any number of images

    def decoded():
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending: deque = deque()
            for i in range(len(paths)):
                pending.append(pool.submit(one, i))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    for _ in tracked(decoded(), "decode into the cache", len(paths)):
        if after_rows is not None:
            after_rows(1)
    return out


def load_or_decode(paths: Sequence[str], image_size: int, cache_dir: str | Path | None = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS, preprocess=None,
                   masks: Sequence[str | None] | None = None) -> torch.Tensor:
    """Decoded images (after ``preprocess``, see ``lungcls.data.pixels.preprocess``), read from
    ``cache_dir`` when a cache of exactly these files and steps exists."""
    if cache_dir is None:
        return decode_images(paths, image_size, max_pixels=max_pixels, preprocess=preprocess, masks=masks)
    key = cache_key(paths, image_size, preprocess.key() if preprocess is not None else "")
    file = Path(cache_dir) / f"images-{image_size}px-{key}.pt"
    if file.is_file():
        try:
            images = torch.load(file, map_location="cpu", weights_only=True)
            if images.shape == (len(paths), 1, image_size, image_size):
                log.info("read %d decoded images from %s", len(paths), file)
                return images
        except Exception as e:  # a truncated or foreign file: rebuild it
            log.warning("ignoring unreadable cache %s (%s)", file, e)
    images = decode_images(paths, image_size, max_pixels=max_pixels, preprocess=preprocess, masks=masks)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(f".tmp{os.getpid()}")
    torch.save(images, tmp)
    os.replace(tmp, file)
    log.info("saved %d decoded images to %s", len(paths), file)
    return images


RAM_SHARE = 0.5  # "fits comfortably": at most this share of the available RAM


def choose_cache_device(mode: str, n_bytes: int) -> str:
    """Where the decoded images live: 'gpu' when asked, or on 'auto' when they fit comfortably
    (under a third of the free GPU memory); 'mmap' when asked, or on 'auto' when they would take
    more than half the available RAM (said in one log line); otherwise 'ram'."""
    if mode == "mmap":
        return "mmap"
    if mode == "gpu":
        return "gpu" if torch.cuda.is_available() else "ram"
    if mode == "auto" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        if n_bytes < free / 3:
            return "gpu"
    if mode == "auto":
        import psutil  # noqa: PLC0415 - only auto's RAM check needs it

        available = psutil.virtual_memory().available
        if n_bytes > available * RAM_SHARE:
            log.info("cache=auto: the decoded set (%.1f GB) is more than half the available RAM (%.1f GB), "
                     "so it is memory-mapped from a file instead of held in RAM", n_bytes / 2**30, available / 2**30)
            return "mmap"
    return "ram"
