"""The patient: pose, body habitus, lung fields, heart and diaphragm, in normalised body
coordinates (x, y in [-1, 1], image left = patient's right)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lungcls.data.phantom.shapes import clip01, smoothstep


@dataclass(frozen=True)
class Pose:
    """Patient placement: body coordinates = rotate(pixel coordinates - shift) / scale."""

    cos: float
    sin: float
    scale: float
    tx: float
    ty: float

    def body_grid(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        c = ((np.arange(n) + 0.5) * (2.0 / n) - 1.0).astype(np.float32)
        gx, gy = c[None, :] - self.tx, c[:, None] - self.ty
        return (self.cos * gx + self.sin * gy) / self.scale, (self.cos * gy - self.sin * gx) / self.scale

    def pixel(self, x: float, y: float, n: int) -> tuple[int, int]:
        """Row and column of the pixel nearest to body point (x, y) (may lie outside the image)."""
        gx = self.scale * (self.cos * x - self.sin * y) + self.tx
        gy = self.scale * (self.sin * x + self.cos * y) + self.ty
        return int(np.floor((gy + 1.0) * n / 2.0)), int(np.floor((gx + 1.0) * n / 2.0))


@dataclass(frozen=True)
class Anatomy:
    """Per-patient shape parameters, in normalised body coordinates."""

    width: float  # habitus
    height: float  # depth of inspiration
    heart: tuple[float, float, float]  # centre x, centre y, size
    lungs: dict[int, dict[str, float]]  # per side (-1: image left, +1: image right)


def draw_anatomy(uni: Callable[[float, float], float]) -> Anatomy:
    width, height = uni(0.92, 1.06), uni(0.93, 1.05)
    heart = (uni(0.03, 0.08), 0.4 * height + uni(-0.03, 0.03), uni(0.9, 1.12))
    lungs = {}
    for sgn in (-1, 1):
        top, bottom = uni(-0.8, -0.72), 0.74 * height
        lungs[sgn] = {
            "cx": sgn * uni(0.37, 0.4) * width,
            "hw": uni(0.28, 0.31) * width,
            "cy": 0.5 * (top + bottom),
            "hh": 0.5 * (bottom - top),
            "dome": (0.36 if sgn < 0 else 0.42) * height + uni(-0.04, 0.04),
            "hilum_y": uni(-0.12, -0.02) * height,
        }
    return Anatomy(width, height, heart, lungs)


def lateral_profile(v: np.ndarray | float) -> np.ndarray | float:
    """Lateral half-width factor along the lung's height (v: -1 apex .. 1 base): narrow apex."""
    return 0.62 + 0.38 * np.minimum(np.maximum((v + 1.0) / 1.2, 0.0), 1.0)


def medial_profile(v: np.ndarray) -> np.ndarray:
    """Medial half-width factor: the mediastinal border is nearly straight."""
    return 0.8 + 0.2 * clip01((v + 1.0) / 0.6)


def organs(X: np.ndarray, Y: np.ndarray, a: Anatomy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Soft (0..1) lung fields, heart and sub-diaphragmatic region at body coordinates X, Y."""
    hx, hy, hs = a.heart
    hdx = (X - hx) / np.where(X > hx, np.float32(0.36 * hs), np.float32(0.2 * hs))
    hdy = (Y - hy) / (0.4 * hs)
    heart = smoothstep(1.0, 0.8, hdx * hdx + hdy * hdy)
    lungs = np.zeros(X.shape, np.float32)
    abdomen = np.zeros(X.shape, np.float32)
    for sgn, g in a.lungs.items():
        lv = (Y - g["cy"]) / g["hh"]
        lu = (X - g["cx"]) * (sgn / g["hw"])
        q = lu / np.where(lu > 0.0, lateral_profile(lv), medial_profile(lv))
        shape = smoothstep(1.0, 0.88, q * q + lv * lv)
        ddx = (X - sgn * 0.32 * a.width) / 0.42
        dome_y = g["dome"] + 0.3 * ddx * ddx  # highest mid-lung, down at both sulci
        below = smoothstep(dome_y - 0.02, dome_y + 0.02, Y)
        abdomen = np.maximum(abdomen, below * smoothstep(-0.02, 0.02, X * sgn))
        lungs += shape * (1.0 - below) * smoothstep(0.05, 0.09, X * sgn)
    return clip01(lungs) * (1.0 - heart), heart, abdomen


def lung_point(
    uni: Callable[[float, float], float],
    lung_at: Callable[[float, float], float],
    a: Anatomy,
    sgn: int,
    u_range: tuple[float, float],
    v_range: tuple[float, float],
) -> tuple[float, float]:
    """A random point well inside one lung; u: 0 medial .. 1 lateral, v: -1 apex .. 1 base."""
    g = a.lungs[sgn]
    x = y = 0.0
    for _ in range(40):
        u, v = uni(*u_range), uni(*v_range)
        x = g["cx"] + sgn * u * float(lateral_profile(v)) * g["hw"]
        y = g["cy"] + v * g["hh"]
        if lung_at(x, y) > 0.9:
            break
    return x, y
