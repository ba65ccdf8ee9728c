"""Pixel primitives of the phantom: smooth steps, value noise, ridges, blur and distances.

Only IEEE-exact operations (+, -, *, /, sqrt, comparisons) touch the float32 arrays, with
Python-float scalars (which keep float32 under both NumPy 1 and 2 promotion rules), so the pixels
are bit-identical on every machine.
"""

from __future__ import annotations

import numpy as np


def clip01(x: np.ndarray) -> np.ndarray:
    return np.minimum(np.maximum(x, 0.0), 1.0)


def smoothstep(edge0: float | np.ndarray, edge1: float | np.ndarray, x: np.ndarray) -> np.ndarray:
    """0 before edge0, 1 after edge1 (edges may be reversed), C1-smooth in between."""
    t = x - edge0
    t /= edge1 - edge0
    np.maximum(t, 0.0, out=t)
    np.minimum(t, 1.0, out=t)
    return t * t * (3.0 - 2.0 * t)


def value_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Smooth random field (about unit variance) with `cells` features across the image."""
    g = rng.standard_normal((cells + 1, cells + 1), dtype=np.float32)
    pos = (np.arange(n) + 0.5) * (cells / n)
    i0 = np.minimum(pos.astype(np.int64), cells - 1)
    f = pos - i0
    w = (f * f * (3.0 - 2.0 * f)).astype(np.float32)
    left, right = g[:, i0], g[:, i0 + 1]
    rows = left + (right - left) * w[None, :]  # interpolated along x at every grid row
    top, bottom = rows[i0], rows[i0 + 1]
    return top + (bottom - top) * w[:, None]


def ridges(noise: np.ndarray, width: float) -> np.ndarray:
    """Thin bright lines along the zero crossings of a smooth field: a branching network."""
    return clip01(1.0 - np.abs(noise) / width)


def blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian-like blur by repeated [1, 2, 1]/4 passes (exact weights, fixed summation order)."""
    for _ in range(int(round(2.0 * sigma_px * sigma_px))):
        p = np.pad(img, ((0, 0), (1, 1)), mode="edge")
        img = (p[:, :-2] + 2.0 * p[:, 1:-1] + p[:, 2:]) * 0.25
        p = np.pad(img, ((1, 1), (0, 0)), mode="edge")
        img = (p[:-2] + 2.0 * p[1:-1] + p[2:]) * 0.25
    return img


def blob(X: np.ndarray, Y: np.ndarray, x: float, y: float, rx: float, ry: float) -> np.ndarray:
    """Squared elliptic distance from (x, y) in units of the radii."""
    ex, ey = (X - x) / rx, (Y - y) / ry
    return ex * ex + ey * ey


def segment_distance(X: np.ndarray, Y: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Distance from every pixel to the segment (x0, y0)-(x1, y1)."""
    dx, dy = x1 - x0, y1 - y0
    t = clip01(((X - x0) * dx + (Y - y0) * dy) / (dx * dx + dy * dy))
    ex, ey = X - x0 - t * dx, Y - y0 - t * dy
    return np.sqrt(ex * ex + ey * ey)
