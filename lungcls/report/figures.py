"""The report's Grad-CAM figures, laid out to drop into a paper.

Each X-ray is a block of panels: the image, then one overlay per model (one column per model), and
several blocks share a row, at most ``MAX_PANELS_PER_ROW`` panels across a page-wide figure
(``PAGE_WIDTH_IN``) and at most ``MAX_ROWS`` rows per figure; longer selections are split into
parts by the caller (`figure_parts`). One slim horizontal colour bar sits under the grid. Figures
are written as PNG at 300 dpi and as PDF (vector text and layout).

Overlays keep the X-ray readable: the grayscale image is drawn underneath at full contrast and the
heat map goes on top with partial alpha, transparent where the CAM is tiny. All maps share one
0-1 colour scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from lungcls.errors import LungclsError  # noqa: E402
from lungcls.runs.files import replacing  # noqa: E402

__all__ = ["figure_parts", "images_per_row", "plot_cam_grid", "plot_curves", "to_display_gray"]

PAGE_WIDTH_IN = 7.0  # the text width of a journal page (two-column spread) or A4 with margins
MAX_PANELS_PER_ROW = 6
MAX_ROWS = 6
DPI = 300
FONT_PT = 6.0
_MARGIN, _BLOCK_GAP, _ROW_GAP, _BAR_STRIP = 0.05, 0.12, 0.05, 0.42  # inches


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


def images_per_row(n_models: int, max_panels: int = MAX_PANELS_PER_ROW) -> int:
    """How many X-rays (each: the image + one panel per model) share a row."""
    return max(1, max_panels // (n_models + 1))


def figure_parts(n_images: int, n_models: int, max_rows: int = MAX_ROWS) -> list[range]:
    """Index ranges of the images of each figure, at most `max_rows` rows each."""
    per_figure = images_per_row(n_models) * max_rows
    return [range(i, min(i + per_figure, n_images)) for i in range(0, n_images, per_figure)]


def _check(n: int, cam_sets: list[np.ndarray], model_names: Sequence[str], image_titles: Sequence[str],
           cell_titles: Sequence[Sequence[str]] | None, alpha: float) -> None:
    if n == 0:
        raise LungclsError("no images to plot; select at least one image for the figure")
    if len(model_names) != len(cam_sets):
        raise LungclsError(f"{len(model_names)} model names for {len(cam_sets)} sets of CAMs; give one name per model")
    for name, cams in zip(model_names, cam_sets):
        if cams.ndim != 3 or cams.shape[0] != n:
            raise LungclsError(f"CAMs of {name} have shape {cams.shape}, expected [{n}, h, w] (one map per image)")
    if len(image_titles) != n:
        raise LungclsError(f"{len(image_titles)} image titles for {n} images; give one per image")
    if cell_titles is not None and (len(cell_titles) != len(cam_sets) or any(len(t) != n for t in cell_titles)):
        raise LungclsError(f"cell_titles must be {len(cam_sets)} lists (one per model) of {n} titles (one per image)")
    if not 0.0 <= alpha <= 1.0:
        raise LungclsError(f"alpha must be in [0, 1], got {alpha}")


def _draw_panel(ax: Any, gray: np.ndarray, cam: np.ndarray | None, cmap: str, alpha: float, min_cam: float) -> None:
    """One panel: the image, and over it the map (resized to the image) where it reaches ``min_cam``;
    ``cam`` None leaves the image bare (the first panel of each block)."""
    ax.imshow(gray, cmap="gray", vmin=0.0, vmax=1.0, interpolation="antialiased")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_linewidth(0.3)
    if cam is not None:
        cam = np.clip(_resize_map(cam.astype(np.float64), gray.shape), 0.0, 1.0)
        ax.imshow(np.ma.masked_less(cam, min_cam), cmap=cmap, vmin=0.0, vmax=1.0, alpha=alpha)


def plot_cam_grid(
    images: Sequence[Any],
    cams_by_model: Sequence[Any],
    image_titles: Sequence[str],
    model_names: Sequence[str],
    cell_titles: Sequence[Sequence[str]] | None,
    path: str | Path,
    alpha: float = 0.45,
    cmap: str = "jet",
    min_cam: float = 0.05,
    dpi: int = DPI,
    formats: Sequence[str] = ("png", "pdf"),
    bar_label: str = "Grad-CAM (each map scaled to max = 1)",
) -> Path:
    """Write the figure as `path` (PNG) plus its siblings in `formats`; returns the PNG's path.

    images: N display images (un-normalised; see `to_display_gray`). cams_by_model: M sets of
    [N, h, w] maps in [0, 1], in column order. image_titles[i]: true class and file (two lines).
    model_names: M short names heading each model's panel; cell_titles[m][i]: the model's
    prediction and probability. Pixels with cam < min_cam are left uncoloured.
    """
    imgs = [to_display_gray(im) for im in images]
    cam_sets = [_numpy(c) for c in cams_by_model]
    n, m = len(imgs), len(cam_sets)
    _check(n, cam_sets, model_names, image_titles, cell_titles, alpha)
    per_row = min(n, images_per_row(m))
    rows = -(-n // per_row)
    panels = per_row * (m + 1)
    pw = (PAGE_WIDTH_IN - 2 * _MARGIN - (per_row - 1) * _BLOCK_GAP) / panels
    ph = pw * float(np.mean([im.shape[0] / im.shape[1] for im in imgs]))
    title_h = 2.3 * FONT_PT * 1.25 / 72
    row_h = title_h + ph + _ROW_GAP
    width, height = PAGE_WIDTH_IN, 2 * _MARGIN + rows * row_h + _BAR_STRIP
    fig = plt.figure(figsize=(width, height))
    try:
        for i, gray in enumerate(imgs):
            r, b = divmod(i, per_row)
            top = height - _MARGIN - r * row_h - title_h
            for j in range(m + 1):
                left = _MARGIN + b * ((m + 1) * pw + _BLOCK_GAP) + j * pw
                ax = fig.add_axes((left / width, (top - ph) / height, pw / width, ph / height))
                _draw_panel(ax, gray, None if j == 0 else cam_sets[j - 1][i], cmap, alpha, min_cam)
                if j == 0:
                    title = str(image_titles[i])
                else:
                    title = str(model_names[j - 1]) + ("" if cell_titles is None else f"\n{cell_titles[j - 1][i]}")
                ax.set_title(_fit(title, pw), fontsize=FONT_PT, pad=1.5, linespacing=1.1)
        _colour_bar(fig, width, cmap, bar_label)
        return save_figure(fig, path, formats, dpi)
    finally:
        plt.close(fig)


def save_figure(fig: Any, path: str | Path, formats: Sequence[str], dpi: int) -> Path:
    """``path`` in every format asked for, each written through a new file; the PNG's path back."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        with replacing(out.with_suffix(f".{fmt}")) as tmp:
            fig.savefig(tmp, dpi=dpi, format=fmt)
    return out.with_suffix(".png")


