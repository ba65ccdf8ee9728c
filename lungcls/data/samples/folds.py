"""k-fold cross-validation splits: ``dataset.folds=k dataset.fold=i``.

One split is a point estimate; k folds show how much a result moves with the choice of test
images. Fold ``i`` of ``k`` is the held-out test part of a stratified, group-aware k-fold partition
(scikit-learn's ``StratifiedGroupKFold``), so every image is tested exactly once across the k runs
and a patient or a group of duplicate images never sits on both sides. The validation part is then
taken from the remaining images (``dataset.val_fraction`` of the whole set), with the same groups
kept together. The partition depends only on the images, their groups and ``dataset.split_seed``,
so the k runs of a sweep agree on it.

``dataset.folds=source`` is leave-one-source-out (Zech et al. 2018): one fold per source (sorted
names), ``dataset.fold=<i|name>`` tests on that source and trains and validates on the others, the
estimate of how a model does at a hospital it never saw. Images that are copies of a held-out image
(one duplicate group) are left out of training. A class that has no training images when a source
is held out, or no test images in it, is said in one line per fold (``fold_gaps``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from sklearn.model_selection import StratifiedGroupKFold

from lungcls.errors import LungclsError


SOURCE = "source"


def check_folds(folds: object, fold: object) -> tuple[int | str, int | str]:
    """``(k, i)`` after checking ``dataset.folds`` >= 2 and 0 <= ``dataset.fold`` < k; for
    ``dataset.folds=source``, ``("source", fold)`` with ``fold`` a whole number >= 0 or a source
    name (checked against the sources once they are known, ``source_fold``)."""
    if folds == SOURCE:
        if isinstance(fold, bool) or fold is None or (isinstance(fold, (int, float)) and (fold < 0 or fold != int(fold))):
            raise LungclsError(f"dataset.fold={fold} must be a source's index (0, 1, ...) or its name for dataset.folds=source")
        return SOURCE, int(fold) if isinstance(fold, (int, float)) else str(fold)
    try:
        k, i = int(folds), int(fold)
        if isinstance(folds, bool) or isinstance(fold, bool) or float(folds) != k or float(fold) != i:
            raise ValueError
    except (TypeError, ValueError):
        raise LungclsError(f"dataset.folds={folds} and dataset.fold={fold} must be whole numbers (or dataset.folds=source), "
                           "e.g. dataset.folds=5 dataset.fold=0") from None
    if k < 2:
        raise LungclsError(f"dataset.folds={k} must be at least 2 (or null for one train/val/test split)")
    if not 0 <= i < k:
        raise LungclsError(f"dataset.fold={i} must be in 0..{k - 1} for dataset.folds={k}; run them all with dataset.fold='range({k})'")
    return k, i


def held_out_fold(labels: Sequence[int], groups: Sequence[str], folds: int, fold: int, seed: int) -> list[int]:
    """Indices of the images held out as fold ``fold`` of ``folds``."""
    n_groups = len(set(groups))
    if n_groups < folds:
        raise LungclsError(f"dataset.folds={folds} needs at least {folds} independent images or patients; the data has {n_groups}")
    smallest = min(Counter(labels).values())
    if smallest < folds:
        raise LungclsError(
            f"a class has only {smallest} image(s), fewer than dataset.folds={folds}: some folds would test without it; "
            "use fewer folds or more images"
        )
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, held) in enumerate(splitter.split(list(range(len(labels))), list(labels), list(groups))):
        if k == fold:
            return sorted(int(j) for j in held)
    raise AssertionError("unreachable: fold < folds was checked")


def fold_splits(samples: Sequence, groups: Sequence[str], folds: object, fold: object, val_fraction: float,
                seed: int) -> dict[str, str]:
    """``{path: split}`` for fold ``fold`` of ``folds``: that fold is test, val comes from the rest
    (``val_fraction`` of the whole set), groups kept together throughout."""
    from lungcls.data.samples.splits import make_splits

    if any(s.split for s in samples):
        raise LungclsError("dataset.folds cannot be combined with a manifest that fixes splits; drop its split column or dataset.folds")
    k, i = check_folds(folds, fold)
    held = set(held_out_fold([s.label for s in samples], groups, k, i, seed))
    rest = [j for j in range(len(samples)) if j not in held]
    share = min(0.9, val_fraction / (1.0 - 1.0 / k))  # val_fraction of the whole set, taken from the rest
    assignment = make_splits([samples[j] for j in rest], val_fraction=share, test_fraction=0.0, seed=seed,
                             groups=[groups[j] for j in rest])
    assignment.update({samples[j].path: "test" for j in held})
    return assignment


def source_names(samples: Sequence) -> list[str]:
    """The sorted source names of ``samples``; a one-line error when they have none or only one."""
    names = sorted({s.source for s in samples if s.source})
    if not names:
        raise LungclsError(
            "dataset.folds=source needs a source per image: name a manifest column (dataset.source_column=...), "
            "read it from the paths (dataset.source_from=folder|regex), or for the demo set dataset.demo.sources=3"
        )
    if len(names) < 2:
        raise LungclsError(f"dataset.folds=source needs at least two sources; every image comes from {names[0]!r}. "
                           "Use dataset.folds=<k> for k-fold cross-validation instead")
    return names


def source_fold(samples: Sequence, fold: int | str) -> tuple[int, str]:
    """``(index, name)`` of the held-out source ``fold`` (an index into the sorted names, or a name)."""
    names = source_names(samples)
    listed = ", ".join(f"{i}={n}" for i, n in enumerate(names))
    if isinstance(fold, str) and not fold.isdigit():
        if fold not in names:
            raise LungclsError(f"dataset.fold={fold} is not a source; the sources are {listed}")
        return names.index(fold), fold
    i = int(fold)
    if not 0 <= i < len(names):
        raise LungclsError(f"dataset.fold={i} must be in 0..{len(names) - 1} for dataset.folds=source ({listed}); "
                           f"run them all with dataset.fold='range({len(names)})'")
    return i, names[i]


def source_fold_splits(samples: Sequence, groups: Sequence[str], fold: int | str, val_fraction: float,
                       seed: int) -> tuple[dict[str, str], str]:
    """``({path: split}, held-out source)``: the source's images are test, val comes from the other
    sources (``val_fraction`` of their images, groups kept together), the rest trains. Images of
    other sources that are copies of a held-out image get no split (they are left out)."""
    from lungcls.data.samples.splits import make_splits

    if any(s.split for s in samples):
        raise LungclsError("dataset.folds=source cannot be combined with a manifest that fixes splits; drop its split column or dataset.folds")
    _, held_name = source_fold(samples, fold)
    held = [j for j, s in enumerate(samples) if s.source == held_name]
    held_groups = {groups[j] for j in held}
    rest = [j for j, s in enumerate(samples) if s.source != held_name and groups[j] not in held_groups]
    assignment = make_splits([samples[j] for j in rest], val_fraction=min(0.9, val_fraction), test_fraction=0.0,
                             seed=seed, groups=[groups[j] for j in rest]) if rest else {}
    assignment.update({samples[j].path: "test" for j in held})
    return assignment, held_name


def fold_gaps(samples: Sequence, assignment: dict[str, str], class_names: Sequence[str],
              label: Any) -> str | None:
    """One line naming the classes with no training images, or no test images, in this fold."""
    counts = {split: Counter(s.label for s in samples if assignment.get(s.path) == split) for split in ("train", "test")}
    untrained = [c for i, c in enumerate(class_names) if not counts["train"][i]]
    untested = [c for i, c in enumerate(class_names) if not counts["test"][i]]
    parts = []
    if untrained:
        parts.append(f"no training images of {', '.join(untrained)} (the model cannot learn them; their metrics are null)")
    if untested:
        parts.append(f"no test images of {', '.join(untested)} (their recall is null)")
    return f"fold {label}: " + "; ".join(parts) if parts else None
