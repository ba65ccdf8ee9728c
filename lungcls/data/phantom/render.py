"""Compose one synthetic chest radiograph: body, mediastinum, lungs, ribs, clavicles, vessels, the
class's finding, exposure and detector, then the burned-in confounders.

Determinism: every image is drawn from its own `numpy.random.Generator(PCG64)` seeded from
(seed, class, index), the steps below draw from it in a fixed order, and the pixel maths uses only
IEEE-exact operations, so the pixels do not depend on the machine, the order of generation or the
number of processes.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from lungcls.data.phantom.anatomy import Anatomy, Pose, draw_anatomy, organs
from lungcls.data.phantom.burned_in import burn_in_tag, is_tagged, text_bitmap
from lungcls.data.phantom.findings import finding as draw_finding
from lungcls.data.phantom.shapes import blob, blur, clip01, ridges, smoothstep, value_noise
from lungcls.data.phantom.sites import apply_site, site_name

# Which finding each supported class carries (None: clear lungs).
FINDINGS: dict[str, str | None] = {
    "COVID": "ground_glass",
    "Lung_Opacity": "consolidation",
    "Normal": None,
    "Viral Pneumonia": "interstitial",
}

# Stream key of the class-independent confounders (ASCII "MARK"), in place of a class key.
_CONFOUNDER_STREAM = 0x4D41524B

# Stream key of the planted shortcut tag (ASCII "TAGS"): tagging changes no other pixel.
_TAG_STREAM = 0x54414753

# Stream key of a site's detector noise (ASCII "SNOI").
_SITE_NOISE_STREAM = 0x534E4F49


@dataclass(frozen=True)
class DemoCase:
    """One rendered phantom: the image and its masks (uint8, 0/255 masks) plus its confounders."""

    image: np.ndarray
    lung_mask: np.ndarray
    lesion_mask: np.ndarray
    marker: str  # "L", "R" or "" (no marker)
    marker_box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels (exclusive end); zeros if none
    border_sides: str  # subset of "tblr": sides with a bright collimation edge
    tag: str = ""  # the planted class-specific shortcut tag's text ("" = none)
    tag_box: tuple[int, int, int, int] = (0, 0, 0, 0)  # x0, y0, x1, y1 (exclusive end); zeros if none
    site: str = ""  # the hospital of a multi-source demo ("" = the single-source demo)


def render_demo_case(class_name: str, index: int, image_size: int = 128, seed: int = 0, shortcut: float = 0.0,
                     site: int | None = None) -> DemoCase:
    """Render one phantom in memory; exactly the pixels the demo data set writes for it.

    `shortcut` is the share of the class's images that carry its planted tag (see `burned_in`);
    `site` the hospital of a multi-source demo that takes the film (see `sites`; None: none)."""
    class_key = zlib.crc32(class_name.encode("utf-8"))
    # Anatomy, exposure and finding depend on the class; confounders only on (seed, index), so
    # markers and borders are identical across classes and carry no label signal at all.
    anatomy = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, class_key, index])))
    confound = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _CONFOUNDER_STREAM, index])))
    case = _render(int(image_size), anatomy, confound, FINDINGS[class_name])
    if site is not None:
        detector = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _SITE_NOISE_STREAM, class_key, index])))
        case = replace(case, image=apply_site(case.image, site, detector), site=site_name(site))
    if not is_tagged(class_name, index, seed, shortcut):
        return case
    tags = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _TAG_STREAM, class_key, index])))
    image = case.image.copy()
    tag, box = burn_in_tag(image, class_name, tags)
    return replace(case, image=image, tag=tag, tag_box=box)


@dataclass
class _Chest:
    """The attenuation map being composed (bright = dense) and the geometry the steps share."""

    n: int
    X: np.ndarray
    Y: np.ndarray
    aX: np.ndarray
    a: Anatomy
    pose: Pose
    body: np.ndarray
    chest_wall: np.ndarray
    A: np.ndarray

    def lung_at_fn(self, lungs: np.ndarray) -> Callable[[float, float], float]:
        def lung_at(x: float, y: float) -> float:
            r, c = self.pose.pixel(x, y, self.n)
            return float(lungs[r, c]) if 0 <= r < self.n and 0 <= c < self.n else 0.0

        return lung_at


# Soft-tissue thickness varies from patient to patient: a smooth field of this amplitude over the
# body outside the lungs (where the findings are not). It is most of what the perceptual hash sees
# of a patient beyond the shared anatomy template: without it two patients (even of two classes)
# came within 6 of 144 hash bits, the demo's near-duplicate threshold, and training stopped on a
# label conflict; with it distinct films are at least 12 bits apart in every demo configuration
# (test_no_demo_configuration_plants_a_near_duplicate).
_TISSUE = 0.15
_TISSUE_CELLS = 6


def _body(n: int, rng: np.random.Generator, uni: Callable[[float, float], float]) -> _Chest:
    """Pose, anatomy and the body silhouette: barrel-shaped chest wall, sloping shoulders, neck."""
    t = uni(-0.035, 0.035)  # tan(angle / 2): about +-4 degrees, rotation without sin/cos
    cos_a, sin_a = (1.0 - t * t) / (1.0 + t * t), 2.0 * t / (1.0 + t * t)
    pose = Pose(cos_a, sin_a, uni(0.88, 1.02), uni(-0.04, 0.04), uni(-0.02, 0.06))
    X, Y = pose.body_grid(n)
    aX = np.abs(X)
    a = draw_anatomy(uni)
    tw = 0.9 * a.width
    qx = X / tw
    slope = clip01((aX - 0.2) / (tw - 0.2))
    shoulder_y = -0.9 + 0.32 * slope * slope
    barrel = Y - 0.2
    chest_wall = tw * (1.0 - 0.07 * barrel * barrel)
    torso = smoothstep(chest_wall, chest_wall - 0.05, aX)
    torso *= smoothstep(shoulder_y - 0.03, shoulder_y + 0.03, Y)
    neck_w = 0.2 + 0.06 * clip01((Y + 0.75) / 0.2)  # flares into the shoulders
    body = np.maximum(torso, smoothstep(neck_w + 0.03, neck_w - 0.02, aX))
    A = body * (0.42 + 0.12 * np.maximum(1.0 - qx * qx, 0.0) + 0.025 * value_noise(rng, n, 6))
    return _Chest(n, X, Y, aX, a, pose, body, chest_wall, A)


def _mediastinum(c: _Chest, heart: np.ndarray, abdomen: np.ndarray) -> None:
    """Mediastinum and heart merging with the liver/spleen below; aortic knob, spine, trachea."""
    X, Y, aX = c.X, c.Y, c.aX
    mw = 0.1 + 0.04 * clip01((Y + 0.5) / 0.9)
    mediastinum = smoothstep(mw + 0.03, mw - 0.01, np.abs(X - 0.01))
    knob = smoothstep(1.0, 0.6, blob(X, Y, 0.11, -0.3, 0.08, 0.07))
    phase = (Y + 1.0) / (0.11 * c.a.height)
    tri = np.abs(phase - np.floor(phase) - 0.5) * 2.0  # 1 at the disc spaces
    spine = smoothstep(0.075, 0.05, aX) * (0.75 + 0.25 * smoothstep(0.85, 0.6, tri))
    trachea = smoothstep(0.035, 0.02, np.abs(X - 0.01)) * smoothstep(-0.2, -0.32, Y)
    soft = np.maximum(np.maximum(mediastinum, heart), abdomen)
    c.A += c.body * (0.1 * soft + 0.06 * knob + 0.07 * spine - 0.12 * trachea)


def _ribs(c: _Chest, abdomen: np.ndarray, uni: Callable[[float, float], float]) -> None:
    """Posterior ribs arch out and down from the spine (bright cortex), anterior ribs run down and
    in; each pixel belongs to its nearest rib of each kind. Then the clavicles."""
    X, Y, aX = c.X, c.Y, c.aX
    base, spacing = uni(-0.74, -0.68), uni(0.1, 0.115) * c.a.height
    s = (Y - base + 0.3 * aX - 0.85 * aX * aX) / spacing
    s = s - 0.02 * s * s  # lower ribs lie further apart
    k = np.floor(s + 0.5)
    dy = (s - k) * spacing / (0.03 + 0.002 * np.minimum(np.maximum(k, 0.0), 9.0))
    dy2 = dy * dy
    ribs = np.where((dy2 < 1.0) & (k >= 0.0) & (k <= 9.0), (1.0 - dy2) * (0.55 + 0.45 * dy2), 0.0)
    e = 0.78 - aX
    s = (Y - base - 0.08 - 0.42 * e + 0.1 * e * e) / (1.15 * spacing)
    k = np.floor(s + 0.5)
    dy = (s - k) * (1.15 * spacing / 0.045)
    front = np.where((k >= 0.0) & (k <= 5.0), np.maximum(1.0 - dy * dy, 0.0), 0.0)
    ribs += 0.45 * front * smoothstep(0.2, 0.3, aX)
    rib_region = smoothstep(0.05, 0.1, aX) * smoothstep(0.96, 0.82, aX / c.chest_wall) * (1.0 - 0.6 * abdomen)
    c.A += uni(0.07, 0.11) * ribs * rib_region * c.body
    for sgn in (-1, 1):  # clavicles: from the sternum out and slightly up, with a gentle sag
        tt = clip01((X * sgn - 0.06) / 0.56)
        cdy = (Y - (uni(-0.66, -0.6) - 0.1 * tt + 0.08 * tt * (1.0 - tt))) / (0.035 - 0.01 * tt)
        ends = smoothstep(0.04, 0.08, X * sgn) * smoothstep(0.66, 0.6, X * sgn)
        c.A += 0.16 * np.maximum(1.0 - cdy * cdy, 0.0) * ends * c.body


def _vessels(c: _Chest, lungs: np.ndarray, rng: np.random.Generator, uni: Callable[[float, float], float]) -> np.ndarray:
    """Normal broncho-vascular markings: ridged noise fanning out from each hilum. Returns the
    distance to the nearest hilum (the interstitial finding spreads from there)."""
    hilum_dist = np.full((c.n, c.n), 9.0, np.float32)
    for sgn in (-1, 1):
        vx, vy = c.X - sgn * 0.17, c.Y - c.a.lungs[sgn]["hilum_y"]
        hilum_dist = np.minimum(hilum_dist, np.sqrt(vx * vx + vy * vy))
    fan = np.maximum(1.0 - hilum_dist / 0.7, 0.0)
    c.A += lungs * fan * (uni(0.06, 0.1) * ridges(value_noise(rng, c.n, 12), 0.3) + 0.06 * fan)
    return hilum_dist


def _expose(A: np.ndarray, n: int, rng: np.random.Generator, uni: Callable[[float, float], float]) -> np.ndarray:
    """Exposure and detector: contrast, brightness, tone curve, blur, quantum noise."""
    contrast, offset, bias = uni(0.8, 1.2), uni(-0.09, 0.09), uni(-0.35, 0.35)
    A = clip01((A - 0.35) * contrast + 0.35 + offset)
    A = A * (1.0 + bias) / (1.0 + bias * A)
    A = blur(A, 0.006 * n)
    return A + uni(0.006, 0.022) * rng.standard_normal((n, n), dtype=np.float32)


def _render(n: int, rng: np.random.Generator, confound: np.random.Generator, finding: str | None) -> DemoCase:
    """Compose one radiograph as an attenuation map (bright = dense), then expose and quantise."""

    def uni(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(rng.random())

    c = _body(n, rng, uni)
    lungs, heart, abdomen = organs(c.X, c.Y, c.a)
    lung_mask = lungs > 0.5
    _mediastinum(c, heart, abdomen)
    # lung fields: air; a little lighter at the apices and bases, where more tissue overlies them
    depth = uni(0.27, 0.33) * (1.0 - 0.18 * smoothstep(0.0, 0.6, c.Y) - 0.15 * smoothstep(-0.55, -0.8, c.Y))
    c.A -= lungs * depth
    _ribs(c, abdomen, uni)
    hilum_dist = _vessels(c, lungs, rng, uni)
    lesion_mask = np.zeros((n, n), dtype=bool)
    if finding is not None:  # the class-specific finding, confined to the lungs
        pattern, envelope, opacity = draw_finding(finding, rng, uni, c.lung_at_fn(lungs), c.X, c.Y, c.a, hilum_dist)
        c.A += opacity * pattern * lungs
        lesion_mask = (envelope > 0.3) & lung_mask
    A = _expose(c.A, n, rng, uni)
    A += _TISSUE * value_noise(rng, n, _TISSUE_CELLS) * c.body * (1.0 - lungs)  # drawn last: the patients stay who they were
    marker, box, sides = _burn_in_confounders(A, confound)
    image = np.floor(clip01(A) * 255.0 + 0.5).astype(np.uint8)
    return DemoCase(
        image=image,
        lung_mask=lung_mask.astype(np.uint8) * 255,
        lesion_mask=lesion_mask.astype(np.uint8) * 255,
        marker=marker,
        marker_box=box,
        border_sides=sides,
    )


def _burn_in_confounders(A: np.ndarray, rng: np.random.Generator) -> tuple[str, tuple[int, int, int, int], str]:
    """Draw a laterality marker near a top corner and, sometimes, bright collimation edges (in place)."""
    n = A.shape[0]
    marker, box, sides = "", (0, 0, 0, 0), ""
    if rng.random() < 0.9:
        marker = "L" if rng.random() < 0.5 else "R"
        glyph = text_bitmap(marker, max(1, round(n / 80)))
        gh, gw = glyph.shape
        mx = int(n * (0.04 + 0.06 * rng.random()))
        my = int(n * (0.03 + 0.05 * rng.random()))
        x0 = mx if rng.random() < 0.5 else n - mx - gw
        A[my : my + gh, x0 : x0 + gw][glyph] = 0.88 + 0.12 * rng.random()
        box = (x0, my, x0 + gw, my + gh)
    if rng.random() < 0.25:
        chosen = [s for s in "tblr" if rng.random() < 0.4] or ["tblr"[int(rng.random() * 4)]]
        value = 0.75 + 0.2 * rng.random()
        for side in chosen:
            w = max(2, int(n * (0.015 + 0.035 * rng.random())))
            if side == "t":
                A[:w] = value
            elif side == "b":
                A[-w:] = value
            elif side == "l":
                A[:, :w] = value
            else:
                A[:, -w:] = value
        sides = "".join(chosen)
    return marker, box, sides
