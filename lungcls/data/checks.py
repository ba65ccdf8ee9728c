"""The ``dataset`` config checked and typed before any file is read, so a wrong value is one line
naming the key and the fix instead of a traceback from deep inside a loader."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lungcls.data.images import DEFAULT_MAX_PIXELS
from lungcls.errors import LungclsError

CACHE_MODES = ("auto", "ram", "gpu", "mmap", "none")


def _whole(cfg: Mapping[str, Any], key: str, minimum: int, default: Any = None, optional: bool = False) -> int | None:
    value = cfg.get(key, default)
    if value is None and optional:
        return None
    try:
        number = int(value)
        if isinstance(value, bool) or float(value) != number:
            raise ValueError
    except (TypeError, ValueError):
        raise LungclsError(f"dataset.{key}={value} must be a whole number (>= {minimum})") from None
    if number < minimum:
        raise LungclsError(f"dataset.{key}={value} must be at least {minimum}")
    return number


def _fraction(cfg: Mapping[str, Any], key: str, default: float) -> float:
    value = cfg.get(key, default)
    try:
        number = float(value)
        if isinstance(value, bool) or number != number:
            raise ValueError
    except (TypeError, ValueError):
        raise LungclsError(f"dataset.{key}={value} must be a number in [0, 1), e.g. dataset.{key}=0.1") from None
    if not 0 <= number < 1:
        raise LungclsError(f"dataset.{key}={value} must be in [0, 1), e.g. dataset.{key}=0.1")
    return number


def check_dataset_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A typed copy of ``cfg`` with the numbers the data module uses; raises one-line errors."""
    out = dict(cfg)
    classes = out.get("classes")
    if not classes or isinstance(classes, str):
        raise LungclsError("dataset.classes is empty; list the class names, e.g. dataset.classes=[COVID,Normal]")
    out["classes"] = [str(c) for c in classes]
    if len(set(out["classes"])) != len(out["classes"]):
        raise LungclsError(f"dataset.classes has duplicates: {out['classes']}")
    normal = out.get("normal_class")
    if normal is not None and normal not in out["classes"]:
        raise LungclsError(
            f"dataset.normal_class={normal} is not in dataset.classes {out['classes']}; set dataset.normal_class to one of them (or null)"
        )
    out["image_size"] = _whole(out, "image_size", 16)
    out["batch_size"] = _whole(out, "batch_size", 1, default=32)
    out["num_workers"] = _whole(out, "num_workers", 0, default=0)
    out["split_seed"] = _whole(out, "split_seed", 0, default=1)
    out["max_per_class"] = _whole(out, "max_per_class", 1, optional=True)
    out["max_image_pixels"] = _whole(out, "max_image_pixels", 1, default=DEFAULT_MAX_PIXELS)
    out["val_fraction"] = _fraction(out, "val_fraction", 0.1)
    out["test_fraction"] = _fraction(out, "test_fraction", 0.1)
    if out["val_fraction"] + out["test_fraction"] >= 1:
        raise LungclsError(
            f"dataset.val_fraction={out['val_fraction']} and dataset.test_fraction={out['test_fraction']} leave no "
            "images to train on; make them sum to less than 1"
        )
    if out.get("folds") is not None:
        from lungcls.data.folds import check_folds

        out["folds"], out["fold"] = check_folds(out["folds"], out.get("fold", 0))
        if out.get("splits_csv"):
            raise LungclsError("dataset.folds and dataset.splits_csv both choose the test images; use one of them")
    if out.get("cache", "auto") not in CACHE_MODES:
        raise LungclsError(f"dataset.cache={out.get('cache')} is not one of {', '.join(CACHE_MODES)}")
    return out
