"""The shortcut probe: can the label be read from what lies outside the lungs?

A small, regularised linear classifier sees only the region outside the lung fields: the outer
border band of the image (where burned-in text, markers, collimation edges and scanner borders sit),
or everything outside the lung masks when the data set has them. It is cross-validated (copies of
one picture never straddle folds) and its balanced accuracy gets a bootstrap interval. When even
the lower bound is clearly above chance, the labels are predictable from the source of the images,
and a CNN trained on them can score well without looking at the lungs (DeGrave et al., 2021).
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.ndimage import binary_dilation
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lungcls.audit.settings import ProbeSettings
from lungcls.metrics.bootstrap import percentile_interval

log = logging.getLogger(__name__)

PROBE_SIZE = 64  # images are resized to this before the region is cut out
GRID = 16  # the region is averaged over GRID x GRID cells
LUNG_MARGIN = 2  # pixels (at PROBE_SIZE) the lung masks are widened by, so no lung pixel leaks in


def region_mask(lungs: np.ndarray | None, border_frac: float) -> np.ndarray:
    """What the probe may see at PROBE_SIZE: outside the (widened) lungs, or the border band."""
    if lungs is not None:
        return ~binary_dilation(lungs, iterations=LUNG_MARGIN)
    band = np.ones((PROBE_SIZE, PROBE_SIZE), dtype=bool)
    b = max(1, int(round(PROBE_SIZE * border_frac)))
    band[b:-b, b:-b] = False
    return band


def _cells(values: np.ndarray) -> np.ndarray:
    c = PROBE_SIZE // GRID
    return values.reshape(GRID, c, GRID, c).sum(axis=(1, 3))


def region_features(image: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Features of the visible region only: the mean of each grid cell's visible pixels, how much
    of the cell is visible, and the intensity histogram and bright-pixel share of each image half
    (position-free cues such as a tag that moves around)."""
    img = image.astype(np.float32) / 255.0
    area = _cells(keep.astype(np.float32))
    means = np.divide(_cells(img * keep), area, out=np.zeros_like(area), where=area > 0)
    halves = (np.s_[: PROBE_SIZE // 2, :], np.s_[PROBE_SIZE // 2 :, :], np.s_[:, : PROBE_SIZE // 2], np.s_[:, PROBE_SIZE // 2 :])
    parts = [means.ravel(), area.ravel() / area.max(initial=1.0)]
    for half in halves:
        pixels = img[half][keep[half]]
        if pixels.size == 0:
            parts.append(np.zeros(10, np.float32))
            continue
        hist = np.histogram(pixels, bins=8, range=(0.0, 1.0))[0] / pixels.size
        parts.append(np.concatenate([hist, [pixels.std(), (pixels > 0.85).mean()]]).astype(np.float32))
    return np.concatenate(parts).astype(np.float32)


def _subsample(labels: np.ndarray, max_images: int, seed: int) -> np.ndarray:
    """At most ``max_images`` indices, the same share of every class (the probe's cost stays flat)."""
    if len(labels) <= max_images:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep.append(rng.choice(idx, size=max(1, int(round(len(idx) * max_images / len(labels)))), replace=False))
    return np.sort(np.concatenate(keep))


def bootstrap_balanced_accuracy(y: np.ndarray, correct: np.ndarray, resamples: int, seed: int, level: float = 0.95) -> list[float] | None:
    """Percentile interval of the balanced accuracy: each class's images are resampled with
    replacement (stratified), the interval taken as everywhere in lungcls (``percentile_interval``)."""
    rng = np.random.default_rng(seed)
    recalls = []
    for c in np.unique(y):
        hits = correct[y == c].astype(np.float32)
        draws = rng.integers(0, len(hits), size=(resamples, len(hits)))
        recalls.append(hits[draws].mean(axis=1))
    return percentile_interval(np.mean(recalls, axis=0), level)


def _unfit(region: str, note: str) -> dict[str, Any]:
    return {"balanced_accuracy": None, "ci": None, "chance": None, "flagged": False, "region": region, "note": note}


def shortcut_probe(features: np.ndarray, labels: Sequence[int], groups: Sequence[str], class_names: Sequence[str],
                   region: str, settings: ProbeSettings) -> dict[str, Any]:
    """Cross-validated balanced accuracy of the probe, its interval, chance and the verdict."""
    folds, seed = settings.folds, settings.seed
    y = np.asarray(labels, dtype=int)
    counts = Counter(y.tolist())
    usable = np.array([counts[v] >= folds for v in y.tolist()], dtype=bool)
    if len({v for v in y.tolist() if counts[v] >= folds}) < 2:
        return _unfit(region, f"fewer than two classes with at least {folds} readable images")
    idx = np.flatnonzero(usable)
    idx = idx[_subsample(y[idx], settings.max_images, seed)]
    X, y, g = features[idx], y[idx], np.asarray(groups, dtype=object)[idx]
    model = make_pipeline(StandardScaler(), LogisticRegression(C=settings.C, max_iter=3000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter; the interval says how good the fit is
        oof = cross_val_predict(model, X, y, cv=StratifiedGroupKFold(folds, shuffle=True, random_state=seed), groups=g)
    present = np.unique(y)
    chance = 1.0 / len(present)
    ci = bootstrap_balanced_accuracy(y, oof == y, settings.resamples, seed)
    margin = settings.margin
    return {
        "balanced_accuracy": float(balanced_accuracy_score(y, oof)),
        "ci": ci,
        "chance": chance,
        "flagged": bool(ci[0] > chance + margin),
        "region": region,
        "margin": margin,
        "images": int(len(y)),
        "folds": folds,
        "recall": {class_names[c]: float(np.mean(oof[y == c] == c)) for c in present},
        "classes_left_out": sorted(class_names[c] for c in counts if counts[c] < folds),
    }
