"""``evaluate.miss_rate``: cap the share of disease images called Normal, with a threshold on the
Normal score chosen on calibration images (never the scored ones) and the achieved miss rate, per
disease class and per group, measured on the scored split. The math is in
``lungcls.metrics.riskcontrol``; this module checks the request, finds the groups and writes the
``miss_rate_control`` record of metrics.json and its console lines."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lungcls.errors import LungclsError
from lungcls.metrics.predictions import Predictions
from lungcls.metrics.riskcontrol import achieved, calibrate, decide, mondrian, smallest_alpha

__all__ = ["GUARANTEES", "check_cap_request", "check_group_column", "group_values", "check_calibration_counts",
           "miss_rate_control", "miss_rate_lines"]

GUARANTEES = {"expected": "crc", "high_probability": "ltt"}
_SOURCE_NAMES = ("source", "site")


def check_cap_request(normal_class: str | None, class_names: Sequence[str], split: str, calibration: str) -> None:
    """What can be refused before any image is decoded."""
    if not normal_class or normal_class not in class_names:
        raise LungclsError(f"evaluate.miss_rate needs a normal class, and this checkpoint has none among {list(class_names)}; "
                           "evaluate a model trained with dataset.normal_class set")
    if calibration == split or split == "all" and calibration != "all":
        raise LungclsError(f"evaluate.calibration={calibration} would calibrate on {'the scored images' if calibration == split else 'no images'} "
                           f"(dataset.split={split}); calibrate on another split, e.g. evaluate.calibration=val with dataset.split=test")


def check_group_column(column: str | None, manifest: str | None, key: str, has_source: bool = True) -> None:
    """A column the data cannot have is refused from the settings and the manifest's header, before decoding."""
    if column in _SOURCE_NAMES and not has_source:
        group_values(column, [], None, manifest, key)
    if not column or column in _SOURCE_NAMES:
        return
    if not manifest:
        raise LungclsError(f"{key}={column}: only a manifest has columns to group by; use 'source' or dataset=manifest")
    with open(Path(str(manifest)).expanduser(), newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), [])
    if column not in header:
        raise LungclsError(f"{key}={column}: the manifest has no such column (its columns: {', '.join(header)}); "
                           "name one of them, or 'source' for the data's source")


def group_values(column: str, paths: Sequence[str], sources: dict[str, str] | None, manifest: str | None, key: str) -> np.ndarray:
    """Each image's group: its source (``source``/``site``: ``dataset.source_column``, ``source_from``
    or the demo's sites) or a column of the manifest."""
    if column in _SOURCE_NAMES:
        if sources is None:
            raise LungclsError(f"{key}={column}: this data has no source; set dataset.source_column, dataset.source_from "
                               "or dataset.demo.sources=3, or name a manifest column")
        return np.array([sources.get(p, "(none)") for p in paths], dtype=object)
    if not manifest:
        raise LungclsError(f"{key}={column}: only a manifest has columns to group by; use 'source' or dataset=manifest")
    check_group_column(column, manifest, key)
    where = Path(str(manifest)).expanduser().resolve()
    with open(where, newline="", encoding="utf-8-sig") as f:
        rows = {str(Path(r["path"]) if Path(r["path"]).is_absolute() else where.parent / r["path"]): (r.get(column) or "").strip()
                for r in csv.DictReader(f)}
    return np.array([rows.get(p) or "(none)" for p in paths], dtype=object)


def check_calibration_counts(counts: Sequence[int], data_classes: Sequence[str], normal_class: str, calibration: str,
                             alpha: float, method: str, delta: float) -> None:
    """A calibration split without disease or Normal images, or with too few disease images for alpha:
    one line, before the forward pass."""
    n_normal = sum(n for c, n in zip(data_classes, counts) if c == normal_class)
    n_disease = sum(counts) - n_normal
    if not n_disease or not n_normal:
        missing = "disease" if not n_disease else normal_class
        raise LungclsError(f"the calibration split '{calibration}' has no {missing} image; the cap needs both "
                           "(choose another with evaluate.calibration=...)")
    if smallest_alpha(n_disease, method, delta) > alpha:
        raise LungclsError(f"evaluate.miss_rate={alpha:g}: the calibration split '{calibration}' has {n_disease} disease images, "
                           f"which reach {smallest_alpha(n_disease, method, delta):.3g} at best; raise evaluate.miss_rate "
                           "or calibrate on more images")


