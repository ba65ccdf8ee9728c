"""k-fold cross-validation splits: ``dataset.folds=k dataset.fold=i``.

One split is a point estimate; k folds show how much a result moves with the choice of test
images. Fold ``i`` of ``k`` is the held-out test part of a stratified, group-aware k-fold partition
(scikit-learn's ``StratifiedGroupKFold``), so every image is tested exactly once across the k runs
and a patient or a group of duplicate images never sits on both sides. The validation part is then
taken from the remaining images (``dataset.val_fraction`` of the whole set), with the same groups
kept together. The partition depends only on the images, their groups and ``dataset.split_seed``,
so the k runs of a sweep agree on it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from sklearn.model_selection import StratifiedGroupKFold

from lungcls.errors import LungclsError


def check_folds(folds: object, fold: object) -> tuple[int, int]:
    """``(k, i)`` after checking ``dataset.folds`` >= 2 and 0 <= ``dataset.fold`` < k."""
    try:
        k, i = int(folds), int(fold)
        if isinstance(folds, bool) or isinstance(fold, bool) or float(folds) != k or float(fold) != i:
            raise ValueError
    except (TypeError, ValueError):
        raise LungclsError(f"dataset.folds={folds} and dataset.fold={fold} must be whole numbers, e.g. dataset.folds=5 dataset.fold=0") from None
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
    from lungcls.data.splits import make_splits

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
