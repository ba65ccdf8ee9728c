"""Decode once: every image of a split as one uint8 tensor at the working size, in RAM or on the GPU.

PNG decoding is the bottleneck of chest X-ray training (a CPU loader tops out near 2,000 images/s on
16 cores, far below what a GPU trains AlexNet or ResNet50 at). The whole Radiography Database is
about 1 GB as uint8 at 224x224, so we decode it once, in parallel, and slice batches from memory.
A cache can be saved to ``dataset.cache_dir`` and is rebuilt when the files or the size change.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import torch

from lungcls.data.images import DEFAULT_MAX_PIXELS, load_image
from lungcls.runs.progress import tracked

log = logging.getLogger(__name__)

CACHE_FORMAT = 1



def cache_key(paths: Sequence[str], image_size: int) -> str:
    """Identifies the decoded content: file paths, sizes and modification times, and the working size."""
    h = hashlib.sha256(f"v{CACHE_FORMAT}:{image_size}".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def decode_images(paths: Sequence[str], image_size: int, workers: int | None = None,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """uint8 [N, 1, S, S]; decoding runs on a thread pool (PIL releases the GIL while inflating)."""
    out = torch.empty((len(paths), 1, image_size, image_size), dtype=torch.uint8)
    if not paths:
        return out
    workers = workers or min(32, os.cpu_count() or 1)

    def one(i: int) -> None:
        out[i] = load_image(paths[i], image_size, max_pixels)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in tracked(pool.map(one, range(len(paths))), "decode into the cache", len(paths)):
            pass
    return out


def load_or_decode(paths: Sequence[str], image_size: int, cache_dir: str | Path | None = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Decoded images, read from ``cache_dir`` when a cache of exactly these files exists."""
    if cache_dir is None:
        return decode_images(paths, image_size, max_pixels=max_pixels)
    key = cache_key(paths, image_size)
    file = Path(cache_dir) / f"images-{image_size}px-{key}.pt"
    if file.is_file():
        try:
            images = torch.load(file, map_location="cpu", weights_only=True)
            if images.shape == (len(paths), 1, image_size, image_size):
                log.info("read %d decoded images from %s", len(paths), file)
                return images
        except Exception as e:  # a truncated or foreign file: rebuild it
            log.warning("ignoring unreadable cache %s (%s)", file, e)
    images = decode_images(paths, image_size, max_pixels=max_pixels)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(f".tmp{os.getpid()}")
    torch.save(images, tmp)
    os.replace(tmp, file)
    log.info("saved %d decoded images to %s", len(paths), file)
    return images


def choose_cache_device(mode: str, n_bytes: int) -> str:
    """Where the decoded images live: 'gpu' when asked, or on 'auto' when they fit comfortably
    (under a third of the free GPU memory); otherwise 'ram'."""
    if mode == "gpu":
        return "gpu" if torch.cuda.is_available() else "ram"
    if mode == "auto" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return "gpu" if n_bytes < free / 3 else "ram"
    return "ram"
