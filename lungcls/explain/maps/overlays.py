"""One Grad-CAM overlay per image, as a PNG: what ``lungcls-predict predict.cam=true`` writes and
what the web service shows and offers for download.

The look is the report's (``lungcls.report.figures``): the X-ray in full-contrast grayscale at its
own aspect ratio, the map on top in the jet colours with partial alpha, left out where the map is
under 5% of its maximum so the anatomy under weak evidence stays visible.
"""

from __future__ import annotations

import io
import re

import matplotlib
import numpy as np
from PIL import Image

ALPHA = 0.45
MIN_CAM = 0.05


def fit_size(shape: tuple[int, int], longest: int) -> tuple[int, int]:
    """(height, width) of an image scaled so its longest side is at most ``longest``."""
    h, w = shape
    scale = min(1.0, longest / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def overlay_rgb(gray: np.ndarray, cam: np.ndarray, longest: int = 512, alpha: float = ALPHA, min_cam: float = MIN_CAM) -> np.ndarray:
    """An RGB uint8 overlay of ``cam`` (any size, values in [0, 1]) on the uint8 image ``gray``.

    The CAM was computed on the square model input, so stretching it back to the image's own
    aspect puts every value over the pixels it came from.
    """
    h, w = fit_size(gray.shape, longest)
    base = np.asarray(Image.fromarray(gray).resize((w, h), Image.BILINEAR), dtype=np.float64) / 255.0
    heat_map = np.asarray(Image.fromarray(np.asarray(cam, dtype=np.float32)).resize((w, h), Image.BILINEAR), dtype=np.float64)
    heat_map = np.clip(heat_map, 0.0, 1.0)
    colours = matplotlib.colormaps["jet"](heat_map)[..., :3]
    rgb = np.repeat(base[..., None], 3, axis=2)
    shown = (heat_map >= min_cam)[..., None]
    out = np.where(shown, (1 - alpha) * rgb + alpha * colours, rgb)
    return (out * 255.0 + 0.5).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def safe_stem(name: str, limit: int = 80) -> str:
    """A file-name-safe stem for an output file (letters, digits, ``-_.``)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "image"
    return stem[:limit]
