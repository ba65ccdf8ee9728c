"""``lungcls-bench --near-duplicates N``: the near-duplicate search on N synthetic perceptual hashes
distributed like chest X-ray hashes, with planted near pairs; seconds, pairs found, recall against
comparing all pairs on a subset (which must be 1.0), and faiss's ``IndexBinaryMultiHash`` timed on
the same codes beside lungcls's index (the library it was measured against).

Uniform random bits would flatter any index (no two codes share a band by chance). Chest films
resemble each other: many of the 144 DCT-hash bits are nearly constant, and distinct films come
within 16 bits. So the codes are drawn around measured hashes: the phantom (the demo's chest X-ray
generator) is rendered and hashed at every crop level (or the X-rays under ``--templates``, e.g. a
sample of the user's own data), and each synthetic image is one of those
hashes with a share ``rho`` of its bits redrawn from that bit's measured frequency (the same flips
applied to every crop level, so crops stay as far from the full image as they are in the phantom).
``rho`` is the smallest share at which two codes drawn from one template are as far apart as
distinct phantom films are (1% quantile of their distance), so each code is a distinct film. Planted pairs are copies at 0 to ``max_bits`` bits (exactly the threshold included),
half of them matched full image against a crop level.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from lungcls.benchmark.data import ensure_bench_dataset
from lungcls.data.dedup.fingerprints import compute_fingerprints, near_pairs, near_pairs_brute
from lungcls.data.dedup.hashindex import Plan, best_per_pair, bit_entropy, bit_order
from lungcls.data.pixels.images import IMAGE_EXTENSIONS
from lungcls.data.samples.sample import MASK_FOLDERS
from lungcls.errors import LungclsError, require_extra

PHANTOM_IMAGES = 400
PHANTOM_SIZE = 128
RHOS = tuple(np.round(np.arange(0.1, 1.01, 0.05), 2))


def phantom_hashes(gen_dir: str, images: int = PHANTOM_IMAGES, size: int = PHANTOM_SIZE) -> np.ndarray:
    """Perceptual hashes [n, levels, bits] of a phantom set rendered (once) under ``gen_dir``."""
    root = ensure_bench_dataset(Path(gen_dir) / f"bench-{images}x{size}", images, size)
    paths = sorted(str(p) for p in Path(root).glob("*/images/*.png"))
    return compute_fingerprints(paths).phash


def template_hashes(folder: str) -> np.ndarray:
    """Perceptual hashes [n, levels, bits] of every image under ``folder`` (any layout; mask
    folders are skipped)."""
    root = Path(folder)
    if not root.is_dir():
        raise LungclsError(f"--templates {folder}: no such folder; give a folder of X-rays (any layout) or leave it out for the phantom")
    paths = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                   and not any(part in MASK_FOLDERS for part in p.relative_to(root).parts[:-1]))  # X-rays, not masks
    fingerprints = compute_fingerprints(paths)
    readable = np.array([h is not None for h in fingerprints.pixel_hash], dtype=bool)
    if readable.sum() < 20:
        raise LungclsError(f"--templates {folder}: {int(readable.sum())} readable images; give a folder with at least 20 X-rays")
    return fingerprints.phash[readable]


def faiss_near_pairs(codes: np.ndarray, max_bits: int) -> list[tuple[int, int, int]]:
    """The same search on faiss's ``IndexBinaryMultiHash`` (every band probed within the same flips,
    0, 1 or 2, whichever makes the fewest probes plus expected candidates), for the comparison."""
    import faiss

    n, levels, bits = codes.shape
    entropy = float(bit_entropy(codes[:, 0, :]).sum())
    best = None
    for flips in (0, 1, 2):
        tables = max_bits // (flips + 1) + 1
        band = min(bits // tables, 62)
        if band <= flips:
            continue
        probes = sum(math.comb(band, k) for k in range(flips + 1))
        cost = tables * probes * (1.0 + n * levels / 2.0 ** (entropy * band / bits))
        if best is None or cost < best[0]:
            best = (cost, tables, band, flips)
    _, tables, band, flips = best
    order = bit_order(bit_entropy(codes[:, 0, :]), Plan(bits, max_bits, (band,) * tables, (flips,) * tables))
    index = faiss.IndexBinaryMultiHash(bits + (-bits) % 8, tables, band)
    index.nflip = flips
    index.add(np.packbits(codes.reshape(-1, bits)[:, order], axis=1, bitorder="little"))
    lims, dist, ids = index.range_search(np.packbits(codes[:, 0, :][:, order], axis=1, bitorder="little"), max_bits + 1)
    i = np.repeat(np.arange(n), np.diff(lims.astype(np.int64)))
    j = ids.astype(np.int64) // levels
    keep = i != j
    return best_per_pair(np.minimum(i, j)[keep], np.maximum(i, j)[keep], dist[keep].astype(np.int32), n)


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
    template films (1% quantile of their distance at least the templates'), so that codes are
    distinct films around the measured ones, not copies of them."""
    target = pair_quantiles(templates[:, 0, :], rng)
    rho, sib = 1.0, 0.0
    for r in RHOS:
        sib = sibling_q01(templates, float(r), rng)
        if sib >= target[1]:
            rho = float(r)
            break
    got = pair_quantiles(draw_codes(templates, 4000, rho, rng)[:, 0, :], rng)
    return rho, {"templates_median_bits": target[0], "templates_q01_bits": target[1], "synthetic_median_bits": got[0],
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


def run_near_duplicates(n: int, max_bits: int, gen_dir: str, subset: int = 20000, seed: int = 0,
                        templates_dir: str | None = None, faiss_codes: int = 100000) -> dict[str, Any]:
    """What ``near_duplicates.json`` holds."""
    if n < 2:
        raise LungclsError(f"--near-duplicates {n}: give at least 2 codes (e.g. --near-duplicates 1000000)")
    if faiss_codes < 0:
        raise LungclsError(f"--faiss-codes {faiss_codes}: give 0 (no comparison) or more codes (e.g. 100000)")
    if faiss_codes:
        require_extra("faiss", "bench")
    rng = np.random.default_rng(seed)
    templates = phantom_hashes(gen_dir) if templates_dir is None else template_hashes(templates_dir)
    rho, fit = calibrate(templates, rng)
    codes = draw_codes(templates, n, rho, rng)
    subset = min(subset, n)
    planted = plant_pairs(codes, max(1, n // 100), max_bits, subset, rng)
    print(f"[bench] {n:,} synthetic codes (bit statistics of {templates_dir or 'the phantom'}, rho={rho}), {planted:,} planted pairs; searching ...", flush=True)
    packed = np.packbits(codes, axis=-1)  # as the duplicate check holds them (lungcls.data.dedup.fingerprints)
    t0 = time.perf_counter()
    pairs = near_pairs(packed, max_bits=max_bits)
    seconds = time.perf_counter() - t0
    print(f"[bench] {len(pairs):,} pairs within {max_bits} bits in {seconds:.1f} s; checking {subset:,} codes against all pairs ...", flush=True)
    t1 = time.perf_counter()
    brute = set(near_pairs_brute(codes[:subset], max_bits=max_bits))
    brute_seconds = time.perf_counter() - t1
    inside = {p for p in pairs if p[1] < subset}
    recall = len(brute & inside) / len(brute) if brute else 1.0
    compared: dict[str, Any] = {}
    if faiss_codes:
        part = codes[: min(faiss_codes, n)]
        if len(part) == n:  # the timed search above already ran on exactly these codes
            ours, ours_seconds = pairs, seconds
        else:
            t2 = time.perf_counter()
            ours = near_pairs(packed[: len(part)], max_bits=max_bits)
            ours_seconds = time.perf_counter() - t2
        t3 = time.perf_counter()
        theirs = faiss_near_pairs(part, max_bits)
        faiss_seconds = time.perf_counter() - t3
        compared = {"codes": len(part), "lungcls_seconds": round(ours_seconds, 2), "faiss_seconds": round(faiss_seconds, 2),
                    "faiss_over_lungcls": round(faiss_seconds / max(ours_seconds, 1e-9), 2), "same_pairs": ours == theirs}
        print(f"[bench] faiss IndexBinaryMultiHash on the first {len(part):,} codes: {faiss_seconds:.1f} s, lungcls {ours_seconds:.1f} s "
              f"(faiss / lungcls = {compared['faiss_over_lungcls']}); same pairs: {compared['same_pairs']}", flush=True)
    return {"codes": n, "levels": int(codes.shape[1]), "bits": int(codes.shape[2]), "max_bits": max_bits,
            "seconds": round(seconds, 2), "pairs": len(pairs), "planted": planted, "recall": recall,
            "recall_subset": subset, "recall_pairs": len(brute), "extra_pairs_in_subset": len(inside - brute),
            "brute_force_seconds_subset": round(brute_seconds, 2), "rho": rho, "calibration": fit,
            "templates": {"source": templates_dir or f"phantom ({PHANTOM_SIZE} px)", "images": int(len(templates))},
            "faiss": compared}
