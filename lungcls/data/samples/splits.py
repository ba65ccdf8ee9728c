"""Stratified train/val/test splits that are written with every run and can be reused.

A run writes ``splits.csv`` (``path,label,split`` plus each image's duplicate group, source and
fingerprints); evaluation reads it back (``dataset.splits_csv``) so a model is never scored on images
it was trained on. Images that share a group key (one patient, copies of one picture: see
``lungcls.data.dedup.duplicates.duplicate_groups``) land in the same split.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold, train_test_split

from lungcls.data.samples.csvtext import open_csv
from lungcls.data.samples.sample import Sample
from lungcls.errors import LungclsError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise LungclsError(
            f"dataset.val_fraction={val_fraction} and dataset.test_fraction={test_fraction} must be in [0, 1) "
            "and sum to less than 1"
        )


def _stratify_labels(labels: list[int], n_holdout: int) -> list[int] | None:
    """Stratify when every class can give at least one image to each side, else fall back to random."""
    counts = Counter(labels)
    if n_holdout >= len(counts) and min(counts.values()) >= 2:
        return labels
    return None


def _split_by_images(samples: list[Sample], val_fraction: float, test_fraction: float, seed: int) -> dict[str, str]:
    paths = [s.path for s in samples]
    labels = [s.label for s in samples]
    n = len(samples)
    assignment = {p: "train" for p in paths}
    holdout = val_fraction + test_fraction
    if holdout == 0 or n < 3:
        return assignment
    n_hold = max(1, round(n * holdout))
    rest, held, rest_y, held_y = train_test_split(
        paths, labels, test_size=n_hold, random_state=seed, stratify=_stratify_labels(labels, n_hold)
    )
    if test_fraction == 0:
        assignment.update({p: "val" for p in held})
        return assignment
    if val_fraction == 0:
        assignment.update({p: "test" for p in held})
        return assignment
    n_test = max(1, round(len(held) * test_fraction / holdout))
    if n_test >= len(held):
        assignment.update({p: "test" for p in held})
        return assignment
    val, test = train_test_split(
        held, test_size=n_test, random_state=seed, stratify=_stratify_labels(held_y, min(n_test, len(held) - n_test))
    )
    assignment.update({p: "val" for p in val})
    assignment.update({p: "test" for p in test})
    return assignment


def _split_by_groups(samples: list[Sample], groups: list[str], val_fraction: float, test_fraction: float,
                     seed: int) -> dict[str, str]:
    """Group-aware stratified split: folds of StratifiedGroupKFold approximate the fractions."""
    paths = [s.path for s in samples]
    labels = [s.label for s in samples]
    assignment = {p: "train" for p in paths}
    remaining = list(range(len(samples)))
    for name, frac_of_total in (("test", test_fraction), ("val", val_fraction)):
        if frac_of_total == 0 or len(set(groups[i] for i in remaining)) < 2:
            continue
        share = frac_of_total / (sum(1 for _ in remaining) / len(samples))
        n_splits = max(2, round(1 / share))
        n_groups = len(set(groups[i] for i in remaining))
        n_splits = min(n_splits, n_groups)
        y = [labels[i] for i in remaining]
        g = [groups[i] for i in remaining]
        try:
            cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            _, held = next(cv.split(remaining, y, g))
        except ValueError:  # too few patients per class to stratify: plain group-aware split
            cv = GroupShuffleSplit(n_splits=1, test_size=min(0.5, share), random_state=seed)
            _, held = next(cv.split(remaining, y, g))
        held_idx = {remaining[i] for i in held}
        for i in held_idx:
            assignment[paths[i]] = name
        remaining = [i for i in remaining if i not in held_idx]
    return assignment


def make_splits(samples: Sequence[Sample], val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 1,
                groups: Sequence[str] | None = None) -> dict[str, str]:
    """Map each image path to train/val/test: stratified by class, images sharing a group key in
    one split, honouring splits that a manifest already fixes (a free image whose group has a fixed
    member follows it). ``groups``: a key per sample (default: the patient, else the path)."""
    _check_fractions(val_fraction, test_fraction)
    keys = list(groups) if groups is not None else [s.patient or s.path for s in samples]
    fixed_split_of: dict[str, str] = {}
    for s, key in zip(samples, keys):
        if s.split:
            fixed_split_of.setdefault(key, s.split)
    fixed = {s.path: s.split or fixed_split_of[k] for s, k in zip(samples, keys) if s.split or k in fixed_split_of}
    free = [(s, k) for s, k in zip(samples, keys) if s.path not in fixed]
    if not free:
        return fixed
    free_samples, free_keys = [s for s, _ in free], [k for _, k in free]
    if len(set(free_keys)) < len(free_keys):
        assignment = _split_by_groups(free_samples, free_keys, val_fraction, test_fraction, seed)
    else:
        assignment = _split_by_images(free_samples, val_fraction, test_fraction, seed)
    assignment.update(fixed)
    return assignment


def write_splits_csv(path: str | Path, samples: Sequence[Sample], assignment: dict[str, str], class_names: Sequence[str],
                     extra: Mapping[str, Sequence[Any]] | None = None) -> None:
    """``path,label,split`` and, per image, the ``extra`` columns (duplicate group, source, hashes)."""
    extra = dict(extra or {})
    with Path(path).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", *extra])
        for i, s in enumerate(samples):
            w.writerow([s.path, class_names[s.label], assignment[s.path], *(col[i] for col in extra.values())])


def read_splits_rows(path: str | Path) -> list[dict[str, str]]:
    """Every row of a run's splits.csv (checked as ``read_splits_csv`` does)."""
    read_splits_csv(path)
    with open_csv(path, "splits file") as f:
        return list(csv.DictReader(f))


def read_splits_csv(path: str | Path) -> dict[str, str]:
    """``{image path: split}`` from a run's splits.csv."""
    p = Path(path)
    if not p.is_file():
        raise LungclsError(f"splits file {p} does not exist; point dataset.splits_csv at a run's splits.csv")
    with open_csv(p, "splits file") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"path", "split"} <= set(rows[0]):
        raise LungclsError(f"splits file {p} needs columns path,label,split (as written by lungcls-train)")
    bad = {r["split"] for r in rows} - set(SPLITS)
    if bad:
        raise LungclsError(f"splits file {p} has unknown split names {sorted(bad)}; expected train, val, test")
    return {r["path"]: r["split"] for r in rows}


def apply_splits_csv(samples: Sequence[Sample], splits_csv: str | Path) -> dict[str, str]:
    """Reuse a saved split: ``{path: split}`` for the images the file knows. Images it does not know
    are left out (and counted in the log), never silently added to training."""
    saved = read_splits_csv(splits_csv)
    assignment = {s.path: saved[s.path] for s in samples if s.path in saved}
    unknown = [s.path for s in samples if s.path not in saved]
    if unknown and not assignment:
        raise LungclsError(
            f"none of the {len(samples)} images are in {splits_csv} (e.g. {unknown[0]}); the paths must match "
            "those of the training run: launch from the same folder with the same dataset.root"
        )
    if unknown:
        log.warning("%d image(s) are not in %s and are left out (e.g. %s)", len(unknown), splits_csv, unknown[0])
    return assignment
