"""Is this external data really external? Recognise the images a checkpoint was trained on among
the images about to be scored: the same file, the same pixels under another name or format, or a
near copy (resized, re-encoded, slightly cropped). Public chest X-ray collections reuse each other's
images, so "another folder" is no guarantee.

A training run writes each image's pixel hash and perceptual hash to ``splits.csv``; this module
reads the training rows back and matches them against fingerprints of the scored images.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lungcls.data.dedup.fingerprints import Fingerprints, near_pairs, phash_from_hex
from lungcls.data.samples.splits import read_splits_rows

log = logging.getLogger(__name__)

EXAMPLES = 20


@dataclass
class TrainingImages:
    """The training split of one or more runs: resolved paths, pixel hashes, perceptual hashes."""

    paths: set[str]
    pixel_hashes: set[str]
    phash: np.ndarray  # [M, levels, bits] of the rows that have one
    hashed: bool  # False for runs written before fingerprints were recorded: path matching only


def read_training_images(splits_files: Sequence[str | Path]) -> TrainingImages:
    """The ``train`` rows of the given splits.csv files."""
    paths: set[str] = set()
    hashes: set[str] = set()
    bits: list[np.ndarray] = []
    hashed = True
    for file in splits_files:
        rows = [r for r in read_splits_rows(file) if r["split"] == "train"]
        paths.update(str(Path(r["path"]).resolve()) for r in rows)
        hashed = hashed and bool(rows) and "pixel_hash" in rows[0]
        hashes.update(r["pixel_hash"] for r in rows if r.get("pixel_hash"))
        for r in rows:
            b = phash_from_hex(r.get("phash") or "")
            if b is not None:
                bits.append(b)
    phash = np.stack(bits) if bits else np.zeros((0, 1, 1), dtype=bool)
    return TrainingImages(paths, hashes, phash, hashed)


def match_training_images(paths: Sequence[str], fingerprints: Fingerprints | None, training: TrainingImages,
                          near_bits: int | None) -> dict[str, str]:
    """``{scored path: how it matches}``: ``same file``, ``identical pixels`` or ``near duplicate``."""
    found: dict[str, str] = {}
    for p in paths:
        if str(Path(p).resolve()) in training.paths:
            found[p] = "same file"
    if fingerprints is None:
        return found
    for p, h in zip(fingerprints.paths, fingerprints.pixel_hash):
        if h and h in training.pixel_hashes:
            found.setdefault(p, "identical pixels")
    if near_bits is not None and len(training.phash) and training.phash.shape[1:] == fingerprints.bits_shape():
        todo = [i for i, p in enumerate(fingerprints.paths) if p not in found and fingerprints.pixel_hash[i]]
        if todo:
            for a, _, _ in near_pairs(fingerprints.packed[todo], np.packbits(training.phash, axis=-1), max_bits=int(near_bits)):
                found.setdefault(fingerprints.paths[todo[a]], "near duplicate")
    return found


def overlap_record(matches: dict[str, str], scored: int, excluded: bool, training: TrainingImages,
                   splits_files: Sequence[str | Path]) -> dict[str, Any]:
    """What metrics.json and the report say about training images in the scored data."""
    kinds = list(matches.values())
    return {
        "checked_against": [str(Path(f).resolve()) for f in splits_files],
        "scored_before_exclusion": scored,
        "training_images_found": len(matches),
        "same_file": kinds.count("same file"),
        "identical_pixels": kinds.count("identical pixels"),
        "near_duplicates": kinds.count("near duplicate"),
        "excluded": excluded,
        "pixel_matching": training.hashed,
        "examples": sorted(matches)[:EXAMPLES],
    }


def overlap_message(record: dict[str, Any], what: str, setting: str) -> str | None:
    """One line for the console, or None when no training image was found."""
    n = record["training_images_found"]
    if not n:
        return None
    how = (f"{record['same_file']} same file, {record['identical_pixels']} identical pixels, "
           f"{record['near_duplicates']} near duplicates")
    if record["excluded"]:
        return (f"left out {n} of {record['scored_before_exclusion']} {what} that the checkpoint was trained on "
                f"({how}); {setting}=false keeps them")
    return (f"WARNING: {n} of {record['scored_before_exclusion']} {what} are training images of the checkpoint ({how}) "
            f"and are scored ({setting}=false): the result is not external")