def _fit(title: str, panel_inches: float) -> str:
    """Shorten each line of a panel title (in the middle) so it stays above its own panel."""
    width = max(6, int(panel_inches * 72 / (0.56 * FONT_PT)))
    return "\n".join(
        line if len(line) <= width else line[: width // 2 - 1] + "\u2026" + line[len(line) - (width - width // 2) :]
        for line in title.split("\n")
    )


def _colour_bar(fig: Any, width: float, cmap: str, label: str) -> None:
    """A slim horizontal scale under the grid, at full opacity so the colours read clearly."""
    bar_w = 0.4 * width
    ax = fig.add_axes(((width - bar_w) / 2 / width, 0.27 / fig.get_figheight(), bar_w / width, 0.07 / fig.get_figheight()))
    scale = plt.cm.ScalarMappable(norm=plt.Normalize(0.0, 1.0), cmap=cmap)
    bar = fig.colorbar(scale, cax=ax, orientation="horizontal")
    bar.set_label(label, fontsize=FONT_PT, labelpad=1.5)
    bar.ax.tick_params(labelsize=FONT_PT - 0.5, length=2, width=0.4, pad=1)
    bar.outline.set_linewidth(0.4)


def plot_curves(panels: Sequence[tuple[str, dict[str, np.ndarray], np.ndarray]], path: str | Path,
                xlabel: str = "share of pixels removed (most attributed first)",
                ylabel: str = "probability of the explained class", formats: Sequence[str] = ("png", "pdf")) -> Path:
    """Page-wide line plots, one panel per (title, {method: mean curve}, random-order curve): the
    deletion (or insertion) curves of every method against the random order (dashed, black)."""
    cols = min(2, len(panels)) or 1
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(PAGE_WIDTH_IN, 2.4 * rows), squeeze=False)
    try:
        for ax, (title, curves, random_curve) in zip(axes.flat, panels):
            for name, curve in curves.items():
                ax.plot(np.linspace(0, 1, len(curve)), curve, linewidth=1.0, label=name)
            ax.plot(np.linspace(0, 1, len(random_curve)), random_curve, "k--", linewidth=1.0, label="random order")
            ax.set_title(_fit(title, PAGE_WIDTH_IN / cols), fontsize=FONT_PT + 1)
            ax.set_xlabel(xlabel, fontsize=FONT_PT)
            ax.set_ylabel(ylabel, fontsize=FONT_PT)
            ax.set_ylim(0, 1.02)
            ax.tick_params(labelsize=FONT_PT)
            ax.legend(fontsize=FONT_PT - 0.5, frameon=False)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        fig.tight_layout()
        return save_figure(fig, path, formats, DPI)
    finally:
        plt.close(fig)
