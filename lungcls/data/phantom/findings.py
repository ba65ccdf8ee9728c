"""The class-specific findings: where each disease puts its opacity, and how it looks.

COVID: peripheral bilateral lower-zone ground glass; Lung_Opacity: one dense lobar consolidation
with air bronchograms; Viral Pneumonia: diffuse perihilar reticular and streaky markings.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lungcls.data.phantom.anatomy import Anatomy, lung_point
from lungcls.data.phantom.shapes import blob, clip01, ridges, segment_distance, smoothstep, value_noise


def finding(
    kind: str,
    rng: np.random.Generator,
    uni: Callable[[float, float], float],
    lung_at: Callable[[float, float], float],
    X: np.ndarray,
    Y: np.ndarray,
    a: Anatomy,
    hilum_dist: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Opacity pattern (0..1), its envelope (where the finding is) and its peak opacity."""
    n = X.shape[0]
    if kind == "ground_glass":  # peripheral, bilateral, lower-zone hazy patches
        env = np.zeros((n, n), np.float32)
        for sgn in (-1, 1):
            for _ in range(int(rng.integers(1, 4))):
                x, y = lung_point(uni, lung_at, a, sgn, (0.5, 0.9), (0.05, 0.7))
                r2 = blob(X, Y, x, y, uni(0.11, 0.18), uni(0.12, 0.2))
                env = np.maximum(env, smoothstep(1.0, 0.3, r2))
        texture = 0.7 + 0.3 * np.minimum(np.maximum(value_noise(rng, n, 22), -1.0), 1.0)
        return env * texture, env, uni(0.14, 0.26)
    if kind == "consolidation":  # one dense, well-defined lobar opacity
        sgn = -1 if rng.random() < 0.5 else 1
        g = a.lungs[sgn]
        lobe = ("upper", "lower", "middle")[int(rng.integers(0, 3 if sgn < 0 else 2))]
        slope = uni(-0.25, 0.25)
        if lobe == "upper":
            x, y = lung_point(uni, lung_at, a, sgn, (0.2, 0.6), (-0.5, -0.2))
            fissure = g["cy"] + g["hh"] * uni(-0.15, 0.05)
            lobe_region = smoothstep(fissure + 0.01, fissure - 0.01, Y - slope * (X - g["cx"]))
        elif lobe == "lower":
            x, y = lung_point(uni, lung_at, a, sgn, (0.2, 0.6), (0.3, 0.6))
            fissure = g["cy"] + g["hh"] * uni(-0.05, 0.2)
            lobe_region = smoothstep(fissure - 0.01, fissure + 0.01, Y - slope * (X - g["cx"]))
        else:  # right middle lobe: medial, against the heart border
            x, y = lung_point(uni, lung_at, a, sgn, (0.0, 0.4), (0.05, 0.35))
            fissure = g["cy"] + g["hh"] * uni(-0.12, 0.0)
            lobe_region = smoothstep(fissure - 0.01, fissure + 0.01, Y - slope * 0.3 * (X - g["cx"]))
        r2 = blob(X, Y, x, y, uni(0.2, 0.3), uni(0.22, 0.32))
        env = smoothstep(1.0, 0.75, r2) * lobe_region
        bronchi = ridges(value_noise(rng, n, 14), 0.12)  # air bronchograms
        texture = 0.92 + 0.08 * np.minimum(np.maximum(value_noise(rng, n, 20), -1.0), 1.0) - 0.25 * bronchi
        return env * texture, env, uni(0.24, 0.38)
    if kind == "interstitial":  # diffuse bilateral reticular/streaky perihilar pattern
        reach = uni(0.55, 0.75)
        env = smoothstep(reach, 0.25 * reach, hilum_dist)
        reticular = ridges(value_noise(rng, n, 26), 0.3)
        streaks = np.zeros((n, n), np.float32)
        for sgn in (-1, 1):
            hx, hy = sgn * 0.17, a.lungs[sgn]["hilum_y"]
            for _ in range(8):
                x, y = lung_point(uni, lung_at, a, sgn, (0.3, 1.0), (-0.8, 0.8))
                dist = segment_distance(X, Y, hx, hy, x, y) / 0.014
                streaks = np.maximum(streaks, 1.0 - dist * dist)
        pattern = clip01(0.25 + 0.55 * reticular + 0.45 * np.maximum(streaks, 0.0))
        return env * pattern, env, uni(0.13, 0.24)
    raise ValueError(kind)
