"""Decode-time mitigations against source bias: what a model may see of an X-ray, fixed before
resizing and caching, so training, evaluation and prediction see the same pixels.

Models trained on X-rays pooled from several hospitals learn the hospital (DeGrave et al. 2021):
the collimation edge, burned-in markers, the exposure curve. Three remedies can be switched on per
data set, each a ``dataset.*`` key stored with the checkpoint:

- ``crop_border=f``: drop the outer band (a share ``f`` of each side) before resizing;
- ``equalize=clahe``: contrast-limited adaptive histogram equalisation (Kornia's
  ``equalize_clahe``; ``clahe_clip_limit``, ``clahe_grid`` tiles per side), which evens out a site's
  exposure and contrast;
- ``mask_outside_lungs=true``: fill everything outside the lung mask with the image's mean (needs
  lung masks, as the Radiography Database and the demo ship them).

Whether they help is an empirical question: ``lungcls-compare`` measures it with leave-one-source-out
runs (docs/generalisation.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lungcls.errors import LungclsError
from lungcls.settings import check_range

EQUALIZE = ("none", "clahe")
MAX_CROP = 0.4
# What a checkpoint written before these keys existed used: nothing (the keys are read with these
# values only when absent from a stored data config, never in place of the yaml's defaults).
BEFORE_MITIGATIONS = {"crop_border": 0.0, "equalize": "none", "mask_outside_lungs": False, "clahe_clip_limit": 2.0,
                      "clahe_grid": 8}


@dataclass(frozen=True)
class Preprocess:
    """The decode-time steps of one data config; ``active`` is False when none is on."""

    crop_border: float
    equalize: str
    mask_outside_lungs: bool
    clahe_clip_limit: float
    clahe_grid: int

    def __post_init__(self) -> None:
        check_range(self.crop_border, "dataset.crop_border", 0.0, MAX_CROP)
        check_range(self.clahe_clip_limit, "dataset.clahe_clip_limit", 0.0)
        check_range(self.clahe_grid, "dataset.clahe_grid", 1, 64)
        if self.equalize not in EQUALIZE:
            raise LungclsError(f"dataset.equalize={self.equalize} is not one of {', '.join(EQUALIZE)}; "
                               "use dataset.equalize=clahe (or none)")

    @property
    def active(self) -> bool:
        return self.crop_border > 0 or self.equalize != "none" or self.mask_outside_lungs

    def key(self) -> str:
        """Identifies the steps in cache file names (empty when none is on)."""
        if not self.active:
            return ""
        clahe = f"{self.clahe_clip_limit:g}x{self.clahe_grid}" if self.equalize == "clahe" else ""
        return f"crop{self.crop_border:g}-eq{self.equalize}{clahe}-mask{int(self.mask_outside_lungs)}"

    def apply(self, gray: np.ndarray, lung_mask: np.ndarray | None = None, name: str = "image") -> np.ndarray:
        """``gray`` (uint8, any size) with the steps applied, in the order mask, crop, equalise."""
        if not self.active:
            return gray
        out = gray
        if self.mask_outside_lungs:
            out = _mask_outside(out, lung_mask, name)
        if self.crop_border > 0:
            out = _crop(out, self.crop_border)
        if self.equalize == "clahe":
            out = _clahe(out, self.clahe_clip_limit, self.clahe_grid)
        return out


def preprocess_from(cfg: Mapping[str, Any]) -> Preprocess:
    """The steps a ``dataset`` config (or a checkpoint's stored data config) asks for; keys absent
    from an older checkpoint's config mean "off". A wrong value is one line naming the key."""
    values = {k: cfg[k] if k in cfg else v for k, v in BEFORE_MITIGATIONS.items()}
    crop = values["crop_border"]
    try:
        crop = float(crop)
        if isinstance(values["crop_border"], bool):
            raise ValueError
    except (TypeError, ValueError):
        raise LungclsError(f"dataset.crop_border={values['crop_border']} must be a share of the side in [0, {MAX_CROP}], "
                           "e.g. dataset.crop_border=0.1") from None
    equalize = "none" if values["equalize"] in (None, False) else str(values["equalize"]).lower()
    mask = values["mask_outside_lungs"]
    if not isinstance(mask, bool):
        raise LungclsError(f"dataset.mask_outside_lungs={mask} must be true or false")
    try:
        clip, grid = float(values["clahe_clip_limit"]), int(values["clahe_grid"])
    except (TypeError, ValueError):
        raise LungclsError(f"dataset.clahe_clip_limit={values['clahe_clip_limit']} and dataset.clahe_grid={values['clahe_grid']} "
                           "must be numbers, e.g. 2.0 and 8") from None
    return Preprocess(crop, equalize, mask, clip, grid)


def mitigation_settings(model_data: Mapping[str, Any]) -> dict[str, Any]:
    """The decode-time keys of a checkpoint's data config (those an old checkpoint lacks: off), to
    score other data exactly as the model was trained."""
    return {k: model_data[k] if k in model_data else v for k, v in BEFORE_MITIGATIONS.items()}


def _crop(gray: np.ndarray, share: float) -> np.ndarray:
    h, w = gray.shape
    dy, dx = int(round(h * share)), int(round(w * share))
    return gray[dy : h - dy, dx : w - dx] if h - 2 * dy >= 1 and w - 2 * dx >= 1 else gray


def _mask_outside(gray: np.ndarray, lung_mask: np.ndarray | None, name: str) -> np.ndarray:
    if lung_mask is None:
        raise LungclsError(f"dataset.mask_outside_lungs=true but {name} has no lung mask (masks/<same name>); "
                           "use data with lung masks (e.g. the Radiography Database) or dataset.mask_outside_lungs=false")
    if lung_mask.shape != gray.shape:
        from PIL import Image

        lung_mask = np.asarray(Image.fromarray(lung_mask.astype(np.uint8) * 255).resize(gray.shape[::-1], Image.NEAREST)) > 127
    if not lung_mask.any():
        return gray
    out = gray.copy()
    out[~lung_mask] = np.uint8(round(float(gray.mean())))
    return out


def _clahe(gray: np.ndarray, clip_limit: float, grid: int) -> np.ndarray:
    import torch
    from kornia.enhance import equalize_clahe

    x = torch.from_numpy(np.array(gray, dtype=np.float32)).div_(255.0)[None, None]
    y = equalize_clahe(x, clip_limit=clip_limit, grid_size=(grid, grid))[0, 0]
    return y.mul_(255.0).add_(0.5).clamp_(0, 255).to(torch.uint8).numpy()
