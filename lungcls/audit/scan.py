"""One pass over the audited files: each image is decoded once and yields its fingerprints (pixel
hash, perceptual hashes), its statistics (size, mode, bit depth, mean and border intensity) and the
features the shortcut probe sees. A file that cannot be read is recorded, never a crash."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from lungcls.audit.probe import PROBE_SIZE, region_features, region_mask
from lungcls.data.fingerprints import CROP_LEVELS, HASH_BITS, Fingerprints, fingerprint_array
from lungcls.data.images import load_mask, read_gray_and_mode, resize_gray
from lungcls.data.layouts import Sample
from lungcls.errors import LungclsError

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


def scan(samples: Sequence[Sample], region: str = "auto", border_frac: float = 0.1, workers: int | None = None) -> Scan:
    """Read every sample once, on a thread pool (PIL and numpy release the GIL)."""
    region = choose_region(samples, region)
    n = len(samples)
    hashes: list[str | None] = [None] * n
    bits = np.zeros((n, len(CROP_LEVELS), HASH_BITS), dtype=bool)
    stats: list[dict | None] = [None] * n
    feats: list[np.ndarray | None] = [None] * n
    errors: dict[int, str] = {}

    def run(i: int) -> None:
        try:
            hashes[i], bits[i], stats[i], feats[i] = _one(samples[i], region, border_frac)
        except LungclsError as e:
            errors[i] = str(e)

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(run, range(n)))
    width = next((len(f) for f in feats if f is not None), 0)
    features = np.zeros((n, width), dtype=np.float32)
    for i, f in enumerate(feats):
        if f is not None:
            features[i] = f
    fp = Fingerprints([s.path for s in samples], hashes, bits, {samples[i].path: e for i, e in errors.items()})
    return Scan(fp, stats, features, region, errors)
