"""The findings of an audit, as ``audit.json`` stores them: duplicates (paths relative to the data
root), label conflicts, groups a split would put on both sides, unreadable files, statistics per
class and per source, and how strongly the source predicts the label (``source_confounding``)."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lungcls.audit.scan import Scan
from lungcls.data.dedup.duplicates import (
    Duplicates,
    duplicate_groups,
    label_conflicts,
    straddling,
)
from lungcls.data.samples.layouts import LAYOUTS
from lungcls.data.samples.sample import Sample
from lungcls.data.settings import DatasetSettings
from lungcls.data.samples.splits import apply_splits_csv, make_splits


def data_root(cfg: DatasetSettings) -> Path:
    """The folder paths are reported relative to: the layout's (``dataset.root``, or the manifest's folder)."""
    return LAYOUTS.get(cfg.layout)(cfg).data_root()


def relative(path: str, root: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), root)).as_posix()


def duplicate_findings(samples: Sequence[Sample], dups: Duplicates, class_names: Sequence[str], root: Path) -> dict[str, Any]:
    """``exact_duplicates`` (groups of paths), ``near_duplicates`` ({a, b, distance}) and
    ``label_conflicts`` (groups of {path, label}, with the kind of copy that links them)."""
    rel = [relative(s.path, root) for s in samples]
    exact_conflict = [len({samples[i].label for i in g}) > 1 for g in dups.exact]
    conflicts = []
    for group in label_conflicts(dups, [s.label for s in samples]):
        members = set(group)
        kind = "exact" if any(c and set(g) <= members for g, c in zip(dups.exact, exact_conflict)) else "near"
        conflicts.append({"kind": kind, "images": [{"path": rel[i], "label": class_names[samples[i].label]} for i in sorted(group)]})
    return {
        "exact_duplicates": sorted(sorted(rel[i] for i in g) for g in dups.exact),
        "near_duplicates": sorted(({"a": rel[i], "b": rel[j], "distance": d} for i, j, d in dups.near),
                                  key=lambda p: (p["distance"], p["a"], p["b"])),
        "label_conflicts": conflicts,
    }


def split_assignment(samples: Sequence[Sample], cfg: DatasetSettings, dups: Duplicates | None) -> dict[str, str]:
    """The split training would make with these settings (``dataset.splits_csv`` when given)."""
    if cfg.splits_csv:
        return apply_splits_csv(samples, cfg.splits_csv)
    return make_splits(samples, cfg.val_fraction, cfg.test_fraction, cfg.split_seed, groups=duplicate_groups(samples, dups))


def cross_split(samples: Sequence[Sample], cfg: DatasetSettings, dups: Duplicates) -> dict[str, Any]:
    """Duplicate groups straddling train/val/test under the current settings (``exact``, ``near``),
    and under a split that ignores duplicates (what a plain random split would do)."""
    grouped = dups if cfg.duplicates != "none" else None
    current = straddling(dups, samples, split_assignment(samples, cfg, grouped))
    plain = straddling(dups, samples, split_assignment(samples, dataclasses.replace(cfg, splits_csv=None), None))
    return {**current, "duplicates_setting": cfg.duplicates, "if_ignored": plain}


def _spread(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "sd": None, "min": None, "max": None}
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "sd": float(a.std()), "min": float(a.min()), "max": float(a.max())}


def class_statistics(samples: Sequence[Sample], scan: Scan, class_names: Sequence[str]) -> dict[str, Any]:
    """Per class: images, unreadable, sizes, modes and bit depths, mean and border intensity."""
    out: dict[str, Any] = {}
    for label, name in enumerate(class_names):
        idx = [i for i, s in enumerate(samples) if s.label == label]
        rows = [scan.stats[i] for i in idx if scan.stats[i] is not None]
        out[name] = {
            "images": len(idx),
            "unreadable": len(idx) - len(rows),
            "width": _spread([r["width"] for r in rows]),
            "height": _spread([r["height"] for r in rows]),
            "modes": dict(Counter(r["mode"] for r in rows)),
            "bit_depth": {str(k): v for k, v in sorted(Counter(r["bit_depth"] for r in rows).items())},
            "mean_intensity": _spread([r["mean"] for r in rows]),
            "border_intensity": _spread([r["border_mean"] for r in rows]),
        }
    return out


def source_counts(samples: Sequence[Sample], class_names: Sequence[str]) -> dict[str, dict[str, int]] | None:
    """``{source: {Class: images}}`` when the samples name their source."""
    if not any(s.source for s in samples):
        return None
    out: dict[str, dict[str, int]] = {}
    for s in samples:
        row = out.setdefault(s.source or "(none)", {c: 0 for c in class_names})
        row[class_names[s.label]] += 1
    return dict(sorted(out.items()))


CONFOUNDING_V = 0.3  # Cramer's V from which source and label are called confounded (a moderate association)
CONFOUNDING_RESAMPLES = 1000


def cramers_v(tables: np.ndarray) -> np.ndarray:
    """Cramer's V of each contingency table in ``tables`` [..., rows, columns] (as scipy's
    ``contingency.association(method="cramer")``, for a whole batch of bootstrap tables at once);
    empty rows and columns are left out, a table with one row or column left gives 0."""
    t = np.asarray(tables, dtype=np.float64)
    n = t.sum(axis=(-2, -1))
    rows, cols = t.sum(axis=-1), t.sum(axis=-2)
    expected = rows[..., :, None] * cols[..., None, :] / np.maximum(n, 1)[..., None, None]
    chi2 = np.where(expected > 0, (t - expected) ** 2 / np.where(expected > 0, expected, 1), 0).sum(axis=(-2, -1))
    k = np.minimum((rows > 0).sum(axis=-1), (cols > 0).sum(axis=-1)) - 1
    return np.where(k > 0, np.sqrt(chi2 / np.maximum(n, 1) / np.maximum(k, 1)), 0.0)


def source_confounding(samples: Sequence[Sample], class_names: Sequence[str], seed: int = 0) -> dict[str, Any] | None:
    """Cramer's V between source and label (95% bootstrap interval over images), and per class the
    sources it comes from; ``flagged`` when a class comes from one source only or V >= 0.3. A
    model can then score well by recognising the source (DeGrave et al. 2021). None without sources."""
    counts = source_counts(samples, class_names)
    if not counts:
        return None
    sources = list(counts)
    table = np.array([[counts[src][c] for src in sources] for c in class_names], dtype=np.int64)
    present = table.sum(axis=1) > 0
    v = float(cramers_v(table))
    rng = np.random.default_rng(seed)
    flat = table.ravel()
    draws = rng.multinomial(int(flat.sum()), flat / flat.sum(), size=CONFOUNDING_RESAMPLES)
    vs = cramers_v(draws.reshape(-1, *table.shape))
    classes: dict[str, Any] = {}
    for i, name in enumerate(class_names):
        if not present[i]:
            continue
        row = {src: int(n) for src, n in zip(sources, table[i]) if n}
        top = max(row, key=row.get)
        classes[name] = {"sources": row, "single_source": len(row) == 1 and len(sources) > 1,
                         "main_source": top, "main_share": row[top] / int(table[i].sum())}
    single = [c for c, r in classes.items() if r["single_source"]]
    return {
        "sources": len(sources), "cramers_v": v,
        "ci": [float(np.quantile(vs, 0.025)), float(np.quantile(vs, 0.975))], "level": 0.95,
        "resamples": CONFOUNDING_RESAMPLES, "threshold": CONFOUNDING_V, "classes": classes,
        "single_source_classes": single, "flagged": len(sources) > 1 and (bool(single) or v >= CONFOUNDING_V),
    }
