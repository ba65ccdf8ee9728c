"""Hospitals of the multi-source demo: ``dataset.demo.sources=k`` draws the phantom as k sites that
differ the way hospitals do, and ``dataset.demo.source_bias=p`` ties each class to one site.

A site has its own exposure (a tone curve, contrast and brightness), detector noise and blur, a
collimation edge (width, sides, brightness) and a marker style (its letter, size and corner). They
are fixed per site (drawn from the site's own stream, the same for every seed, so ``seed=1`` is
other patients at the same hospitals) and applied after the film is rendered, so the anatomy and
the finding of an image do not depend on where it was taken.

``source_bias=p`` reproduces the confounding of the public COVID collections: a share p of each
class's images comes from the class's own site (class i: site i mod k), the rest from any site at
random. A model can then learn the site instead of the lungs, which leave-one-source-out exposes.

Determinism as everywhere in the phantom: per-image and per-site generators, IEEE-exact pixel maths.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from lungcls.data.phantom.burned_in import text_bitmap
from lungcls.data.phantom.shapes import blur, clip01

_SITE_STREAM = 0x53495445  # ASCII "SITE": the site's style
_PICK_STREAM = 0x5049434B  # ASCII "PICK": which site an image comes from
_LETTERS = ("M", "P", "D", "N", "O", "V", "C")
MAX_SITES = 26


def site_name(site: int) -> str:
    """``site-A``, ``site-B``...: names that sort in site order."""
    return f"site-{chr(ord('A') + site)}"


@dataclass(frozen=True)
class SiteStyle:
    tone: float  # rational tone-curve bias: A * (1 + b) / (1 + b * A)
    contrast: float
    offset: float
    noise: float
    blur_px: float
    edge_sides: str
    edge_share: float
    edge_value: float
    letter: str
    letter_cell: float
    corner: int  # 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right


def site_style(site: int) -> SiteStyle:
    """The fixed style of site ``site`` (spread so that neighbouring sites differ clearly)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([_SITE_STREAM, site])))
    spread = (site * 0.6180339887498949) % 1.0  # low-discrepancy: any k sites cover the range
    sides = ("tb", "lr", "tblr", "t", "b")[site % 5]
    return SiteStyle(
        tone=-0.45 + 0.9 * spread,
        contrast=0.75 + 0.5 * float(rng.random()),
        offset=-0.06 + 0.12 * float(rng.random()),
        noise=0.004 + 0.03 * ((spread + 0.5) % 1.0),
        blur_px=1.2 * float(rng.random()),
        edge_sides=sides,
        edge_share=0.03 + 0.05 * float(rng.random()),
        edge_value=0.05 + 0.9 * float(site % 2),
        letter=_LETTERS[site % len(_LETTERS)],
        letter_cell=1.0 + float(site % 3) * 0.5,
        corner=site % 4,
    )


def pick_site(class_index: int, class_name: str, index: int, seed: int, sources: int, bias: float) -> int:
    """The site image ``index`` of a class comes from: its class's site for a share ``bias``."""
    key = zlib.crc32(class_name.encode("utf-8"))
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _PICK_STREAM, key, index])))
    tied, anywhere = float(rng.random()), int(rng.integers(sources))
    return class_index % sources if tied < bias else anywhere


def apply_site(image: np.ndarray, site: int, rng: np.random.Generator) -> np.ndarray:
    """The uint8 film ``image`` as site ``site`` would have taken it (a new array)."""
    s = site_style(site)
    n = image.shape[0]
    A = image.astype(np.float32) / 255.0
    A = clip01((A - 0.5) * s.contrast + 0.5 + s.offset)
    A = A * (1.0 + s.tone) / (1.0 + s.tone * A)
    A = blur(A, s.blur_px * n / 128.0)
    A = A + s.noise * rng.standard_normal((n, n), dtype=np.float32)
    w = max(1, int(n * s.edge_share))
    for side in s.edge_sides:
        if side == "t":
            A[:w] = s.edge_value
        elif side == "b":
            A[-w:] = s.edge_value
        elif side == "l":
            A[:, :w] = s.edge_value
        else:
            A[:, -w:] = s.edge_value
    glyph = text_bitmap(s.letter, max(1, round(s.letter_cell * n / 128)))
    gh, gw = glyph.shape
    y0 = w + 2 if s.corner < 2 else n - w - 2 - gh
    x0 = w + 2 if s.corner % 2 == 0 else n - w - 2 - gw
    if 0 <= y0 and y0 + gh <= n and 0 <= x0 and x0 + gw <= n:
        A[y0 : y0 + gh, x0 : x0 + gw][glyph] = 0.95
    return np.floor(clip01(A) * 255.0 + 0.5).astype(np.uint8)
