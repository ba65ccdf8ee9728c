"""One pass over the audited files: each image is decoded once and yields its fingerprints (pixel
hash, perceptual hashes), its statistics (size, mode, bit depth, mean and border intensity) and the
features the shortcut probe sees. A file that cannot be read is recorded, never a crash.

The pass runs on every core (worker processes: decoding and hashing hold the GIL part of the time),
and with ``dataset.cache_dir`` each file's results are kept keyed by its path, size and modification
time, so auditing a data set that grew reads only the new files. (The store is per probe region and
border width; a lung mask edited in place without touching its image is not noticed: clear the
cache folder then.)"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lungcls.audit.probe import PROBE_SIZE, region_features, region_mask
from lungcls.data.dedup import filestore
from lungcls.data.dedup.filestore import file_keys
from lungcls.data.dedup.fingerprints import CROP_LEVELS, HASH_BITS, Fingerprints, fingerprint_array
from lungcls.data.pixels.images import load_mask, read_gray_and_mode, resize_gray
from lungcls.data.samples.sample import Sample
from lungcls.data.dedup.parallel import map_chunks
from lungcls.errors import LungclsError

SCAN_FORMAT = 1  # the per-file store of the read pass (dataset.cache_dir)
BIT_DEPTH = {"1": 1, "L": 8, "P": 8, "LA": 8, "RGB": 8, "RGBA": 8, "CMYK": 8, "I;16": 16, "I;16B": 16, "I;16L": 16, "I": 32, "F": 32}


@dataclass
class Scan:
    """Per image (in sample order): fingerprints, statistics (None when unreadable) and features."""

    fingerprints: Fingerprints
    stats: list[dict | None]
    features: np.ndarray  # [N, F] float32; rows of unreadable images are zero
    region: str  # "outside_lungs" or "border"
    errors: dict[int, str] = field(default_factory=dict)


def border_band(shape: tuple[int, int], frac: float) -> np.ndarray:
    """True on the outer band of width ``frac`` of each side."""
    h, w = shape
    bh, bw = max(1, int(round(h * frac))), max(1, int(round(w * frac)))
    band = np.ones(shape, dtype=bool)
    band[bh : h - bh, bw : w - bw] = False
    return band


def _stats(gray: np.ndarray, mode: str, border_frac: float) -> dict:
    return {
        "width": int(gray.shape[1]),
        "height": int(gray.shape[0]),
        "mode": mode,
        "bit_depth": BIT_DEPTH.get(mode, 8),
        "mean": float(gray.mean()),
        "border_mean": float(gray[border_band(gray.shape, border_frac)].mean()),
    }


def _one(sample: Sample, region: str, border_frac: float):
    gray, mode = read_gray_and_mode(sample.path)
    digest, bits = fingerprint_array(gray)
    mask = load_mask(sample.mask, PROBE_SIZE) if region == "outside_lungs" else None
    keep = region_mask(mask, border_frac)
    return digest, bits, _stats(gray, mode, border_frac), region_features(resize_gray(gray, PROBE_SIZE), keep)


def choose_region(samples: Sequence[Sample], wanted: str) -> str:
    """``auto``: outside the lung masks when every image has one, else the border band."""
    if wanted not in ("auto", "border", "outside_lungs"):
        raise LungclsError(f"audit.probe.region={wanted} is not one of auto, border, outside_lungs")
    has_masks = bool(samples) and all(s.mask for s in samples)
    if wanted == "outside_lungs" and not has_masks:
        raise LungclsError("audit.probe.region=outside_lungs needs a lung mask for every image (<Class>/masks/); use border")
    return wanted if wanted != "auto" else ("outside_lungs" if has_masks else "border")


STAT_COLUMNS = ("width", "height", "mode", "bit_depth", "mean", "border_mean")


def scan_files(samples: Sequence[Sample], region: str, border_frac: float) -> list[tuple]:
    """What one worker sends back per sample: pixel hash, packed perceptual-hash bits, statistics,
    probe features and the error (None when read)."""
    out = []
    for sample in samples:
        try:
            digest, bits, stats, feats = _one(sample, region, border_frac)
            out.append((digest, np.packbits(bits), stats, feats, None))
        except LungclsError as e:
            out.append((None, None, None, None, str(e)))
    return out


def _stored(file: Path, paths: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple]]:
    """The rows of the per-file store still valid for ``paths`` (see ``lungcls.data.dedup.filestore``)."""
    sizes, mtimes = file_keys(paths)
    hit, cols = filestore.lookup(file, paths, sizes, mtimes, ("pixel_hash", "phash", "features", "error", *STAT_COLUMNS))
    rows = []
    for k in range(int(hit.sum())):
        if cols["error"][k]:
            rows.append((None, None, None, None, str(cols["error"][k])))
            continue
        stats = {c: cols[c][k].item() for c in STAT_COLUMNS}
        rows.append((str(cols["pixel_hash"][k]), cols["phash"][k], stats, cols["features"][k], None))
    return hit, sizes, mtimes, rows


def _store(file: Path, paths: list[str], sizes: np.ndarray, mtimes: np.ndarray, rows: list[tuple], width: int) -> None:
    n_bytes = -(-len(CROP_LEVELS) * HASH_BITS // 8)
    blank = {"width": 0, "height": 0, "mode": "", "bit_depth": 0, "mean": 0.0, "border_mean": 0.0}
    stats = [r[2] or blank for r in rows]
    filestore.update(file, paths, sizes, mtimes, {
        "pixel_hash": np.array([r[0] or "" for r in rows], dtype=str),
        "phash": np.stack([r[1] if r[1] is not None else np.zeros(n_bytes, np.uint8) for r in rows]),
        "features": np.stack([r[3] if r[3] is not None else np.zeros(width, np.float32) for r in rows]).astype(np.float32),
        "error": np.array([r[4] or "" for r in rows], dtype=str),
        **{c: np.array([st[c] for st in stats]) for c in STAT_COLUMNS}})


def read_all(samples: Sequence[Sample], region: str, border_frac: float, cache_dir: str | None, workers: int | None) -> list[tuple]:
    """``scan_files`` for every sample: rows of unchanged files from the store in ``cache_dir``,
    the others read on every core (and then stored)."""
    read = functools.partial(scan_files, region=region, border_frac=border_frac)
    if not cache_dir:
        return map_chunks(read, list(samples), "audit: read", workers)
    file = Path(cache_dir) / f"audit-scan-v{SCAN_FORMAT}-{region}-border{border_frac:g}.npz"
    paths = [s.path for s in samples]
    hit, sizes, mtimes, cached = _stored(file, paths)
    todo = np.flatnonzero(~hit).tolist()
    fresh = map_chunks(read, [samples[i] for i in todo], "audit: read", workers) if todo else []
    rows: list[tuple] = [()] * len(samples)
    for i, row in zip(np.flatnonzero(hit).tolist(), cached):
        rows[i] = row
    for i, row in zip(todo, fresh):
        rows[i] = row
    width = next((len(r[3]) for r in rows if r[3] is not None), 0)
    if todo:
        _store(file, [paths[i] for i in todo], sizes[todo], mtimes[todo], fresh, width)
    return rows


def scan(samples: Sequence[Sample], region: str = "auto", border_frac: float = 0.1, workers: int | None = None,
         cache_dir: str | None = None) -> Scan:
    """Read every sample once, on every core (worker processes); with ``cache_dir``, files whose
    path, size and modification time are unchanged since an earlier audit are not read again."""
    region = choose_region(samples, region)
    n = len(samples)
    rows = read_all(samples, region, border_frac, cache_dir, workers)
    packed = np.zeros((n, len(CROP_LEVELS), HASH_BITS // 8), dtype=np.uint8)
    for i, row in enumerate(rows):
        if row[1] is not None:
            packed[i] = row[1][: packed[i].size].reshape(packed.shape[1:])
    errors = {i: row[4] for i, row in enumerate(rows) if row[4] is not None}
    width = next((len(r[3]) for r in rows if r[3] is not None), 0)
    features = np.zeros((n, width), dtype=np.float32)
    for i, row in enumerate(rows):
        if row[3] is not None:
            features[i] = row[3]
    fp = Fingerprints([s.path for s in samples], [r[0] for r in rows], packed, {samples[i].path: e for i, e in errors.items()})
    return Scan(fp, [r[2] for r in rows], features, region, errors)
