"""The report's CAM grid: rows = images, columns = the original then one overlay per model.

Overlays keep the X-ray readable: the grayscale image is drawn underneath at full contrast and the
heat map goes on top with partial alpha, transparent where the CAM is tiny, so the anatomy under
weak evidence stays visible and strong evidence stands out. All maps share one 0-1 colour scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from lungcls.errors import LungclsError  # noqa: E402

__all__ = ["plot_cam_grid", "to_display_gray"]

CELL_INCHES = 2.3


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def to_display_gray(image: Any) -> np.ndarray:
    """An image as float [H, W] in [0, 1] for display.

    Accepts [H, W], [H, W, C] or [C, H, W] (C = 1, 3, 4), uint8/uint16 or float. Floats already in
    [0, 1] are kept; other floats (normalised tensors) are min-max scaled so they stay readable.
    """
    arr = _numpy(image)
    if arr.ndim == 3:
        if arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 3, 4):
            arr = np.moveaxis(arr, 0, 2)
        arr = arr[..., :3].mean(axis=2) if arr.shape[2] > 1 else arr[..., 0]
    if arr.ndim != 2:
        raise LungclsError(
            f"cannot display an image of shape {np.shape(image)}; "
            "pass [H, W], [H, W, C] or [C, H, W]"
        )
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
        top = 1.0 if arr.dtype == bool else (255.0 if arr.max(initial=0) <= 255 else 65535.0)
        return arr.astype(np.float64) / top
    arr = np.nan_to_num(arr.astype(np.float64))
    lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=0.0))
    if lo >= 0.0 and hi <= 1.0:
        return arr
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def _resize_map(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to (H, W) so the overlay lines up pixel for pixel."""
    if cam.shape == shape:
        return cam
    img = Image.fromarray(cam.astype(np.float32))  # a float32 array opens as mode "F"
    return np.asarray(img.resize((shape[1], shape[0]), Image.BILINEAR), dtype=np.float64)


def _check_grid(n: int, names: Sequence[str], cam_sets: Sequence[np.ndarray], row_titles: Sequence[str],
                col_titles: Sequence[str] | None, cell_titles: Sequence[Sequence[str]] | None, alpha: float) -> list[str]:
    """Check the grid's parts fit together; returns the column titles (default: Image + names)."""
    m = len(cam_sets)
    if n == 0:
        raise LungclsError("no images to plot; select at least one image for the figure")
    for name, cams in zip(names, cam_sets):
        if cams.ndim != 3 or cams.shape[0] != n:
            raise LungclsError(f"CAMs of {name} have shape {cams.shape}, expected [{n}, h, w] (one map per image)")
    col_titles = ["Image", *names] if col_titles is None else list(col_titles)
    if len(col_titles) != m + 1:
        raise LungclsError(f"{len(col_titles)} column titles for {m + 1} columns; give the original's title then one per model")
    if len(row_titles) != n:
        raise LungclsError(f"{len(row_titles)} row titles for {n} images; give one per image")
    if cell_titles is not None and (len(cell_titles) != m or any(len(titles) != n for titles in cell_titles)):
        raise LungclsError(f"cell_titles must be {m} lists (one per model) of {n} titles (one per image)")
    if not 0.0 <= alpha <= 1.0:
        raise LungclsError(f"alpha must be in [0, 1], got {alpha}")
    return col_titles


def plot_cam_grid(
    images: Sequence[Any] | Any,
    cams_by_model: Mapping[str, Any] | Sequence[Any],
    row_titles: Sequence[str],
    col_titles: Sequence[str] | None,
    cell_titles: Sequence[Sequence[str]] | None,
    path: str | Path,
    alpha: float = 0.45,
    cmap: str = "jet",
    min_cam: float = 0.05,
    dpi: int = 110,
) -> Path:
    """Write a PNG grid of CAM overlays and return its path.

    images: N display images (un-normalised; see `to_display_gray`). cams_by_model: model name ->
    [N, h, w] maps in [0, 1] (or a list of such, in column order). row_titles[i]: the true label
    and file name. col_titles: 1 + M titles (default "Image" then the model names).
    cell_titles[m][i]: e.g. "ResNet50: COVID 0.93". Pixels with cam < min_cam are left uncoloured.
    """
    imgs = [to_display_gray(im) for im in images]
    if isinstance(cams_by_model, Mapping):
        names = [str(k) for k in cams_by_model]
        cam_sets = [_numpy(v) for v in cams_by_model.values()]
    else:
        cam_sets = [_numpy(v) for v in cams_by_model]
        names = [f"model {j + 1}" for j in range(len(cam_sets))]
    n, m = len(imgs), len(cam_sets)
    col_titles = _check_grid(n, names, cam_sets, row_titles, col_titles, cell_titles, alpha)
    aspect = float(np.mean([im.shape[0] / im.shape[1] for im in imgs]))
    width = CELL_INCHES * (m + 1) + 0.9
    height = CELL_INCHES * aspect * n + 0.6 + 0.25 * (cell_titles is not None) * n
    fig, axes = plt.subplots(
        n, m + 1, figsize=(width, height), squeeze=False, layout="constrained"
    )
    heat = None
    try:
        for i, gray in enumerate(imgs):
            for j in range(m + 1):
                ax = axes[i, j]
                ax.imshow(gray, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if j > 0:
                    cam = _resize_map(cam_sets[j - 1][i].astype(np.float64), gray.shape)
                    cam = np.clip(cam, 0.0, 1.0)
                    shown = np.ma.masked_less(cam, min_cam)
                    heat = ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=1.0, alpha=alpha)
                    if cell_titles is not None:
                        ax.set_title(str(cell_titles[j - 1][i]), fontsize=8)
                elif cell_titles is not None:
                    ax.set_title(" ", fontsize=8)  # keep the row's cells aligned
                if i == 0:
                    # above the cell titles, however many lines they have
                    lines = max((str(t).count("\n") + 1 for ts in cell_titles for t in ts), default=1) if cell_titles is not None else 0
                    lift = 4 + 12 * lines
                    ax.annotate(
                        str(col_titles[j]),
                        xy=(0.5, 1.0),
                        xycoords="axes fraction",
                        xytext=(0, lift),
                        textcoords="offset points",
                        ha="center",
                        va="bottom",
                        fontsize=10,
                        fontweight="bold",
                    )
            axes[i, 0].set_ylabel(str(row_titles[i]), fontsize=8)
        if heat is not None:  # the scale at full opacity, so the colours read clearly
            scale = plt.cm.ScalarMappable(norm=plt.Normalize(0.0, 1.0), cmap=cmap)
            bar = fig.colorbar(scale, ax=axes, shrink=min(0.6, 3.0 / n + 0.2), pad=0.01)
            bar.set_label("Grad-CAM (max = 1)", fontsize=8)
            bar.ax.tick_params(labelsize=7)
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return out
