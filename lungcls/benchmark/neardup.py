"""``lungcls-bench --near-duplicates N``: the near-duplicate search on N synthetic perceptual hashes
distributed like chest X-ray hashes, with planted near pairs; seconds, pairs found, and recall
against comparing all pairs on a subset (which must be 1.0).

Uniform random bits would flatter any index (no two codes share a band by chance). Chest films
resemble each other: many of the 144 DCT-hash bits are nearly constant, and distinct films come
within 16 bits. So the codes are drawn around measured hashes: the phantom (the demo's chest X-ray
generator) is rendered and hashed at every crop level, and each synthetic image is one of those
hashes with a share ``rho`` of its bits redrawn from that bit's measured frequency (the same flips
applied to every crop level, so crops stay as far from the full image as they are in the phantom).
``rho`` is the smallest share at which two codes drawn from one template are as far apart as
distinct phantom films are (1% quantile of their distance), so each code is a distinct film. Planted pairs are copies at 0 to ``max_bits`` bits (exactly the threshold included),
half of them matched full image against a crop level.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from lungcls.benchmark.data import ensure_bench_dataset
from lungcls.data.fingerprints import compute_fingerprints, near_pairs, near_pairs_brute
from lungcls.errors import LungclsError

PHANTOM_IMAGES = 400
PHANTOM_SIZE = 128
RHOS = tuple(np.round(np.arange(0.1, 1.01, 0.05), 2))


def phantom_hashes(gen_dir: str, images: int = PHANTOM_IMAGES, size: int = PHANTOM_SIZE) -> np.ndarray:
    """Perceptual hashes [n, levels, bits] of a phantom set rendered (once) under ``gen_dir``."""
    root = ensure_bench_dataset(Path(gen_dir) / f"bench-{images}x{size}", images, size)
    paths = sorted(str(p) for p in Path(root).glob("*/images/*.png"))
    return compute_fingerprints(paths).phash


def pair_quantiles(full: np.ndarray, rng: np.random.Generator, pairs: int = 20000) -> tuple[float, float]:
    """Median and 1% quantile of the Hamming distance between random distinct rows."""
    i, j = rng.integers(0, len(full), pairs), rng.integers(0, len(full), pairs)
    keep = i != j
    d = (full[i[keep]] != full[j[keep]]).sum(axis=1)
    return float(np.median(d)), float(np.quantile(d, 0.01))


def draw_codes(templates: np.ndarray, n: int, rho: float, rng: np.random.Generator,
               which: np.ndarray | None = None) -> np.ndarray:
    """``n`` codes: a random template each (or ``templates[which]``), a share ``rho`` of bits
    redrawn from the templates' bit frequencies, the same flips on every level."""
    freq = templates[:, 0, :].mean(axis=0)
    which = rng.integers(0, len(templates), n) if which is None else which
    out = np.empty((n, *templates.shape[1:]), dtype=bool)
    for start in range(0, n, 65536):
        m = min(65536, n - start)
        base = templates[which[start : start + m]]
        redraw = rng.random((m, base.shape[2])) < rho
        flips = redraw & ((rng.random((m, base.shape[2])) < freq) != base[:, 0, :])
        out[start : start + m] = base ^ flips[:, None, :]
    return out


def sibling_q01(templates: np.ndarray, rho: float, rng: np.random.Generator, pairs: int = 4000) -> float:
    """1% quantile of the distance between two codes drawn from the same template."""
    which = rng.integers(0, len(templates), pairs)
    a = draw_codes(templates, pairs, rho, rng, which)
    b = draw_codes(templates, pairs, rho, rng, which)
    return float(np.quantile((a[:, 0] != b[:, 0]).sum(axis=1), 0.01))


def calibrate(templates: np.ndarray, rng: np.random.Generator) -> tuple[float, dict[str, float]]:
    """The smallest ``rho`` at which two codes drawn from one template are as far apart as distinct
    phantom films (1% quantile of their distance at least the phantom's), so that codes are distinct
    films around the measured ones, not copies of them."""
    target = pair_quantiles(templates[:, 0, :], rng)
    rho, sib = 1.0, 0.0
    for r in RHOS:
        sib = sibling_q01(templates, float(r), rng)
        if sib >= target[1]:
            rho = float(r)
            break
    got = pair_quantiles(draw_codes(templates, 4000, rho, rng)[:, 0, :], rng)
    return rho, {"phantom_median_bits": target[0], "phantom_q01_bits": target[1], "synthetic_median_bits": got[0],
                 "synthetic_q01_bits": got[1], "same_template_q01_bits": sib}


def plant_pairs(codes: np.ndarray, count: int, max_bits: int, subset: int, rng: np.random.Generator) -> int:
    """Overwrite ``count`` codes with copies of others at 0..``max_bits`` bits (half inside the
    first ``subset`` codes, so the recall check sees them); every other copy is matched through a
    crop level. Returns how many were planted."""
    bits, levels = codes.shape[2], codes.shape[1]
    for k in range(count):
        hi = subset if k % 2 == 0 else len(codes)
        i, j = rng.choice(hi, 2, replace=False)
        d = k % (max_bits + 1)
        flip = np.zeros(bits, dtype=bool)
        flip[rng.choice(bits, d, replace=False)] = True
        codes[j] = codes[i] ^ flip
        if k % 4 == 1:
            codes[j, 0] = codes[i, 1 + k % (levels - 1)] ^ flip
    return count


def run_near_duplicates(n: int, max_bits: int, gen_dir: str, subset: int = 20000, seed: int = 0) -> dict[str, Any]:
    """What ``near_duplicates.json`` holds."""
    if n < 2:
        raise LungclsError(f"--near-duplicates {n}: give at least 2 codes (e.g. --near-duplicates 1000000)")
    rng = np.random.default_rng(seed)
    templates = phantom_hashes(gen_dir)
    rho, fit = calibrate(templates, rng)
    codes = draw_codes(templates, n, rho, rng)
    subset = min(subset, n)
    planted = plant_pairs(codes, max(1, n // 100), max_bits, subset, rng)
    print(f"[bench] {n:,} synthetic codes (phantom bit statistics, rho={rho}), {planted:,} planted pairs; searching ...", flush=True)
    t0 = time.perf_counter()
    pairs = near_pairs(codes, max_bits=max_bits)
    seconds = time.perf_counter() - t0
    print(f"[bench] {len(pairs):,} pairs within {max_bits} bits in {seconds:.1f} s; checking {subset:,} codes against all pairs ...", flush=True)
    t1 = time.perf_counter()
    brute = set(near_pairs_brute(codes[:subset], max_bits=max_bits))
    brute_seconds = time.perf_counter() - t1
    inside = {p for p in pairs if p[1] < subset}
    recall = len(brute & inside) / len(brute) if brute else 1.0
    return {"codes": n, "levels": int(codes.shape[1]), "bits": int(codes.shape[2]), "max_bits": max_bits,
            "seconds": round(seconds, 2), "pairs": len(pairs), "planted": planted, "recall": recall,
            "recall_subset": subset, "recall_pairs": len(brute), "extra_pairs_in_subset": len(inside - brute),
            "brute_force_seconds_subset": round(brute_seconds, 2), "rho": rho, "calibration": fit,
            "phantom": {"images": int(len(templates)), "size": PHANTOM_SIZE}}
