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
from collections.abc import Sequence
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft
from PIL import Image

from lungcls.data.dedup import filestore
from lungcls.data.dedup.filestore import file_keys
from lungcls.data.dedup.hashindex import indexed_near_pairs
from lungcls.data.pixels.images import DEFAULT_MAX_PIXELS, read_gray
from lungcls.data.dedup.parallel import map_chunks
from lungcls.errors import LungclsError

log = logging.getLogger(__name__)

HASH_SIZE = 12
HIGHFREQ_FACTOR = 4
CROP_LEVELS = (0.0, 0.02, 0.04, 0.06, 0.08, 0.10)
HASH_BITS = HASH_SIZE * HASH_SIZE
assert HASH_BITS % 8 == 0, "hashes are kept packed, eight bits a byte"
DEFAULT_NEAR_BITS = 12
FORMAT = 2  # the per-file store (path, size, mtime -> hashes)


@dataclass
class Fingerprints:
    """Per image: ``pixel_hash`` (hex; None when unreadable) and the perceptual-hash bits, kept
    packed (``packed``: uint8 [N, levels, bits / 8], 108 bytes an image instead of 864; ``phash``
    unpacks them)."""

    paths: list[str]
    pixel_hash: list[str | None]
    packed: np.ndarray
    errors: dict[str, str]

    def __post_init__(self):
        if self.packed.dtype != np.uint8 or self.packed.ndim != 3:
            raise TypeError("Fingerprints.packed holds uint8 [images, levels, bits / 8]: pack bool bits with np.packbits(bits, axis=-1)")

    @property
    def phash(self) -> np.ndarray:
        """bool [N, levels, bits] (a new array each time)."""
        return np.unpackbits(self.packed, axis=-1, count=HASH_BITS).view(bool)

    def bits_shape(self) -> tuple[int, int]:
        """(levels, bits) of one image's hashes, without unpacking them."""
        return self.packed.shape[1], self.packed.shape[2] * 8

    def readable(self) -> np.ndarray:
        return np.array([h is not None for h in self.pixel_hash], dtype=bool)

    def subset(self, keep: Sequence[int]) -> "Fingerprints":
        keep = list(keep)
        paths = [self.paths[i] for i in keep]
        return Fingerprints(paths, [self.pixel_hash[i] for i in keep], self.packed[keep],
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


def _one(path: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[str | None, np.ndarray | None, str | None]:
    try:
        gray = read_gray(path, max_pixels)
    except LungclsError as e:
        return None, None, str(e)
    return (*fingerprint_array(gray), None)


def fingerprint_files(paths: Sequence[str], max_pixels: int | None = DEFAULT_MAX_PIXELS) -> list[tuple]:
    """``_one`` for each path, bits packed (what a worker process sends back)."""
    out = []
    for p in paths:
        digest, bits, error = _one(p, max_pixels)
        out.append((digest, None if bits is None else np.packbits(bits), error))
    return out


def compute_fingerprints(paths: Sequence[str], workers: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Fingerprints:
    """Decode each file once, on every core (worker processes). An unreadable file gets no hash
    and its one-line reason in ``errors``; it never stops the pass."""
    paths = [str(p) for p in paths]
    rows = map_chunks(functools.partial(fingerprint_files, max_pixels=max_pixels), paths, "fingerprints", workers)
    packed = np.zeros((len(paths), *_packed_shape()), dtype=np.uint8)
    for i, (_, bits, _) in enumerate(rows):
        if bits is not None:
            packed[i] = bits.reshape(packed.shape[1:])
    errors = {paths[i]: error for i, (_, _, error) in enumerate(rows) if error is not None}
    return Fingerprints(paths, [digest for digest, _, _ in rows], packed, errors)


def _packed_shape() -> tuple[int, int]:
    return len(CROP_LEVELS), HASH_BITS // 8


def phash_hex(packed: np.ndarray) -> str:
    """All crop levels of one image (``Fingerprints.packed[i]``) as one hex string (for splits.csv)."""
    return np.ascontiguousarray(packed, dtype=np.uint8).tobytes().hex()


def phash_from_hex(text: str) -> np.ndarray | None:
    raw = np.frombuffer(bytes.fromhex(text), dtype=np.uint8) if text else np.zeros(0, np.uint8)
    n = len(CROP_LEVELS) * HASH_BITS
    if raw.size * 8 < n:
        return None
    return np.unpackbits(raw)[:n].astype(bool).reshape(len(CROP_LEVELS), HASH_BITS)


def near_pairs(a: np.ndarray, b: np.ndarray | None = None, max_bits: int = DEFAULT_NEAR_BITS) -> list[tuple[int, int, int]]:
    """``(i, j, distance)`` for images within ``max_bits``: of ``a`` among themselves (i < j) or
    between ``a`` and ``b``, full image against every crop level both ways. Found through a
    multi-index hash (``lungcls.data.dedup.hashindex``): the same pairs as comparing all of them."""
    return indexed_near_pairs(a, b, max_bits=max_bits)


def near_pairs_brute(a: np.ndarray, b: np.ndarray | None = None, max_bits: int = DEFAULT_NEAR_BITS,
                     chunk: int = 512) -> list[tuple[int, int, int]]:
    """``near_pairs`` by comparing every pair (time grows with the square): the reference that the
    index's recall is checked against. Hamming distances come from one matrix product per chunk
    (|x| + |y| - 2 x.y on 0/1 vectors), the min over full-vs-crop hashes both ways."""
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


def store_file(cache_dir: str | Path, max_pixels: int | None) -> Path:
    """The per-file fingerprint store of ``cache_dir`` (one per pixel limit: it decides what is unreadable)."""
    return Path(cache_dir) / f"fingerprints-v{FORMAT}-max{max_pixels}.npz"


def load_or_compute(paths: Sequence[str], cache_dir: str | Path | None = None, key: str | None = None,
                    max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Fingerprints:
    """Fingerprints, each read from the per-file store in ``cache_dir`` while its file's path, size
    and modification time are unchanged; only new or changed files are decoded (and then stored).
    ``key`` is not used (the store is keyed per file); it stays for callers that pass it."""
    paths = [str(p) for p in paths]
    if cache_dir is None:
        return compute_fingerprints(paths, max_pixels=max_pixels)
    file = store_file(cache_dir, max_pixels)
    sizes, mtimes = file_keys(paths)
    hit, cached = filestore.lookup(file, paths, sizes, mtimes, ("pixel_hash", "phash", "error"))
    hashes: list[str | None] = [None] * len(paths)
    packed = np.zeros((len(paths), *_packed_shape()), dtype=np.uint8)
    errors: dict[str, str] = {}
    for i, digest, bits, error in zip(np.flatnonzero(hit).tolist(), cached.get("pixel_hash", []), cached.get("phash", []),
                                      cached.get("error", [])):
        hashes[i] = str(digest) or None
        packed[i] = bits[: packed[i].size].reshape(packed.shape[1:])
        if error:
            errors[paths[i]] = str(error)
    todo = np.flatnonzero(~hit).tolist()
    if todo:
        log.info("fingerprints: %d of %d file(s) are new or changed; reading them (%s)", len(todo), len(paths), file)
        fresh = compute_fingerprints([paths[i] for i in todo], max_pixels=max_pixels)
        for k, i in enumerate(todo):
            hashes[i], packed[i] = fresh.pixel_hash[k], fresh.packed[k]
        errors.update(fresh.errors)
        filestore.update(file, fresh.paths, sizes[todo], mtimes[todo], {
            "pixel_hash": np.array([h or "" for h in fresh.pixel_hash], dtype=str),
            "phash": fresh.packed.reshape(len(todo), -1),
            "error": np.array([fresh.errors.get(p, "") for p in fresh.paths], dtype=str)})
    return Fingerprints(paths, hashes, packed, {p: errors[p] for p in paths if p in errors})