def _group_report(scores, labels, normal, names, groups_cal, groups_scored, alpha, method, delta, level) -> tuple[dict[str, Any], np.ndarray]:
    cal_s, cal_d, scored_s = scores
    fitted = mondrian(cal_s, cal_d, groups_cal, alpha, method, delta)
    pooled = fitted["pooled"]["threshold"]
    per_image = np.array([fitted["groups"].get(g, {"threshold": pooled})["threshold"] for g in groups_scored], dtype=np.float64)
    out = {}
    for name in sorted(set(groups_scored.tolist()) | set(fitted["groups"])):
        entry = dict(fitted["groups"].get(name) or {"threshold": pooled, "fallback": True, "calibration": {"disease": 0, "all": 0},
                                                      "reason": "no calibration image of this group"})
        keep = groups_scored == name
        entry["achieved"] = achieved(scored_s[keep] > per_image[keep], labels[keep], names, normal, level)
        out[str(name)] = entry
    return out, per_image


def miss_rate_control(class_names: Sequence[str], normal_class: str, alpha: float, guarantee: str, delta: float,
                      scored: Predictions, split: str, cal: Predictions, calibration: str, level: float = 0.95,
                      by: str | None = None, groups_scored: Any = None, groups_cal: Any = None) -> dict[str, Any]:
    """The ``miss_rate_control`` record: the threshold chosen on ``cal`` and what it achieved on ``scored``."""
    names = list(class_names)
    normal, method = names.index(normal_class), GUARANTEES[guarantee]
    cal_s, cal_d = cal.probs[:, normal], cal.labels != normal
    chosen = calibrate(cal_s, cal_d, alpha, method, delta)
    scored_s = scored.probs[:, normal]
    thresholds = np.full(len(scored_s), chosen["threshold"], dtype=np.float64)
    record: dict[str, Any] = {
        "alpha": alpha, "delta": delta if method == "ltt" else None, "guarantee": guarantee, "method": method,
        "normal_class": normal_class, "decision": f"{normal_class} when its probability is above the threshold, else refer "
                                                  "(the most likely disease class)",
        "threshold": chosen["threshold"], "allowed_misses": chosen["allowed_misses"],
        "calibration": {"split": calibration, **chosen["calibration"]}, "smallest_alpha": chosen["smallest_alpha"],
        "by": by, "groups": None, "split": split,
    }
    if by:
        record["groups"], thresholds = _group_report((cal_s, cal_d, scored_s), scored.labels, normal, names,
                                                     np.asarray(groups_cal, dtype=object), np.asarray(groups_scored, dtype=object),
                                                     alpha, method, delta, level)
    _, referred = decide(scored.probs, normal, thresholds)
    record["achieved"] = achieved(~referred, scored.labels, names, normal, level)
    today = calibrate(cal_s, cal_d, alpha, "validation_quantile")["threshold"]
    record["validation_quantile"] = {"threshold": today, "achieved": achieved(scored_s > today, scored.labels, names, normal, level)["miss_rate"]}
    return record


def _rate(r: dict[str, Any]) -> str:
    if r is None or r["rate"] is None:
        return "n/a"
    return f"{r['rate']:.3f} [{r['interval'][0]:.3f}, {r['interval'][1]:.3f}]"


def miss_rate_lines(record: dict[str, Any]) -> list[str]:
    """The cap on the console: the threshold, what it achieved per disease class, its price, and a
    line per group that fell back to the pooled threshold."""
    a, cal = record["achieved"], record["calibration"]
    how = "expected" if record["method"] == "crc" else f"with probability >= {1 - record['delta']:.2f}"
    per_class = ", ".join(f"{c} {_rate(r)}" for c, r in a["per_class"].items() if r["images"])
    lines = [f"miss-rate cap {record['alpha']:g} ({how}; {cal['disease']} disease / {cal['all']} images of {cal['split']}): "
             f"{record['normal_class']} above {record['threshold']:.4f}; {record['split']}: missed {_rate(a['miss_rate'])}"
             f" ({per_class}); {record['normal_class']} referred {_rate(a['referred_normal'])}",
             f"  today's validation-quantile threshold {record['validation_quantile']['threshold']:.4f} missed "
             f"{_rate(record['validation_quantile']['achieved'])}"]
    for name, g in (record.get("groups") or {}).items():
        note = f" (pooled threshold: {g['reason']})" if g.get("fallback") else ""
        lines.append(f"  {record['by']}={name}: threshold {g['threshold']:.4f}{note}; missed {_rate(g['achieved']['miss_rate'])}, "
                     f"{record['normal_class']} referred {_rate(g['achieved']['referred_normal'])}")
    return lines
