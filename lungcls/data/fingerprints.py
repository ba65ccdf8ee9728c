"""What makes two X-ray files the same picture: a hash of the decoded pixels (exact duplicates) and
perceptual hashes (near duplicates: resized, re-encoded, slightly cropped or brightened copies).

The perceptual hash is the DCT hash of the ``imagehash`` package (``imagehash.phash``, 12x12 = 144
bits), computed here for many images at once. A crop moves every DCT frequency, so each image is
also hashed at centred crops of 2..10% per side; two images are as far apart as the closest pair of
(full image of one, any crop of the other). Measured on 823 real X-rays (299 px, four sources):
resizing, JPEG at quality 70, brightness +25, contrast 0.8 and centred crops up to 10% per side stay
within 12 bits; distinct films are 16 bits or more apart (one pair at 16, none below). Hence the
default ``dataset.near_duplicate_bits=12``. One-sided crops of more than a few percent are not found.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft
from PIL import Image

from lungcls.data.images import DEFAULT_MAX_PIXELS, read_gray
from lungcls.errors import LungclsError

log = logging.getLogger(__name__)

HASH_SIZE = 12
HIGHFREQ_FACTOR = 4
CROP_LEVELS = (0.0, 0.02, 0.04, 0.06, 0.08, 0.10)
HASH_BITS = HASH_SIZE * HASH_SIZE
DEFAULT_NEAR_BITS = 12
FORMAT = 1


@dataclass
class Fingerprints:
    """Per image: ``pixel_hash`` (hex; None when unreadable) and ``phash`` bits [N, levels, bits]."""

    paths: list[str]
    pixel_hash: list[str | None]
    phash: np.ndarray
    errors: dict[str, str]

    def readable(self) -> np.ndarray:
        return np.array([h is not None for h in self.pixel_hash], dtype=bool)

    def subset(self, keep: Sequence[int]) -> "Fingerprints":
        keep = list(keep)
        paths = [self.paths[i] for i in keep]
        return Fingerprints(paths, [self.pixel_hash[i] for i in keep], self.phash[keep],
                            {p: self.errors[p] for p in paths if p in self.errors})


def pixel_hash(gray: np.ndarray) -> str:
    """SHA-256 of the decoded pixels and their shape (first 32 hex digits): file format, metadata
    and compression do not change it."""
    h = hashlib.sha256(f"{gray.shape[0]}x{gray.shape[1]}:".encode())
    h.update(np.ascontiguousarray(gray).tobytes())
    return h.hexdigest()[:32]


def _crop_thumbnails(gray: np.ndarray) -> np.ndarray:
    """[levels, s, s] float: the image at each centred crop, resized as ``imagehash.phash`` does."""
    img = Image.fromarray(gray)
    w, h = img.size
    side = HASH_SIZE * HIGHFREQ_FACTOR
    out = np.empty((len(CROP_LEVELS), side, side), dtype=np.uint8)
    for k, f in enumerate(CROP_LEVELS):
        dx, dy = int(round(f * w)), int(round(f * h))
        crop = img if f == 0 else img.crop((dx, dy, w - dx, h - dy))
        out[k] = np.asarray(crop.resize((side, side), Image.Resampling.LANCZOS))
    return out


def phash_bits(thumbnails: np.ndarray) -> np.ndarray:
    """``imagehash.phash`` of a stack of thumbnails [..., s, s] -> bool [..., HASH_BITS]."""
    dct = scipy.fft.dct(scipy.fft.dct(thumbnails.astype(np.float64), axis=-2), axis=-1)
    low = dct[..., :HASH_SIZE, :HASH_SIZE].reshape(*thumbnails.shape[:-2], HASH_BITS)
    return low > np.median(low, axis=-1, keepdims=True)


def fingerprint_array(gray: np.ndarray) -> tuple[str, np.ndarray]:
    """Pixel hash and perceptual-hash bits [levels, bits] of one decoded image."""
    return pixel_hash(gray), phash_bits(_crop_thumbnails(gray))


def _one(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[str | None, np.ndarray | None, str | None]:
    try:
        gray = read_gray(path, max_pixels)
    except LungclsError as e:
        return None, None, str(e)
    return (*fingerprint_array(gray), None)


def compute_fingerprints(paths: Sequence[str], workers: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Fingerprints:
    """Decode each file once (threads: PIL and the DCT release the GIL). An unreadable file gets no
    hash and its one-line reason in ``errors``; it never stops the pass."""
    paths = [str(p) for p in paths]
    hashes: list[str | None] = [None] * len(paths)
    bits = np.zeros((len(paths), len(CROP_LEVELS), HASH_BITS), dtype=bool)
    errors: dict[str, str] = {}

    def run(i: int) -> None:
        digest, image_bits, error = _one(paths[i], max_pixels)
        hashes[i] = digest
        if image_bits is not None:
            bits[i] = image_bits
        if error is not None:
            errors[paths[i]] = error

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(run, range(len(paths))))
    return Fingerprints(paths, hashes, bits, errors)


def phash_hex(bits: np.ndarray) -> str:
    """All crop levels of one image as one hex string (for splits.csv)."""
    return np.packbits(bits.ravel()).tobytes().hex()


def phash_from_hex(text: str) -> np.ndarray | None:
    raw = np.frombuffer(bytes.fromhex(text), dtype=np.uint8) if text else np.zeros(0, np.uint8)
    n = len(CROP_LEVELS) * HASH_BITS
    if raw.size * 8 < n:
        return None
    return np.unpackbits(raw)[:n].astype(bool).reshape(len(CROP_LEVELS), HASH_BITS)


def near_pairs(a: np.ndarray, b: np.ndarray | None = None, max_bits: int = DEFAULT_NEAR_BITS,
               chunk: int = 512) -> list[tuple[int, int, int]]:
    """``(i, j, distance)`` for images within ``max_bits``: of ``a`` among themselves (i < j) or
    between ``a`` and ``b``. Hamming distances for all pairs come from one matrix product per
    chunk (|x| + |y| - 2 x.y on 0/1 vectors), the min over full-vs-crop hashes both ways."""
    same = b is None
    b = a if b is None else b
    n_levels = a.shape[1]
    b_full = b[:, 0, :].astype(np.float32)
    b_all = b.reshape(-1, b.shape[-1]).astype(np.float32)
    pairs: list[tuple[int, int, int]] = []
    for start in range(0, len(a), chunk):
        a_full = a[start : start + chunk, 0, :].astype(np.float32)
        a_all = a[start : start + chunk].reshape(-1, a.shape[-1]).astype(np.float32)
        d1 = _hamming(a_full, b_all).reshape(len(a_full), len(b), n_levels).min(axis=2)  # a full vs b crops
        d2 = _hamming(a_all, b_full).reshape(len(a_full), n_levels, len(b)).min(axis=1)  # a crops vs b full
        dist = np.minimum(d1, d2)
        rows, cols = np.nonzero(dist <= max_bits)
        for r, c in zip(rows.tolist(), cols.tolist()):
            i = start + r
            if not same or i < c:
                pairs.append((i, c, int(dist[r, c])))
    return pairs


def _hamming(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.rint(x.sum(1)[:, None] + y.sum(1)[None, :] - 2.0 * (x @ y.T)).astype(np.int32)


def cache_file(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / f"fingerprints-v{FORMAT}-{key}.npz"


def load_or_compute(paths: Sequence[str], cache_dir: str | Path | None = None, key: str | None = None,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> Fingerprints:
    """Fingerprints, read from ``cache_dir`` when a file for exactly these files (``key``) exists."""
    if cache_dir is None or key is None:
        return compute_fingerprints(paths, max_pixels=max_pixels)
    file = cache_file(cache_dir, key)
    if file.is_file():
        try:
            data = np.load(file, allow_pickle=False)
            if list(data["paths"]) == list(paths):
                hashes = [h or None for h in data["pixel_hash"].tolist()]
                errors = dict(zip(data["error_paths"].tolist(), data["error_text"].tolist()))
                return Fingerprints(list(paths), hashes, data["phash"].astype(bool), errors)
        except Exception as e:  # a truncated or foreign file: rebuild it
            log.warning("ignoring unreadable fingerprint cache %s (%s)", file, e)
    fp = compute_fingerprints(paths, max_pixels=max_pixels)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.tmp{os.getpid()}.npz")
    np.savez(tmp, paths=np.array(fp.paths), pixel_hash=np.array([h or "" for h in fp.pixel_hash]), phash=fp.phash,
             error_paths=np.array(list(fp.errors), dtype=str), error_text=np.array(list(fp.errors.values()), dtype=str))
    os.replace(tmp, file)
    return fp
