"""Duplicate images in a data set: groups of identical pictures (exact), pairs of near-identical
ones, the groups whose copies carry different labels (label conflicts), and the grouping that keeps
every copy of a picture (and every image of a patient) in one split.

A copy of a test image in the training split lets a model score its own training data; a copy filed
under two classes teaches it noise. Both happen in public chest X-ray collections, which were
assembled from overlapping sources. ``duplicate_groups`` is the one function the split code (and
k-fold splits) use to keep such images together.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lungcls.data.dedup.fingerprints import Fingerprints, near_pairs
from lungcls.data.samples.sample import Sample
from lungcls.data.settings import DatasetSettings
from lungcls.errors import LungclsError

log = logging.getLogger(__name__)



class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)

    def components(self) -> list[list[int]]:
        out: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            out.setdefault(self.find(i), []).append(i)
        return [members for members in out.values() if len(members) > 1]


@dataclass
class Duplicates:
    """Indices into the sample list: ``exact`` groups (same decoded pixels, or one file listed
    twice), ``near`` pairs ``(i, j, bits)`` that are not exact copies, and ``groups``: exact and
    near duplicates joined (connected components of two or more images)."""

    exact: list[list[int]] = field(default_factory=list)
    near: list[tuple[int, int, int]] = field(default_factory=list)
    groups: list[list[int]] = field(default_factory=list)

    def group_of(self, n: int) -> list[int]:
        """Per sample: the index of its group in ``groups``, -1 when it has no copy."""
        out = [-1] * n
        for g, members in enumerate(self.groups):
            for i in members:
                out[i] = g
        return out

    def near_groups(self) -> list[list[int]]:
        """The groups held together by at least one near (not exact) pair."""
        linked = {i for i, _, _ in self.near}
        return [g for g in self.groups if linked & set(g)]


def find_duplicates(fingerprints: Fingerprints, near_bits: int | None) -> Duplicates:
    """Exact groups by pixel hash (unreadable files only match their own path), near pairs within
    ``near_bits`` (None: exact only), and the groups both form."""
    n = len(fingerprints.paths)
    uf = _UnionFind(n)
    by_key: dict[str, list[int]] = {}
    for i, (path, digest) in enumerate(zip(fingerprints.paths, fingerprints.pixel_hash)):
        by_key.setdefault(digest or f"path:{path}", []).append(i)
    exact = [members for members in by_key.values() if len(members) > 1]
    for members in exact:
        for j in members[1:]:
            uf.union(members[0], j)
    near: list[tuple[int, int, int]] = []
    if near_bits is not None and n > 1:
        readable = [i for i, ok in enumerate(fingerprints.readable()) if ok]
        pairs = near_pairs(fingerprints.packed[readable], max_bits=int(near_bits))
        for a, b, bits in pairs:
            i, j = readable[a], readable[b]
            if fingerprints.pixel_hash[i] != fingerprints.pixel_hash[j]:
                near.append((i, j, bits))
                uf.union(i, j)
    return Duplicates(exact=exact, near=near, groups=uf.components())


def label_conflicts(dups: Duplicates, labels: Sequence[int]) -> list[list[int]]:
    """The duplicate groups whose images carry more than one label."""
    return [g for g in dups.groups if len({labels[i] for i in g}) > 1]


def duplicate_groups(samples: Sequence[Sample], dups: Duplicates | None) -> list[str]:
    """A group key per sample for the split: images of one patient and copies of one picture share
    a key, so they land in the same split (and the same fold)."""
    uf = _UnionFind(len(samples))
    first_of_patient: dict[str, int] = {}
    for i, s in enumerate(samples):
        if s.patient:
            uf.union(first_of_patient.setdefault(s.patient, i), i)
    for group in (dups.groups if dups else []):
        for j in group[1:]:
            uf.union(group[0], j)
    first_of_path: dict[str, int] = {}
    for i, s in enumerate(samples):  # one file listed twice is one picture
        uf.union(first_of_path.setdefault(s.path, i), i)
    return [samples[uf.find(i)].path for i in range(len(samples))]


def straddling(dups: Duplicates, samples: Sequence[Sample], assignment: Mapping[str, str]) -> dict[str, int]:
    """How many exact groups and near-duplicate groups have images in more than one split."""
    def spans(group: Sequence[int]) -> bool:
        return len({assignment.get(samples[i].path) for i in group} - {None}) > 1

    return {"exact": sum(map(spans, dups.exact)), "near": sum(map(spans, dups.near_groups()))}


def conflict_message(groups: Sequence[Sequence[int]], samples: Sequence[Sample], class_names: Sequence[str]) -> str:
    first = ", ".join(f"{samples[i].path} ({class_names[samples[i].label]})" for i in groups[0])
    more = f" and {len(groups) - 1} more group(s)" if len(groups) > 1 else ""
    return (
        f"{len(groups)} group(s) of duplicate images carry different labels, e.g. {first}{more}; fix the labels, "
        "or set dataset.on_label_conflict=drop (leave them out) or keep (train on them, kept in one split)"
    )


def resolve_duplicates(samples: list[Sample], fingerprints: Fingerprints, cfg: DatasetSettings,
                       class_names: Sequence[str]) -> tuple[list[Sample], Fingerprints, Duplicates | None, dict[str, Any]]:
    """Find duplicates as ``dataset.duplicates`` asks, apply ``dataset.on_label_conflict``, and say
    what was done (for metrics.json). Returns the kept samples and fingerprints, their duplicates
    (None when ``duplicates=none``) and the record."""
    mode, policy = cfg.duplicates, cfg.on_label_conflict
    near_bits = cfg.near_duplicate_bits if mode == "near" else None
    record: dict[str, Any] = {"mode": mode, "near_duplicate_bits": near_bits, "on_label_conflict": policy}
    if mode == "none":
        return samples, fingerprints, None, record
    dups = find_duplicates(fingerprints, near_bits)
    conflicts = label_conflicts(dups, [s.label for s in samples])
    record.update(exact_groups=len(dups.exact), near_pairs=len(dups.near), groups=len(dups.groups),
                  images_in_groups=sum(len(g) for g in dups.groups), label_conflicts=len(conflicts), dropped=[])
    if conflicts and policy == "error":
        raise LungclsError(conflict_message(conflicts, samples, class_names))
    if conflicts and policy == "drop":
        drop = sorted({i for g in conflicts for i in g})
        record["dropped"] = [samples[i].path for i in drop]
        log.warning("left out %d image(s) in %d label-conflicting duplicate group(s)", len(drop), len(conflicts))
        dropped = set(drop)
        keep = [i for i in range(len(samples)) if i not in dropped]
        samples, fingerprints = [samples[i] for i in keep], fingerprints.subset(keep)
        dups = find_duplicates(fingerprints, near_bits)
    elif conflicts:
        log.warning("training on %d duplicate group(s) with conflicting labels (dataset.on_label_conflict=keep)", len(conflicts))
    if dups.groups:
        log.info("%d duplicate group(s) (%d exact, %d near pairs) are each kept in one split",
                 len(dups.groups), len(dups.exact), len(dups.near))
    return samples, fingerprints, dups, record
