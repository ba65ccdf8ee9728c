"""Where a CAM puts its energy: inside the lungs, on the lesion, or on the image border.

A share is (sum of the map inside a region) / (sum of the whole map). Its uniform baseline is the
region's area share: what a map spread evenly over the image would score. A model that localises
disease beats the baseline on the lesion mask; a model that reads burned-in labels and text markers
(which sit near the border) puts a large share on the border band. Undefined values are `None`
(no mask, an empty lesion mask, an all-zero map), never NaN or a silent 0, as in `lungcls.metrics`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from scipy.ndimage import distance_transform_edt

from lungcls.errors import LungclsError

__all__ = ["energy_shares", "hit_and_iou", "border_band", "summarize_localisation", "localisation_lines", "ratio"]

SHARE_KEYS = ("lung", "lesion", "border")


def _as_map(cam: Any) -> np.ndarray:
    """A CAM as a float64 [H, W] array (torch tensors accepted); negatives count as no energy."""
    if hasattr(cam, "detach"):
        cam = cam.detach().cpu().numpy()
    arr = np.asarray(cam, dtype=np.float64)
    arr = np.squeeze(arr) if arr.ndim > 2 else arr
    if arr.ndim != 2:
        raise LungclsError(f"a CAM must be a 2-D map [H, W], got shape {np.shape(cam)}")
    if not np.isfinite(arr).all():
        raise LungclsError("the CAM contains NaN or infinite values; recompute it with grad_cam")
    return np.clip(arr, 0.0, None)


def _as_mask(mask: Any, shape: tuple[int, int], name: str) -> np.ndarray:
    """A bool [H, W] mask from bool, 0/1 or 0-255 data ([H, W] or [H, W, k]), nearest-resized."""
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    arr = np.asarray(mask)
    if arr.ndim == 3:  # an RGB(A) mask image: inside where any colour channel is on
        arr = arr[..., :3].max(axis=2) if arr.shape[2] > 1 else arr[..., 0]
    if arr.ndim != 2 or 0 in arr.shape:
        raise LungclsError(
            f"{name} mask must be a 2-D image [H, W] (or [H, W, channels]), got shape "
            f"{np.shape(mask)}"
        )
    if arr.dtype != bool:
        arr = arr.astype(np.float64)
        # 0/1 masks and 0-255 mask images both: inside = above half of the value range.
        arr = arr > (0.5 if arr.max(initial=0.0) <= 1.0 else 127.5)
    if arr.shape != shape:
        rows = np.minimum((np.arange(shape[0]) + 0.5) * arr.shape[0] / shape[0], arr.shape[0] - 1)
        cols = np.minimum((np.arange(shape[1]) + 0.5) * arr.shape[1] / shape[1], arr.shape[1] - 1)
        arr = arr[rows.astype(int)[:, None], cols.astype(int)[None, :]]
    return arr


def border_band(shape: tuple[int, int], border_frac: float = 0.1) -> np.ndarray:
    """Bool mask of the outer band: round(border_frac * side) pixels on each of the four sides."""
    if not 0.0 <= float(border_frac) < 0.5:
        raise LungclsError(
            f"border_frac must be in [0, 0.5) (a share of the image side), got {border_frac}"
        )
    height, width = shape
    band = np.ones((height, width), dtype=bool)
    dy, dx = int(round(border_frac * height)), int(round(border_frac * width))
    band[dy : height - dy, dx : width - dx] = False
    return band


def _share(energy: np.ndarray, total: float, region: np.ndarray) -> float | None:
    return float(energy[region].sum() / total) if total > 0 else None


def energy_shares(
    cam: Any,
    lung_mask: Any = None,
    lesion_mask: Any = None,
    border_frac: float = 0.1,
) -> dict[str, float | None]:
    """Shares of the CAM's energy in the lungs, the lesion and the border band, with baselines.

    Returns `{lung_share, lung_uniform, lesion_share, lesion_uniform, border_share,
    border_uniform}`. A share is None when its mask is absent or the map is all zero; the
    lesion share is also None for an empty lesion mask (nothing to localise, e.g. a Normal image),
    with lesion_uniform 0.0. Masks of another size are resized (nearest) to the CAM's size.
    """
    energy = _as_map(cam)
    total = float(energy.sum())
    shape = energy.shape
    out: dict[str, float | None] = {}
    regions = {
        "lung": None if lung_mask is None else _as_mask(lung_mask, shape, "lung"),
        "lesion": None if lesion_mask is None else _as_mask(lesion_mask, shape, "lesion"),
        "border": border_band(shape, border_frac),
    }
    for key in SHARE_KEYS:
        region = regions[key]
        if region is None:
            out[f"{key}_share"], out[f"{key}_uniform"] = None, None
            continue
        out[f"{key}_uniform"] = float(region.mean())
        empty_lesion = key == "lesion" and not region.any()
        out[f"{key}_share"] = None if empty_lesion else _share(energy, total, region)
    return out


def hit_and_iou(cam: Any, lesion_mask: Any, tolerance: float = 0.0) -> dict[str, float | None]:
    """Saporta et al.'s (2022) two localisation scores against the lesion mask.

    ``hit``: the pointing game, 1.0 when the map's maximum lies in the mask (where several pixels
    share the maximum, as on occlusion's plateaus, when most of them do), else 0.0; with
    ``tolerance`` > 0, within that share of the image side of the mask (Zhang et al. 2016 allowed
    15 px at 224 px, 0.067); 0 is Saporta's strict rule. ``iou``: the map
    thresholded to the mask's own area (its top-k pixels, k = the mask's pixel count) against the
    mask, so no threshold has to be tuned per method. Both None without a mask, for an empty mask
    or an all-zero map.
    """
    if lesion_mask is None:
        return {"hit": None, "iou": None}
    energy = _as_map(cam)
    mask = _as_mask(lesion_mask, energy.shape, "lesion")
    k = int(mask.sum())
    peak = float(energy.max(initial=0.0))
    if k == 0 or peak <= 0:
        return {"hit": None, "iou": None}
    at_peak = energy >= peak * (1 - 1e-6)
    near = mask if tolerance <= 0 else distance_transform_edt(~mask) <= tolerance * max(energy.shape)
    hit = float(near[at_peak].mean() > 0.5)
    top = np.zeros(energy.size, dtype=bool)
    top[np.argsort(-energy, axis=None, kind="stable")[:k]] = True
    top = top.reshape(energy.shape)
    iou = float((top & mask).sum() / (top | mask).sum())
    return {"hit": hit, "iou": iou}


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def summarize_localisation(
    rows: Iterable[Mapping[str, Any]], model_key: str = "model"
) -> dict[str, dict[str, Any]]:
    """Per model: mean shares vs mean uniform baselines over the images where each is defined.

    `rows` are per-image dicts holding `model_key` and the `energy_shares` keys (the report's CSV
    rows). The lesion check pairs share and baseline on the same images, so `lesion_beats_uniform`
    (mean share > mean baseline) is not skewed by images without a lesion; `lesion_beats_frac` is
    the fraction of those images whose own share beats their own baseline.
    """
    by_model: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        if model_key not in row:
            raise LungclsError(
                f"localisation row without a {model_key!r} column: {sorted(row)}; "
                "add the model name to every row"
            )
        by_model.setdefault(str(row[model_key]), []).append(row)
    summary: dict[str, dict[str, Any]] = {}
    for model, model_rows in by_model.items():
        item: dict[str, Any] = {"n_images": len(model_rows)}
        for key in SHARE_KEYS:
            paired = [
                (r.get(f"{key}_share"), r.get(f"{key}_uniform"))
                for r in model_rows
                if r.get(f"{key}_share") is not None and r.get(f"{key}_uniform") is not None
            ]
            item[f"n_{key}"] = len(paired)
            item[f"{key}_share_mean"] = _mean(s for s, _ in paired)
            item[f"{key}_uniform_mean"] = _mean(u for _, u in paired)
        share, uniform = item["lesion_share_mean"], item["lesion_uniform_mean"]
        item["lesion_beats_uniform"] = None if share is None else bool(share > uniform)
        item["lesion_beats_frac"] = (
            _mean(
                float(r["lesion_share"] > r["lesion_uniform"])
                for r in model_rows
                if r.get("lesion_share") is not None and r.get("lesion_uniform") is not None
            )
            if item["n_lesion"]
            else None
        )
        summary[model] = item
    return summary


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def ratio(share: float | None, uniform: float | None) -> float | None:
    """How many times the uniform share a mean share is (None when undefined)."""
    return None if share is None or not uniform else share / uniform


BORDER_ALERT = 1.5  # a border share this many times the uniform one points at burned-in labels


def localisation_lines(summary: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One readable line per model for the report's summary list."""
    lines = []
    for model, s in summary.items():
        if s.get("n_lesion"):
            verdict = "beats" if s["lesion_beats_uniform"] else "does NOT beat"
            times = ratio(s["lesion_share_mean"], s["lesion_uniform_mean"])
            lesion = (
                f"lesion share {_fmt(s['lesion_share_mean'])} vs uniform "
                f"{_fmt(s['lesion_uniform_mean'])} ({verdict} uniform, {_fmt(times)}x; better on "
                f"{s['lesion_beats_frac']:.0%} of {s['n_lesion']} images)"
            )
        else:
            lesion = "lesion share n/a (no lesion masks)"
        lung_times = ratio(s["lung_share_mean"], s["lung_uniform_mean"])
        lung = (
            f"lung share {_fmt(s['lung_share_mean'])} vs uniform {_fmt(s['lung_uniform_mean'])}"
            + (f" ({_fmt(lung_times)}x: the maps avoid the lungs)" if lung_times is not None and lung_times < 1 else "")
            if s.get("n_lung")
            else "lung share n/a (no lung masks)"
        )
        times = ratio(s["border_share_mean"], s["border_uniform_mean"])
        border = (
            f"border share {_fmt(s['border_share_mean'])} vs uniform "
            f"{_fmt(s['border_uniform_mean'])} ({_fmt(times)}x"
            + (": attention on the border band, where burned-in labels sit; suspect a shortcut)"
               if times is not None and times >= BORDER_ALERT else ")")
        )
        lines.append(f"{model}: {lesion}; {lung}; {border}")
    return lines
